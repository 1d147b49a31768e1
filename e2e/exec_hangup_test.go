package e2e

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/client"
)

// zeros is an endless stream of input.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestDaemonExecHangupWithStalledStdin: a client streams input to a
// process that never reads it, then hangs up. The client stops sending
// once the process's input is full (its stdin window is used up), so the
// daemon must still notice the hang-up and kill the process, as it does
// for any exec stream whose connection ends: otherwise the process runs on, the
// sandbox stays busy (no idle timeout) and the exec never ends.
func TestDaemonExecHangupWithStalledStdin(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "hangup"}); err != nil {
		t.Fatal(err)
	}
	el := d.follow("hangup")
	e, err := d.c.Exec(ctx, "hangup", api.ExecRequest{Argv: []string{"sleep", "300"}},
		client.ExecIO{Stdin: io.LimitReader(zeros{}, 64<<20), Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	// Let the input fill every buffer on the way (pipe, agent stream
	// window, the daemon's stdin window): the client then waits for a grant.
	time.Sleep(2 * time.Second)
	e.Close()
	ev := el.wait(t, 15*time.Second, "exec_exited", func(ev api.Event) bool {
		return ev.Type == "exec_exited" && ev.ExecID == e.ID
	})
	// A killed stream's exec reports the stream's end (exit code -1 and
	// an error), as for any hang-up.
	if ev.ExitCode == nil || *ev.ExitCode == 0 {
		t.Errorf("exec ended with %+v, want killed", ev)
	}
	res, err := d.c.ExecBuffered(ctx, "hangup", api.ExecRequest{Argv: []string{"sh", "-c", "ps -eo comm | grep -cx sleep || true"}})
	if err != nil {
		t.Fatal(err)
	}
	if n := string(bytes.TrimSpace(res.Stdout)); n != "0" {
		t.Errorf("%s sleep process(es) still run in the sandbox after the client hung up", n)
	}
}
