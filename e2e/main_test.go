package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

// bin is the ironclaw binary under test, built once by TestMain.
var bin string

// root is the state root every test in this package uses.
var root string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		// Every test here is gated; they skip (or fail under
		// IRONCLAW_TEST_PRIVILEGED=1) one by one.
		return m.Run()
	}
	parents := testroot.Snapshot()
	var err error
	if bin, root, err = testutil.BuildSuite("ironclaw-e2e-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(filepath.Dir(root))
	code := m.Run()
	if err := errors.Join(testutil.Leaks(root, state.NameOf(root)), parents.Leaked()); err != nil {
		fmt.Fprintln(os.Stderr, "LEAK CHECK FAILED:", err)
		return 1
	}
	return code
}

// result is what a finished ironclaw command did.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// ironclaw runs the binary with args and stdin, and waits up to a minute.
func ironclaw(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--root", root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ironclaw %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// sh runs a shell script in a fresh sandbox with extra flags.
func sh(t *testing.T, script string, flags ...string) result {
	t.Helper()
	return ironclaw(t, nil, append(append([]string{"run"}, flags...), "--", "sh", "-c", script)...)
}

// mustSh is sh that requires exit status 0.
func mustSh(t *testing.T, script string, flags ...string) string {
	t.Helper()
	r := sh(t, script, flags...)
	if r.code != 0 {
		t.Fatalf("sandbox script failed with %d:\n%s\nstdout:\n%s\nstderr:\n%s", r.code, script, r.stdout, r.stderr)
	}
	return r.stdout
}

func ironclawGate(t *testing.T) { t.Helper(); testutil.RequireRoot(t) }
