package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestBusyboxRootfsDeterministic builds the default rootfs twice and
// compares the hashes the image cache keys on: the same busybox must give
// the same tree, or every run would rebuild the default image.
func TestBusyboxRootfsDeterministic(t *testing.T) {
	_, err := os.Stat(DefaultBusybox)
	testutil.Require(t, err == nil && requireStatic(DefaultBusybox) == nil, "needs a static busybox at "+DefaultBusybox+" (apt package busybox-static)")
	var sums []string
	for i := 0; i < 2; i++ {
		dir := filepath.Join(t.TempDir(), "root")
		if err := BusyboxRootfs(context.Background(), dir, DefaultBusybox); err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if err := hashTree(h, dir); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, hex.EncodeToString(h.Sum(nil)))
		for _, p := range []string{"bin/sh", "usr/bin/sha256sum", "bin/busybox", "etc/passwd"} {
			if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
				t.Errorf("default rootfs lacks %s: %v", p, err)
			}
		}
		if fi, err := os.Stat(filepath.Join(dir, "workspace")); err != nil || fi.Mode().Perm() != 0o777 || fi.Mode()&os.ModeSticky == 0 {
			t.Errorf("/workspace: %v %v, want drwxrwxrwt", fi, err)
		}
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds of the default rootfs hash differently: %s vs %s", sums[0], sums[1])
	}
	if err := requireStatic("/bin/true"); err == nil {
		t.Log("/bin/true is static on this host?")
	}
	if err := BusyboxRootfs(context.Background(), filepath.Join(t.TempDir(), "x"), "/nonexistent/busybox"); err == nil {
		t.Error("a missing busybox built a rootfs")
	}
}
