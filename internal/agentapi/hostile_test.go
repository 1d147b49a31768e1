package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// connPair returns the two ends of a Unix socket pair: the host's and the
// guest's.
func connPair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// hostileGuest answers the handshake on conn like an agent and returns
// its yamux session, ready for whatever the test makes it do.
func hostileGuest(t *testing.T, conn net.Conn, token []byte) <-chan *yamux.Session {
	t.Helper()
	out := make(chan *yamux.Session, 1)
	go func() {
		defer close(out)
		if err := ServerHandshake(context.Background(), conn, func() []byte { return token }); err != nil {
			t.Errorf("guest handshake: %v", err)
			return
		}
		sess, err := yamux.Server(conn, MuxConfig())
		if err != nil {
			t.Errorf("guest session: %v", err)
			return
		}
		out <- sess
	}()
	return out
}

// connectHostile connects a host client to a hostileGuest over a socket
// pair and returns both ends' sessions; the test's cleanup closes them.
func connectHostile(ctx context.Context, t *testing.T) (*Client, *yamux.Session) {
	t.Helper()
	host, guest := connPair(t)
	token := []byte("token-of-the-test")
	sessc := hostileGuest(t, guest, token)
	c, err := Connect(ctx, host, token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sess := <-sessc
	if sess == nil {
		t.FailNow()
	}
	t.Cleanup(func() { sess.Close() })
	return c, sess
}

// TestClientRefusesGuestStreams has a hostile guest open streams towards
// the host and fill them. The host never accepts a stream (the protocol
// has none in that direction), so yamux would keep up to AcceptBacklog of
// them, each with a full receive window (128 × 256 KiB = 32 MiB per
// sandbox), in the daemon's memory for as long as the session lives. The
// client must end the session instead, and say why.
func TestClientRefusesGuestStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, sess := connectHostile(ctx, t)
	// The host may end the session as soon as it sees the stream's SYN,
	// before the guest's OpenStream returns: then the guest's session is
	// already shut down, which is the point.
	st, err := sess.OpenStream()
	switch {
	case err == nil:
		// A window's worth of data the host would hold.
		go st.Write(bytes.Repeat([]byte{'x'}, 256<<10))
	case !errors.Is(err, yamux.ErrSessionShutdown):
		t.Fatalf("guest open stream: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the host kept a session whose guest opened a stream of its own")
	}
	if _, err := c.Health(ctx); err == nil || !errors.Is(err, ErrProtocol) {
		t.Fatalf("Health after the violation = %v, want an error wrapping ErrProtocol", err)
	}
}

// replyingGuest answers every stream the host opens with reply (raw
// bytes: whatever a hostile guest puts there), after reading the request
// frame, then closes the stream.
func replyingGuest(t testing.TB, sess *yamux.Session, reply []byte) {
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			if _, err := ReadFrame(st, MaxFrame); err != nil {
				return
			}
			_, _ = st.Write(reply)
		}()
	}
}

// FuzzClientAgainstHostileGuest has the host's client read arbitrary
// replies from a guest: every operation must end with a result or an
// error (no panic, no hang), and a download must never hand the caller
// more bytes than its limit, whatever the guest announces or sends.
func FuzzClientAgainstHostileGuest(f *testing.F) {
	frames := func(fs ...Frame) []byte {
		var b bytes.Buffer
		for _, fr := range fs {
			_ = WriteFrame(&b, fr.Type, fr.Payload)
		}
		return b.Bytes()
	}
	js := func(v any) []byte { b, _ := json.Marshal(v); return b }
	f.Add(frames(Frame{FrameResponse, js(Response{Info: &FileInfo{Name: "f", Size: 3}})}, Frame{FrameStdout, []byte("abc")}, Frame{FrameEOF, nil}))
	f.Add(frames(Frame{FrameResponse, js(Response{Info: &FileInfo{Name: "f", Size: 1}})}, Frame{FrameStdout, bytes.Repeat([]byte{'x'}, 100)}, Frame{FrameEOF, nil}))
	f.Add(frames(Frame{FrameResponse, js(Response{})}, Frame{FrameStdout, bytes.Repeat([]byte{'y'}, 40)}, Frame{FrameStdout, bytes.Repeat([]byte{'y'}, 40)}, Frame{FrameEOF, nil}))
	f.Add(frames(Frame{FrameResponse, js(Response{ExecID: "e1", PID: 7})}, Frame{FrameStderr, []byte("err")}, Frame{FrameExit, js(ExitStatus{Code: 3})}))
	f.Add(frames(Frame{FrameResponse, js(Response{Error: "no", Code: CodeEscape})}))
	f.Add(frames(Frame{FrameError, js(Response{Error: "mid", Code: CodeInternal})}))
	f.Add(frames(Frame{FrameExit, []byte("{")}, Frame{FrameHello, nil}))
	f.Add([]byte{byte(FrameStdout), 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	const limit = 64
	f.Fuzz(func(t *testing.T, reply []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, sess := connectHostile(ctx, t)
		go replyingGuest(t, sess, reply)

		_, _ = c.Health(ctx)
		_, _ = c.Stat(ctx, "/f")
		_, _ = c.List(ctx, "/")
		var out bytes.Buffer
		n, _ := c.ReadFile(ctx, "/f", &out, limit)
		if out.Len() > limit || n != int64(out.Len()) {
			t.Fatalf("ReadFile wrote %d bytes (reported %d), limit %d", out.Len(), n, limit)
		}
		_, _ = c.Exec(ctx, ExecSpec{Argv: []string{"sh"}}, ExecIO{Stdout: io.Discard, Stderr: io.Discard})
		if ctx.Err() != nil {
			t.Fatalf("the client hung on the guest's reply %q", reply)
		}
	})
}
