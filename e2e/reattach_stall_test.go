package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
)

// TestDaemonReattachesStalledGuestsConcurrently: three sandboxes whose
// agents stall the handshake (their init, the agent, is SIGSTOPped while
// the daemon is down: the kernel still accepts the agent socket
// connection, and the hello is never answered) and one healthy sandbox
// survive a daemon restart. The new daemon waits out the three
// handshakes side by side, so it answers after about one 30 s handshake
// timeout, not three (90 s); the healthy sandbox is re-attached and
// works; the stalled ones are destroyed, their inits gone.
func TestDaemonReattachesStalledGuestsConcurrently(t *testing.T) {
	root := newRoot(t)
	var pids map[string]int
	// After a failure (a daemon stopped mid-recovery), kill what it left
	// and let gc reclaim it: this runs after the daemon's cleanup.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(time.Second)
		if r := ironclaw(t, nil, "--root", root, "gc"); r.code != 0 {
			t.Logf("gc after the failure: %d %s", r.code, r.stderr)
		}
	})
	d := startDaemon(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	stalled := []string{"stall1", "stall2", "stall3"}
	pids = map[string]int{}
	for _, id := range append([]string{"healthy"}, stalled...) {
		sb, err := d.c.Create(ctx, api.CreateRequest{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if sb.InitPID <= 0 {
			t.Fatalf("%s has no init PID: %+v", id, sb)
		}
		pids[id] = sb.InitPID
	}
	if out, _, st := run(t, d.c, "healthy", nil, "sh", "-c", "echo mark > /workspace/mark"); st.ExitCode != 0 {
		t.Fatalf("mark: %q %+v", out, st)
	}
	d.stop()
	for _, id := range stalled {
		if err := syscall.Kill(pids[id], syscall.SIGSTOP); err != nil {
			t.Fatalf("stop %s's init %d: %v", id, pids[id], err)
		}
	}
	t.Cleanup(func() {
		for _, id := range stalled {
			_ = syscall.Kill(pids[id], syscall.SIGCONT) // in case the daemon left one
		}
	})
	begin := time.Now()
	d.startWithin(80 * time.Second)
	took := time.Since(begin)
	t.Logf("the daemon answered %v after its start", took.Round(time.Millisecond))
	if took >= 60*time.Second {
		t.Errorf("the daemon took %v to start with 3 stalled guests: the re-attaches ran one after the other", took)
	}
	// Each stalled guest did stall its handshake (else the test proves
	// nothing) and was destroyed.
	if n := strings.Count(d.log.String(), "reconnect to the agent: destroying the sandbox"); n != len(stalled) {
		t.Errorf("%d stalled handshakes in the daemon's log, want %d: %s", n, len(stalled), d.log.String())
	}
	if took < 25*time.Second {
		t.Errorf("the daemon started in %v: the stalled guests did not stall the handshake", took)
	}
	l, err := d.c.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 1 || l[0].ID != "healthy" || l[0].State != "running" {
		t.Errorf("sandboxes after the restart: %+v, want only healthy, running", l)
	}
	if out, _, st := run(t, d.c, "healthy", nil, "cat", "/workspace/mark"); out != "mark\n" || st.ExitCode != 0 {
		t.Errorf("healthy after the restart: %q %+v", out, st)
	}
	for _, id := range stalled {
		// Gone, or a zombie waiting for its reaper.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pids[id]))
		if err != nil {
			continue
		}
		stat := string(b)
		if i := strings.LastIndexByte(stat, ')'); i < 0 || !strings.HasPrefix(stat[i+1:], " Z") {
			t.Errorf("%s's init %d still runs: %s", id, pids[id], stat)
		}
	}
}
