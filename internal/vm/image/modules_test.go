package image

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestResolveGuestModules reads the real Debian cloud kernel's modules
// (fetched by scripts/fetch-guest-kernel.sh) and checks the dependency
// order: every module comes after everything it depends on.
func TestResolveGuestModules(t *testing.T) {
	k, err := FindKernel(os.Getenv(KernelDirEnv))
	testutil.Require(t, err == nil, "needs a guest kernel: run scripts/fetch-guest-kernel.sh ("+errString(err)+")")
	idx, err := IndexModules(k.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}
	order, err := idx.Resolve(GuestModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[modName(p)] = i
	}
	for _, p := range order {
		n := modName(p)
		for _, d := range idx.Depends[n] {
			if dp, ok := pos[d]; ok && dp > pos[n] {
				t.Errorf("%s loads before its dependency %s", n, d)
			}
		}
		if _, err := os.Stat(filepath.Join(k.ModulesDir, p)); err != nil {
			t.Error(err)
		}
	}
	for _, m := range []string{"virtio", "virtio_ring", "virtio_mmio", "virtio_blk", "vsock"} {
		if _, ok := pos[m]; !ok {
			t.Errorf("%s missing from %v", m, order)
		}
	}
	if _, err := idx.Resolve([]string{"no_such_module"}); err == nil {
		t.Error("unknown module resolved")
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
