package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// builderVersion changes whenever the image layout changes, so old cache
// entries are not reused.
const builderVersion = "ironclaw-image-2"

// DefaultCacheDir is where built images are cached unless $IRONCLAW_CACHE
// or Spec.CacheDir says otherwise.
const DefaultCacheDir = "/var/lib/ironclaw/images"

// Spec says what to build an image from.
type Spec struct {
	// Agent is the static ironclaw-agent binary to put in as /init.
	Agent string
	// Kernel is the guest kernel; its modules are taken from
	// Kernel.ModulesDir when set.
	Kernel Kernel
	// Modules to include with their dependencies; nil means GuestModules.
	Modules []string
	// Rootfs is a directory or a tarball.
	Rootfs string
	// RootfsSizeMiB is the ext4 size; 0 sizes it from the content.
	RootfsSizeMiB int64
	// CacheDir holds built images, one directory per content hash.
	CacheDir string
}

// Image is a built, cached image.
type Image struct {
	Dir           string   `json:"-"`
	Hash          string   `json:"hash"`
	Kernel        string   `json:"kernel"`
	KernelRelease string   `json:"kernel_release"`
	Initramfs     string   `json:"initramfs"`
	Rootfs        string   `json:"rootfs"`
	Modules       []string `json:"modules"`
}

const manifest = "image.json"

// Build builds spec into the cache unless an image with the same content
// hash is there already, and reports its steps to progress. It returns the
// image and whether it was built (false: served from the cache).
func Build(ctx context.Context, spec Spec, progress io.Writer) (*Image, bool, error) {
	if progress == nil {
		progress = io.Discard
	}
	fmt.Fprintf(progress, "hashing inputs\n")
	k, err := keyOf(&spec)
	if err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	sum, order, dir := k.sum, k.order, k.dir
	if img, err := Load(dir); err == nil && img.Hash == sum {
		fmt.Fprintf(progress, "image %s is up to date\n", sum[:12])
		return img, false, nil
	}
	if err := os.MkdirAll(spec.CacheDir, 0o755); err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	tmp, err := os.MkdirTemp(spec.CacheDir, ".build-")
	if err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	defer os.RemoveAll(tmp)
	img := &Image{Hash: sum, Kernel: "vmlinuz", KernelRelease: spec.Kernel.Release, Initramfs: "initramfs.cpio", Rootfs: "rootfs.ext4", Modules: order}

	fmt.Fprintf(progress, "copying kernel %s\n", spec.Kernel.Vmlinuz)
	if err := copyFile(spec.Kernel.Vmlinuz, filepath.Join(tmp, img.Kernel)); err != nil {
		return nil, false, fmt.Errorf("build image: kernel: %w", err)
	}
	fmt.Fprintf(progress, "writing initramfs (agent + %d modules)\n", len(order))
	f, err := os.Create(filepath.Join(tmp, img.Initramfs))
	if err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	err = WriteInitramfs(f, spec.Agent, spec.Kernel.ModulesDir, order)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	fmt.Fprintf(progress, "making ext4 rootfs from %s\n", spec.Rootfs)
	if err := BuildRootfs(ctx, spec.Rootfs, filepath.Join(tmp, img.Rootfs), spec.RootfsSizeMiB); err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, manifest), b, 0o644); err != nil {
		return nil, false, fmt.Errorf("build image: %w", err)
	}
	_ = os.RemoveAll(dir) // a stale partial entry
	if err := os.Rename(tmp, dir); err != nil {
		return nil, false, fmt.Errorf("build image: install into cache: %w", err)
	}
	img.Dir = dir
	fmt.Fprintf(progress, "built image %s in %s\n", sum[:12], dir)
	return img.abs(), true, nil
}

// key is where an image of a spec lives in the cache.
type key struct {
	sum   string   // content hash
	order []string // module files in load order
	dir   string   // cache entry
}

