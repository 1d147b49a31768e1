package agentapi

import (
	"bytes"
	"context"
	"errors"
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

// TestClientRefusesGuestStreams has a hostile guest open streams towards
// the host and fill them. The host never accepts a stream (the protocol
// has none in that direction), so yamux would keep up to AcceptBacklog of
// them, each with a full receive window (128 × 256 KiB = 32 MiB per
// sandbox), in the daemon's memory for as long as the session lives. The
// client must end the session instead, and say why.
func TestClientRefusesGuestStreams(t *testing.T) {
	host, guest := connPair(t)
	token := []byte("token-of-the-test")
	sessc := hostileGuest(t, guest, token)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, host, token)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess := <-sessc
	if sess == nil {
		t.FailNow()
	}
	defer sess.Close()
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatalf("guest open stream: %v", err)
	}
	// A window's worth of data the host would hold.
	go st.Write(bytes.Repeat([]byte{'x'}, 256<<10))
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the host kept a session whose guest opened a stream of its own")
	}
	if _, err := c.Health(ctx); err == nil || !errors.Is(err, ErrProtocol) {
		t.Fatalf("Health after the violation = %v, want an error wrapping ErrProtocol", err)
	}
}
