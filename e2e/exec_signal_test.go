package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/client"
)

// TestDaemonExecSignalPassesUnreadStdin: a client streams more input than
// every buffer on the way holds to a process that never reads it, then
// sends SIGINT (Ctrl-C). The signal must not queue behind the unread
// input: the process dies of it within seconds. Then a resize on a TTY
// exec that ignores its input takes effect the same way, and a process
// that does read its input still gets all of it, in order, before EOF.
func TestDaemonExecSignalPassesUnreadStdin(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "sig"}); err != nil {
		t.Fatal(err)
	}
	// SIGINT behind 16 MiB of unread input.
	e, err := d.c.Exec(ctx, "sig", api.ExecRequest{Argv: []string{"sleep", "60"}},
		client.ExecIO{Stdin: io.LimitReader(zeros{}, 16<<20), Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	// Let the input fill every buffer on the way.
	time.Sleep(2 * time.Second)
	sendWithin(t, e, "sending SIGINT", func() error { return e.Signal(int(syscall.SIGINT)) })
	st, err := waitWithin(t, e, "SIGINT did not end `sleep 60`", nil)
	if err != nil || st.Signal != int(syscall.SIGINT) {
		t.Errorf("sleep ended with %+v %v, want killed by SIGINT", st, err)
	}

	// A resize behind unread input on a TTY.
	var out syncBuffer
	e, err = d.c.Exec(ctx, "sig", api.ExecRequest{Argv: []string{"sh", "-c", "stty -icanon -echo; stty size; trap 'stty size; exit 3' WINCH; while :; do sleep 0.05; done"}, TTY: true, Rows: 20, Cols: 70},
		client.ExecIO{Stdin: io.LimitReader(zeros{}, 16<<20), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "20 70") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	sendWithin(t, e, "resize", func() error { return e.Resize(33, 99) })
	st, err = waitWithin(t, e, "resize did not reach the TTY process", out.String)
	if err != nil || st.ExitCode != 3 || !strings.Contains(out.String(), "33 99") {
		t.Errorf("resize: %+v %v %q", st, err, out.String())
	}

	// A reader still gets every byte, then EOF.
	in := make([]byte, 8<<20)
	for i := range in {
		in[i] = byte(i % 251)
	}
	want := fmt.Sprintf("%x", sha256.Sum256(in))
	var sum syncBuffer
	e, err = d.c.Exec(ctx, "sig", api.ExecRequest{Argv: []string{"sh", "-c", "sleep 1; sha256sum"}},
		client.ExecIO{Stdin: bytes.NewReader(in), Stdout: &sum})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := e.Wait(); err != nil || st.ExitCode != 0 || !strings.HasPrefix(sum.String(), want) {
		t.Errorf("sha256sum of 8 MiB of input: %+v %v %q, want %s", st, err, sum.String(), want)
	}
}

// sendWithin runs send (a signal or a resize of e) and fails the test if
// it is still blocked after 5 s: behind unread stdin, say what.
func sendWithin(t *testing.T, e *client.Exec, what string, send func() error) {
	t.Helper()
	sent := make(chan error, 1)
	go func() { sent <- send() }()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		e.Close()
		t.Fatalf("%s blocked behind unread stdin for 5s", what)
	}
}

// waitWithin waits for e to end and fails the test, saying what (and
// output, when given, as it is then), if it has not within 5 s while its
// stdin was full.
func waitWithin(t *testing.T, e *client.Exec, what string, output func() string) (api.ExitStatus, error) {
	t.Helper()
	type result struct {
		st  api.ExitStatus
		err error
	}
	ended := make(chan result, 1)
	go func() { st, err := e.Wait(); ended <- result{st, err} }()
	select {
	case r := <-ended:
		return r.st, r.err
	case <-time.After(5 * time.Second):
		e.Close()
		<-ended
		if output != nil {
			what += fmt.Sprintf(" (output %q)", output())
		}
		t.Fatalf("%s within 5s while its stdin was full", what)
		return api.ExitStatus{}, nil
	}
}

// rawExec starts argv in sandbox id over a hand-made exec stream with
// the given Upgrade token and returns the connection after the 101, or
// the status line of any other answer.
func rawExec(t *testing.T, d *daemon, id, upgrade string, argv []string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	conn, err := net.Dial("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	body, err := json.Marshal(api.ExecRequest{Argv: argv})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest("POST", "http://localhost/v1/sandboxes/"+id+"/exec", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", upgrade)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		return nil, nil, resp.Status + " " + string(b)
	}
	return conn, br, resp.Status
}

// TestDaemonExecStdinWindowEnforced: a client that ignores the stdin
// window (sends more input than granted to a process that does not read
// it) is cut off and its process killed, so the daemon never holds more
// than the window of input; and a client of the old protocol is refused
// with an answer naming the Upgrade header.
func TestDaemonExecStdinWindowEnforced(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "win"}); err != nil {
		t.Fatal(err)
	}
	if _, _, status := rawExec(t, d, "win", "ironclaw-exec.v1", []string{"true"}); !strings.HasPrefix(status, "400") || !strings.Contains(status, `"field":"Upgrade"`) {
		t.Errorf("old protocol: got %s, want a 400 naming Upgrade", status)
	}
	conn, br, status := rawExec(t, d, "win", api.ExecUpgrade, []string{"sleep", "60"})
	if conn == nil {
		t.Fatalf("exec stream refused: %s", status)
	}
	f, err := agentapi.ReadFrame(br, agentapi.MaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	var st api.ExecStarted
	if err := json.Unmarshal(f.Payload, &st); err != nil || st.StdinWindow != api.ExecStdinWindow {
		t.Fatalf("start frame %s %q: %v", f.Type, f.Payload, err)
	}
	el := d.follow("win")
	// The whole window is accepted, and granted back as far as the pipes
	// on the way take it, until they are full (the process never reads).
	chunk := make([]byte, agentapi.DataChunk)
	send := func(n int) {
		for n > 0 {
			k := min(n, len(chunk))
			if err := agentapi.WriteFrame(conn, agentapi.FrameStdin, chunk[:k]); err != nil {
				t.Fatalf("write within the window: %v", err)
			}
			n -= k
		}
	}
	send(st.StdinWindow)
	granted := 0
	for {
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		f, err := agentapi.ReadFrame(br, agentapi.MaxFrame)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("stream ended within the window: %v", err)
		}
		var win api.ExecWindow
		if f.Type != agentapi.FrameResponse || json.Unmarshal(f.Payload, &win) != nil || win.Stdin <= 0 {
			t.Fatalf("unexpected %s frame %q", f.Type, f.Payload)
		}
		granted += win.Stdin
		send(win.Stdin)
		if granted > 16<<20 {
			t.Fatalf("the daemon granted %d bytes to a process that reads nothing", granted)
		}
	}
	t.Logf("granted back %d bytes while the pipes filled", granted)
	_ = conn.SetReadDeadline(time.Time{})
	// One byte more breaks the protocol: the daemon kills the process
	// and ends the stream.
	if err := agentapi.WriteFrame(conn, agentapi.FrameStdin, []byte{1}); err != nil {
		t.Fatal(err)
	}
	ev := el.wait(t, 15*time.Second, "exec_exited", func(ev api.Event) bool {
		return ev.Type == "exec_exited" && ev.ExecID == st.ExecID
	})
	if ev.ExitCode == nil || *ev.ExitCode == 0 {
		t.Errorf("exec ended with %+v, want killed", ev)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := agentapi.ReadFrame(br, agentapi.MaxFrame)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Error("the daemon kept the stream of a client over its window open")
			}
			break
		}
		if f.Type == agentapi.FrameResponse {
			t.Errorf("the daemon granted window after the client broke it: %q", f.Payload)
		}
	}
}
