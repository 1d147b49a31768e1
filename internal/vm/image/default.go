package image

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultBusybox is the static busybox the default rootfs is made of
// (Debian's busybox-static installs it here).
const DefaultBusybox = "/bin/busybox"

// Default says what the default image is made of: the Debian cloud kernel
// unpacked in KernelDir, the agent, and a rootfs of Busybox's applets.
type Default struct {
	Agent     string // static ironclaw-agent
	Busybox   string // static busybox; "" means DefaultBusybox
	KernelDir string // "" means DefaultKernelDir
	CacheDir  string // "" means DefaultCacheDir
}

// Resolve returns the default image, from the cache when its inputs are
// unchanged; otherwise it builds it when build is set (a few seconds,
// reported to progress) and fails with ErrNotBuilt when not. The image is
// a function of the kernel, the agent and the busybox binary only, so it
// is rebuilt exactly when one of them changes.
func (d Default) Resolve(ctx context.Context, build bool, progress io.Writer) (*Image, error) {
	bb := d.Busybox
	if bb == "" {
		bb = DefaultBusybox
	}
	if err := requireStatic(bb); err != nil {
		return nil, fmt.Errorf("default image: busybox: %w (install the busybox-static package)", err)
	}
	if err := requireStatic(d.Agent); err != nil {
		return nil, fmt.Errorf("default image: agent: %w (build it with CGO_ENABLED=0 go build ./cmd/ironclaw-agent and put it next to ironclaw)", err)
	}
	k, err := FindKernel(d.KernelDir)
	if err != nil {
		return nil, fmt.Errorf("default image: %w", err)
	}
	cache := d.CacheDir
	if cache == "" {
		cache = DefaultCacheDir
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("default image: %w", err)
	}
	tree, err := os.MkdirTemp(cache, ".default-rootfs-")
	if err != nil {
		return nil, fmt.Errorf("default image: %w", err)
	}
	defer os.RemoveAll(tree)
	root := filepath.Join(tree, "root")
	if err := BusyboxRootfs(ctx, root, bb); err != nil {
		return nil, fmt.Errorf("default image: %w", err)
	}
	spec := Spec{Agent: d.Agent, Kernel: *k, Rootfs: root, CacheDir: cache}
	if !build {
		return Lookup(spec)
	}
	img, _, err := Build(ctx, spec, progress)
	return img, err
}

// requireStatic checks that path is an ELF executable without an
// interpreter: a guest has no host libraries.
func requireStatic(path string) error {
	if path == "" {
		return errors.New("no path given")
	}
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// BusyboxRootfs makes dir (which must not exist) a minimal root
// filesystem: the static busybox at /bin/busybox with a link for each
// applet it lists (busybox --list-full), /etc/passwd and /etc/group with
// root, sandbox (1000) and nobody, a world-writable sticky /workspace and
// the mount points the guest init uses. Modes are set explicitly, so the
// tree (and the image's hash) depends on the busybox binary only.
func BusyboxRootfs(ctx context.Context, dir, busybox string) error {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox rootfs: %s --list-full: %w", busybox, err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	dirs := map[string]os.FileMode{
		"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
		"dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "root": 0o700, "mnt": 0o755,
		"tmp": os.ModeSticky | 0o777, "workspace": os.ModeSticky | 0o777,
	}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "run", "root", "mnt", "tmp", "workspace"} {
		p := filepath.Join(dir, d)
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
		if err := os.Chmod(p, dirs[d]); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	if err := copyFile(busybox, filepath.Join(dir, "bin/busybox")); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	if err := os.Chmod(filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		rel := strings.TrimSpace(l)
		if rel == "" || rel == "bin/busybox" || !strings.Contains(rel, "/") {
			continue // linuxrc: the agent is the guest's init
		}
		if strings.Contains(rel, "..") || filepath.IsAbs(rel) || dirs[filepath.Dir(rel)] == 0 {
			return fmt.Errorf("busybox rootfs: unexpected applet path %q", rel)
		}
		if err := os.Symlink("/bin/busybox", filepath.Join(dir, rel)); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	return nil
}
