// Package testutil is the single gate for tests that need privileges the test
// process may not have (root, network namespaces, KVM, host binaries).
//
// A gated test skips with its reason when the privilege is missing, unless
// IRONCLAW_TEST_PRIVILEGED=1 is set: then the missing privilege is a test
// failure, so a skip can never hide a regression in CI.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// PrivilegedEnv is the environment variable that turns privilege skips into failures.
const PrivilegedEnv = "IRONCLAW_TEST_PRIVILEGED"

// Privileged reports whether the run demands that privileged tests run.
func Privileged() bool { return os.Getenv(PrivilegedEnv) == "1" }

// Require skips t with reason when ok is false, or fails it when the run is
// privileged (IRONCLAW_TEST_PRIVILEGED=1).
func Require(t testing.TB, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if Privileged() {
		t.Fatalf("required for this test but missing: %s (%s=1 makes this a failure, not a skip)", reason, PrivilegedEnv)
	}
	t.Skipf("skipping: %s (set %s=1 to make this a failure)", reason, PrivilegedEnv)
}

// RequireRoot gates a test on running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "needs root")
}

// RequireCommand gates a test on a host binary being on PATH and returns its path.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, "needs "+name+" on PATH")
	return p
}

// SearchableTempDir returns a fresh directory that other users can search
// (mode 0711), removed when the test ends. Sandbox state roots need it: a
// sandbox's init runs as an unprivileged host uid and walks into the root,
// while t.TempDir's parents are private.
func SearchableTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ironclaw-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
