// Package vmtest builds, for tests and benchmarks, a real micro-VM image:
// the ironclaw-agent binary compiled from this tree, the Debian cloud
// kernel fetched by scripts/fetch-guest-kernel.sh, and a minimal rootfs of
// busybox-static (the apt package) with its applet links. Images are cached
// by content hash in a directory shared across test runs.
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

// Applets linked to busybox in the test rootfs.
var Applets = []string{"sh", "uname", "cat", "echo", "ls", "sleep", "true", "false", "head", "dd", "sha256sum",
	"nc", "wget", "ip", "mount", "ps", "stty", "tty", "id", "hostname", "mkdir", "rm", "sync", "env", "wc", "yes"}

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

// Rootfs makes a busybox rootfs directory.
func Rootfs(t testing.TB) string {
	t.Helper()
	bb := os.Getenv(BusyboxEnv)
	if bb == "" {
		bb = "/bin/busybox"
	}
	out, err := exec.Command("file", "-L", bb).Output()
	testutil.Require(t, err == nil && strings.Contains(string(out), "statically linked"),
		"needs a static busybox at "+bb+" (apt package busybox-static)")
	dir := filepath.Join(CacheDir(), "rootfs")
	_ = os.RemoveAll(dir)
	for _, d := range []string{"bin", "etc", "dev", "proc", "sys", "tmp", "run", "root", "work"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range Applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Image builds (or takes from the cache) the test image.
func Image(t testing.TB) *image.Image {
	t.Helper()
	testutil.RequireCommand(t, "mkfs.ext4")
	k := Kernel(t)
	mu.Lock()
	defer mu.Unlock()
	if img, ok := built[k.Vmlinuz]; ok {
		return img
	}
	img, _, err := image.Build(context.Background(), image.Spec{
		Agent: Agent(t), Kernel: *k, Rootfs: Rootfs(t), CacheDir: CacheDir(),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	built[k.Vmlinuz] = img
	return img
}
