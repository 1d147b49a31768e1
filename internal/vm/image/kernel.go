package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// KernelDirEnv names a directory holding an unpacked Debian kernel package
// (boot/vmlinuz-* and lib/modules/<release>/), as made by
// scripts/fetch-guest-kernel.sh or FetchDebianKernel.
const KernelDirEnv = "IRONCLAW_GUEST_KERNEL_DIR"

// DefaultKernelDir is where the fetch script and `ironclaw image build`
// unpack Debian's cloud kernel when no directory is given.
const DefaultKernelDir = "/var/lib/ironclaw/kernel"

// DebianKernelPackage is the meta-package whose dependency is the kernel.
const DebianKernelPackage = "linux-image-cloud-amd64"

// Kernel is a guest kernel and its modules.
type Kernel struct {
	Vmlinuz    string
	ModulesDir string // lib/modules/<release>; "" for a kernel with everything built in
	Release    string
}

// FindKernel locates the kernel unpacked under dir ("" means
// DefaultKernelDir): the newest boot/vmlinuz-* and its modules.
func FindKernel(dir string) (*Kernel, error) {
	if dir == "" {
		dir = DefaultKernelDir
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(matches) == 0 {
		return nil, fmt.Errorf("find guest kernel: no boot/vmlinuz-* under %s (run scripts/fetch-guest-kernel.sh or `ironclaw image build`)", dir)
	}
	sort.Strings(matches)
	vmlinuz := matches[len(matches)-1]
	release := strings.TrimPrefix(filepath.Base(vmlinuz), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", release)
	if _, err := os.Stat(mods); err != nil {
		return nil, fmt.Errorf("find guest kernel: modules of %s: %w", release, err)
	}
	return &Kernel{Vmlinuz: vmlinuz, ModulesDir: mods, Release: release}, nil
}

// FetchDebianKernel downloads Debian's cloud kernel with apt-get download
// (the meta-package and the linux-image-*-cloud-amd64 it depends on) and
// unpacks it into dir with dpkg-deb -x. It needs no root beyond what apt
// needs to read its lists.
func FetchDebianKernel(ctx context.Context, dir string, progress io.Writer) (*Kernel, error) {
	if progress == nil {
		progress = io.Discard
	}
	debs := filepath.Join(dir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}
	dep, err := exec.CommandContext(ctx, "apt-cache", "depends", DebianKernelPackage).Output()
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: apt-cache depends %s: %w (run apt-get update?)", DebianKernelPackage, err)
	}
	var pkg string
	for _, l := range strings.Split(string(dep), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(v, "linux-image-") {
			pkg = v
		}
	}
	if pkg == "" {
		return nil, fmt.Errorf("fetch kernel: %s has no linux-image-* dependency", DebianKernelPackage)
	}
	fmt.Fprintf(progress, "downloading %s (%s)\n", DebianKernelPackage, pkg)
	cmd := exec.CommandContext(ctx, "apt-get", "download", pkg)
	cmd.Dir = debs
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fetch kernel: apt-get download %s: %w: %s", pkg, err, out)
	}
	files, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb"))
	if len(files) == 0 {
		return nil, fmt.Errorf("fetch kernel: apt-get download left no %s_*.deb in %s", pkg, debs)
	}
	fmt.Fprintf(progress, "unpacking %s\n", filepath.Base(files[0]))
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", files[0], dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fetch kernel: dpkg-deb -x %s: %w: %s", files[0], err, out)
	}
	return FindKernel(dir)
}