// keyOf fills spec's defaults, resolves its modules and hashes its inputs.
func keyOf(spec *Spec) (key, error) {
	if spec.Agent == "" || spec.Kernel.Vmlinuz == "" || spec.Rootfs == "" {
		return key{}, fmt.Errorf("agent, kernel and rootfs are all required")
	}
	if spec.CacheDir == "" {
		spec.CacheDir = DefaultCacheDir
	}
	mods := spec.Modules
	if mods == nil {
		mods = GuestModules
	}
	var order []string
	if spec.Kernel.ModulesDir != "" {
		idx, err := IndexModules(spec.Kernel.ModulesDir)
		if err != nil {
			return key{}, err
		}
		if order, err = idx.Resolve(mods); err != nil {
			return key{}, err
		}
	}
	sum, err := hashInputs(*spec, order)
	if err != nil {
		return key{}, err
	}
	return key{sum: sum, order: order, dir: filepath.Join(spec.CacheDir, sum[:24])}, nil
}

// Lookup returns the cached image of spec without building anything; it
// fails with ErrNotBuilt when the cache has none.
func Lookup(spec Spec) (*Image, error) {
	k, err := keyOf(&spec)
	if err != nil {
		return nil, fmt.Errorf("look up image: %w", err)
	}
	img, err := Load(k.dir)
	if err != nil || img.Hash != k.sum {
		return nil, fmt.Errorf("look up image %s: %w", k.sum[:12], ErrNotBuilt)
	}
	return img, nil
}

// ErrNotBuilt says the cache holds no image for the inputs asked for.
var ErrNotBuilt = errors.New("image not built")

// Load reads a built image's manifest from dir.
func Load(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifest))
	if err != nil {
		return nil, fmt.Errorf("load image: %w", err)
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("load image %s: %w", dir, err)
	}
	img.Dir = dir
	for _, f := range []string{img.Kernel, img.Initramfs, img.Rootfs} {
		if f == "" || filepath.Base(f) != f {
			return nil, fmt.Errorf("load image %s: bad file name %q in manifest", dir, f)
		}
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, fmt.Errorf("load image: %w", err)
		}
	}
	return img.abs(), nil
}

func (img *Image) abs() *Image {
	c := *img
	c.Kernel = filepath.Join(img.Dir, filepath.Base(img.Kernel))
	c.Initramfs = filepath.Join(img.Dir, filepath.Base(img.Initramfs))
	c.Rootfs = filepath.Join(img.Dir, filepath.Base(img.Rootfs))
	return &c
}

func hashInputs(spec Spec, modules []string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00size=%d\x00", builderVersion, spec.RootfsSizeMiB)
	for _, f := range []string{spec.Agent, spec.Kernel.Vmlinuz} {
		if err := hashFile(h, f); err != nil {
			return "", err
		}
	}
	for _, m := range modules {
		fmt.Fprintf(h, "module %s\x00", m)
		if err := hashFile(h, filepath.Join(spec.Kernel.ModulesDir, m)); err != nil {
			return "", err
		}
	}
	fi, err := os.Stat(spec.Rootfs)
	if err != nil {
		return "", fmt.Errorf("rootfs source: %w", err)
	}
	if !fi.IsDir() {
		if err := hashFile(h, spec.Rootfs); err != nil {
			return "", err
		}
	} else if err := hashTree(h, spec.Rootfs); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(h hash.Hash, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(h, "file\x00")
	_, err = io.Copy(h, f)
	return err
}

// hashTree hashes names, modes, sizes, link targets and contents, in a
// fixed order (directory sizes left out: they depend on the file system).
func hashTree(h hash.Hash, dir string) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		size := fi.Size()
		if fi.IsDir() {
			size = 0 // a directory's size is the file system's business
		}
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", rel, fi.Mode(), size)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s\x00", t)
		case fi.Mode().IsRegular():
			if err := hashFile(h, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
