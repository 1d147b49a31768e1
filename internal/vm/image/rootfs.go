package image

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildRootfs makes an ext4 image at out from src, a directory or a tarball
// (.tar or .tar.gz, e.g. an exported OCI image), with `mkfs.ext4 -d`. sizeMiB
// 0 sizes the image from the content (content + 50% + 32 MiB).
func BuildRootfs(ctx context.Context, src, out string, sizeMiB int64) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("build rootfs: source: %w", err)
	}
	dir := src
	if !fi.IsDir() {
		tmp, err := os.MkdirTemp(filepath.Dir(out), "rootfs-extract-")
		if err != nil {
			return fmt.Errorf("build rootfs: %w", err)
		}
		defer os.RemoveAll(tmp)
		if err := extractTar(src, tmp); err != nil {
			return fmt.Errorf("build rootfs: extract %s: %w", src, err)
		}
		dir = tmp
	}
	if sizeMiB <= 0 {
		used, err := dirSize(dir)
		if err != nil {
			return fmt.Errorf("build rootfs: %w", err)
		}
		sizeMiB = used*3/2>>20 + 32
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("build rootfs: %w", err)
	}
	err = f.Truncate(sizeMiB << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("build rootfs: size image: %w", err)
	}
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "ironclaw-root", "-E", "root_owner=0:0", "-d", dir, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(out)
		return fmt.Errorf("build rootfs: mkfs.ext4 -d %s: %w: %s", dir, err, strings.TrimSpace(string(b)))
	}
	return nil
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size() + 4096
		}
		return nil
	})
	return n, err
}

// extractTar unpacks a tarball into dst through os.Root, so no entry —
// "../x", an absolute name, or a path through a symlink the archive made —
// lands outside dst.
func extractTar(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer gz.Close()
		r = gz
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := strings.TrimLeft(filepath.Clean("/"+h.Name), "/")
		if name == "" {
			continue
		}
		mode := os.FileMode(h.Mode) & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
		if d := filepath.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			if err := root.Chmod(name, mode); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeReg:
			_ = root.Remove(name)
			out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = root.Chmod(name, mode)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeSymlink:
			_ = root.Remove(name)
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		case tar.TypeLink:
			target := strings.TrimLeft(filepath.Clean("/"+h.Linkname), "/")
			_ = root.Remove(name)
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("%s: %w", h.Name, err)
			}
		default:
			// Device nodes, FIFOs: the guest's devtmpfs provides devices.
		}
		if h.Typeflag != tar.TypeSymlink {
			_ = root.Lchown(name, h.Uid, h.Gid)
		}
	}
}
