package image

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// Initramfs paths shared with the guest init (internal/agent/guest).
const (
	initPath        = "init"
	modulesListPath = "lib/modules/ironclaw.modules"
	tokenPath       = "ironclaw/token"
)

// WriteInitramfs writes a cpio newc archive to w holding agentPath as /init,
// the given module files (relative to modulesDir) under /lib/modules, and
// the list the guest init loads them from, in order.
func WriteInitramfs(w io.Writer, agentPath, modulesDir string, modules []string) error {
	cw := cpio.NewWriter(w)
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run", "mnt", "ironclaw", "lib", "lib/modules"} {
		if err := cw.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755, Links: 2}); err != nil {
			return fmt.Errorf("write initramfs: %w", err)
		}
	}
	if err := addFile(cw, initPath, agentPath, 0o755); err != nil {
		return err
	}
	var list strings.Builder
	made := map[string]bool{}
	for _, m := range modules {
		dst := path.Join("lib/modules", filepath.ToSlash(m))
		for d := path.Dir(dst); d != "lib/modules" && !made[d]; d = path.Dir(d) {
			made[d] = true
		}
		list.WriteString("/" + dst + "\n")
	}
	// Parent directories first, shortest path first.
	dirs := make([]string, 0, len(made))
	for d := range made {
		dirs = append(dirs, d)
	}
	sortByDepth(dirs)
	for _, d := range dirs {
		if err := cw.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755, Links: 2}); err != nil {
			return fmt.Errorf("write initramfs: %w", err)
		}
	}
	for _, m := range modules {
		if err := addFile(cw, path.Join("lib/modules", filepath.ToSlash(m)), filepath.Join(modulesDir, m), 0o644); err != nil {
			return err
		}
	}
	if err := addBytes(cw, modulesListPath, []byte(list.String()), 0o644); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return nil
}

func sortByDepth(d []string) {
	for i := 1; i < len(d); i++ {
		for j := i; j > 0 && less(d[j], d[j-1]); j-- {
			d[j], d[j-1] = d[j-1], d[j]
		}
	}
}

func less(a, b string) bool {
	ca, cb := strings.Count(a, "/"), strings.Count(b, "/")
	if ca != cb {
		return ca < cb
	}
	return a < b
}

func addFile(cw *cpio.Writer, name, src string, mode cpio.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	if err := cw.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: fi.Size()}); err != nil {
		return fmt.Errorf("write initramfs %s: %w", name, err)
	}
	if _, err := io.Copy(cw, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return fmt.Errorf("write initramfs %s: %w", name, err)
	}
	return nil
}

func addBytes(cw *cpio.Writer, name string, b []byte, mode cpio.FileMode) error {
	if err := cw.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: int64(len(b))}); err != nil {
		return fmt.Errorf("write initramfs %s: %w", name, err)
	}
	if _, err := cw.Write(b); err != nil {
		return fmt.Errorf("write initramfs %s: %w", name, err)
	}
	return nil
}

// WriteSandboxInitramfs writes to dst (mode 0600) the shared initramfs at
// base followed by a second cpio archive holding this sandbox's agent token
// at /ironclaw/token; the kernel unpacks both. The token thus never appears
// on the kernel command line, which every guest process can read.
func WriteSandboxInitramfs(dst, base string, token []byte) (err error) {
	if len(token) == 0 {
		return fmt.Errorf("write sandbox initramfs: token: must not be empty")
	}
	in, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("write sandbox initramfs: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write sandbox initramfs: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write sandbox initramfs: %w", cerr)
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	n, err := io.Copy(out, in)
	if err != nil {
		return fmt.Errorf("write sandbox initramfs: %w", err)
	}
	// Archives are concatenated on a 4-byte boundary.
	if pad := (4 - n%4) % 4; pad != 0 {
		if _, err := out.Write(make([]byte, pad)); err != nil {
			return fmt.Errorf("write sandbox initramfs: %w", err)
		}
	}
	cw := cpio.NewWriter(out)
	if err := addBytes(cw, tokenPath, token, 0o400); err != nil {
		return err
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("write sandbox initramfs: %w", err)
	}
	return nil
}
