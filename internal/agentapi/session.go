package agentapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// MuxConfig returns the yamux settings both sides use: a bounded per-stream
// window (the back-pressure bound), keepalives so a dead peer is noticed,
// and no log output of yamux's own (errors surface as return values).
func MuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.MaxStreamWindowSize = 256 << 10
	c.AcceptBacklog = 128
	c.KeepAliveInterval = 15 * time.Second
	// TCG guests are slow; give a busy guest time before calling the
	// connection dead.
	c.ConnectionWriteTimeout = 30 * time.Second
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = 30 * time.Second
	c.LogOutput = io.Discard
	return c
}

// TokenEqual compares two tokens in constant time (hashing first so the
// comparison does not leak their lengths either).
func TokenEqual(a, b []byte) bool {
	ha, hb := sha256.Sum256(a), sha256.Sum256(b)
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1 && len(a) > 0
}

// deadliner is the part of net.Conn the handshake uses to bound its wait.
type deadliner interface{ SetDeadline(time.Time) error }

// clientHandshake sends Hello on rw and waits for the HelloReply. It honours
// ctx by closing rw's deadline (or rw itself) when ctx ends first.
func clientHandshake(ctx context.Context, rw io.ReadWriteCloser, token []byte) error {
	stop := watchCtx(ctx, rw)
	defer stop()
	if err := WriteJSON(rw, FrameHello, Hello{Version: Version, Token: token}); err != nil {
		return fmt.Errorf("agent handshake: %w", ctxErr(ctx, err))
	}
	f, err := ReadFrame(rw, maxHelloFrame)
	if err != nil {
		return fmt.Errorf("agent handshake: read reply: %w", ctxErr(ctx, err))
	}
	var r HelloReply
	if err := DecodeJSON(f, FrameHelloReply, &r); err != nil {
		return fmt.Errorf("agent handshake: %w", err)
	}
	if !r.OK {
		return fmt.Errorf("agent handshake: %w: %s", ErrAuth, r.Error)
	}
	if r.Version != Version {
		return fmt.Errorf("agent handshake: %w: agent speaks version %d, host %d", ErrAuth, r.Version, Version)
	}
	return nil
}

// ServerHandshake reads the host's Hello from rw and answers it. It accepts
// only Version and a token equal to token (constant-time); on refusal it
// tells the host why (never echoing the token) and returns an error wrapping
// ErrAuth. tokenFn is called once per handshake so a rekeyed agent checks
// the current token.
func ServerHandshake(ctx context.Context, rw io.ReadWriteCloser, token func() []byte) error {
	stop := watchCtx(ctx, rw)
	defer stop()
	f, err := ReadFrame(rw, maxHelloFrame)
	if err != nil {
		return fmt.Errorf("agent handshake: read hello: %w", ctxErr(ctx, err))
	}
	var h Hello
	if err := DecodeJSON(f, FrameHello, &h); err != nil {
		_ = WriteJSON(rw, FrameHelloReply, HelloReply{Version: Version, Error: "malformed hello"})
		return fmt.Errorf("agent handshake: %w", err)
	}
	var refuse string
	switch {
	case h.Version != Version:
		refuse = fmt.Sprintf("version mismatch: agent speaks %d, host sent %d", Version, h.Version)
	case !TokenEqual(h.Token, token()):
		refuse = "bad token"
	}
	if refuse != "" {
		_ = WriteJSON(rw, FrameHelloReply, HelloReply{Version: Version, Error: refuse})
		return fmt.Errorf("agent handshake: %w: %s", ErrAuth, refuse)
	}
	if err := WriteJSON(rw, FrameHelloReply, HelloReply{Version: Version, OK: true}); err != nil {
		return fmt.Errorf("agent handshake: %w", err)
	}
	return nil
}

// watchCtx makes blocking I/O on rw return when ctx ends: through a past
// deadline when rw supports deadlines, otherwise by closing rw. The returned
// func stops watching and, if ctx had ended, clears the deadline. It costs
// no goroutine unless ctx ends (context.AfterFunc): it runs on every request
// to the agent.
func watchCtx(ctx context.Context, rw io.ReadWriteCloser) func() {
	d, hasDeadline := rw.(deadliner)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		if hasDeadline {
			_ = d.SetDeadline(time.Unix(1, 0))
		} else {
			_ = rw.Close()
		}
	})
	return func() {
		if stop() {
			return // never fired
		}
		<-fired
		if hasDeadline {
			_ = d.SetDeadline(time.Time{})
		}
	}
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// isClosed reports errors that mean the stream or session went away.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, yamux.ErrSessionShutdown) ||
		errors.Is(err, yamux.ErrStreamClosed) || errors.Is(err, io.ErrClosedPipe)
}
