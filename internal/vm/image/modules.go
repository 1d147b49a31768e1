package image

import (
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// GuestModules are the modules a guest needs from a modular kernel such as
// Debian's cloud kernel: virtio-mmio transport (microvm, Firecracker),
// block, net, console (virtio-serial), vsock, rng, and overlayfs for the
// writable root. Their dependencies are added by ResolveModules.
var GuestModules = []string{
	"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng",
	"vmw_vsock_virtio_transport", "overlay",
}

// ModuleIndex maps module names to their files and dependencies, read from
// the .modinfo sections of the .ko files under a modules directory (no
// modules.dep needed: Debian's package ships none; depmod makes it).
type ModuleIndex struct {
	Dir     string
	Path    map[string]string   // name → path relative to Dir
	Depends map[string][]string // name → names it depends on
	Builtin map[string]bool
}

// IndexModules reads every .ko under dir (lib/modules/<release>).
func IndexModules(dir string) (*ModuleIndex, error) {
	idx := &ModuleIndex{Dir: dir, Path: map[string]string{}, Depends: map[string][]string{}, Builtin: map[string]bool{}}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				idx.Builtin[modName(l)] = true
			}
		}
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		n := modName(p)
		idx.Path[n] = rel
		idx.Depends[n] = deps
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index kernel modules in %s: %w", dir, err)
	}
	if len(idx.Path) == 0 {
		return nil, fmt.Errorf("index kernel modules in %s: no .ko files (compressed modules are not supported)", dir)
	}
	return idx, nil
}

func modName(p string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(p), ".ko"), "-", "_")
}

// moduleDepends reads "depends=" from a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("read module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, "depends="); ok {
			if v == "" {
				return nil, nil
			}
			var out []string
			for _, d := range strings.Split(v, ",") {
				out = append(out, strings.ReplaceAll(d, "-", "_"))
			}
			return out, nil
		}
	}
	return nil, nil
}

// Resolve returns the module files (relative to Dir) needed for want, each
// after its dependencies. Built-in modules are skipped; an unknown module
// is an error.
func (idx *ModuleIndex) Resolve(want []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, from string) error
	visit = func(n, from string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", n)
		case 2:
			return nil
		}
		if idx.Builtin[n] {
			state[n] = 2
			return nil
		}
		p, ok := idx.Path[n]
		if !ok {
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) not found in %s", n, from, idx.Dir)
			}
			return fmt.Errorf("module %s not found in %s", n, idx.Dir)
		}
		state[n] = 1
		for _, d := range idx.Depends[n] {
			if err := visit(d, n); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, p)
		return nil
	}
	for _, n := range want {
		if err := visit(strings.ReplaceAll(n, "-", "_"), ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}
