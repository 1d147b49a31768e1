package agent

import (
	"context"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

const reaperHelperEnv = "IRONCLAW_AGENT_REAPER_HELPER_SOCK"

// TestReaperHelper is not a test: it is the body of the subprocess that
// TestReaperReapsOrphans starts (a Reaper takes over every child of its
// process, so it cannot share the test process).
func TestReaperHelper(t *testing.T) {
	sock := os.Getenv(reaperHelperEnv)
	if sock == "" {
		return
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	srv, err := New(Config{Token: testToken, Reaper: NewReaper(ctx), Shutdown: stop})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	_ = srv.Serve(ctx, l)
}

func TestReaperReapsOrphans(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestReaperHelper$")
	cmd.Env = append(os.Environ(), reaperHelperEnv+"="+sock)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	f := &fixture{sock: sock}
	var c *agentapi.Client
	waitFor(t, func() bool {
		var err error
		c, err = f.connect(testToken)
		return err == nil
	})
	defer c.Close()
	// The shell exits at once, orphaning a background sleep that the
	// subreaper inherits; the exec's own status still arrives intact.
	out, _, st := run(t, c, agentapi.ExecSpec{Argv: []string{"sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!; exit 7"}}, nil)
	if st.Code != 7 {
		t.Fatalf("exit status through the reaper = %+v", st)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	// After it exits the orphan must be reaped, not left a zombie.
	statPath := "/proc/" + strconv.Itoa(orphan) + "/stat"
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(statPath)
		if err != nil {
			break // reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped 5 s later: %s", orphan, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent helper after shutdown: %v", err)
	}
}
