// Package vmtest builds, for tests and benchmarks, a real micro-VM image:
// the default image (image.Default) made of the ironclaw-agent binary
// compiled from this tree, the Debian cloud kernel fetched by
// scripts/fetch-guest-kernel.sh, and a rootfs of busybox-static (the apt
// package) with its applet links. Images are cached by content hash in a
// directory shared across test runs.
package vmtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// BusyboxEnv overrides the static busybox used for the test rootfs.
const BusyboxEnv = "IRONCLAW_TEST_BUSYBOX"

var (
	mu    sync.Mutex
	built = map[string]*image.Image{}
)

// RepoRoot returns the module root (where go.mod is).
func RepoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// CacheDir is the image cache shared by test runs.
func CacheDir() string {
	if d := os.Getenv("IRONCLAW_CACHE"); d != "" {
		return filepath.Join(d, "test-images")
	}
	return filepath.Join(os.TempDir(), "ironclaw-test-images")
}

// Kernel returns the fetched guest kernel, gating the test on it.
func Kernel(t testing.TB) *image.Kernel {
	t.Helper()
	k, err := image.FindKernel(os.Getenv(image.KernelDirEnv))
	reason := "needs a guest kernel: run scripts/fetch-guest-kernel.sh"
	if err != nil {
		reason += " (" + err.Error() + ")"
	}
	testutil.Require(t, err == nil, reason)
	return k
}

// Agent compiles cmd/ironclaw-agent statically and returns the binary.
func Agent(t testing.TB) string {
	t.Helper()
	out := filepath.Join(CacheDir(), "bin", "ironclaw-agent")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", out+".tmp", "./cmd/ironclaw-agent")
	cmd.Dir = RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ironclaw-agent: %v: %s", err, b)
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		t.Fatal(err)
	}
	return out
}

// Busybox returns the static busybox for the test rootfs, gating the test
// on it.
func Busybox(t testing.TB) string {
	t.Helper()
	bb := os.Getenv(BusyboxEnv)
	if bb == "" {
		bb = image.DefaultBusybox
	}
	out, err := exec.Command(bb, "--list").Output()
	testutil.Require(t, err == nil && strings.Contains(string(out), "sha256sum"),
		"needs a static busybox at "+bb+" (apt package busybox-static)")
	return bb
}

// Image builds (or takes from the cache) the test image: the default image
// (image.Default) made from this tree's agent.
func Image(t testing.TB) *image.Image {
	t.Helper()
	testutil.RequireCommand(t, "mkfs.ext4")
	k := Kernel(t)
	mu.Lock()
	defer mu.Unlock()
	if img, ok := built[k.Vmlinuz]; ok {
		return img
	}
	d := image.Default{Agent: Agent(t), Busybox: Busybox(t), KernelDir: os.Getenv(image.KernelDirEnv), CacheDir: CacheDir()}
	img, err := d.Resolve(context.Background(), true, nil)
	if err != nil {
		t.Fatal(err)
	}
	built[k.Vmlinuz] = img
	return img
}
