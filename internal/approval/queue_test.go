package approval

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitPending polls until n requests are pending.
func waitPending(t *testing.T, q *Queue, n int) []Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v uint64
	for {
		l, ver := q.List()
		if len(l) == n {
			return l
		}
		if ctx.Err() != nil {
			t.Fatalf("%d pending, want %d", len(l), n)
		}
		v = q.WaitChange(ctx, ver)
		_ = v
	}
}

func TestQueueOutcomes(t *testing.T) {
	q := NewQueue()
	type res struct {
		req Request
		out Outcome
	}
	hold := func(ctx context.Context, timeout time.Duration) chan res {
		ch := make(chan res, 1)
		go func() {
			r, o := q.Hold(ctx, Request{Server: "s", Tool: "s__t"}, timeout)
			ch <- res{r, o}
		}()
		return ch
	}

	t.Run("approve", func(t *testing.T) {
		ch := hold(context.Background(), time.Minute)
		p := waitPending(t, q, 1)[0]
		if err := q.Decide(p.ID, Decision{Approve: true, By: "uid 7"}); err != nil {
			t.Fatal(err)
		}
		r := <-ch
		if !r.out.Approved() || r.out.By != "uid 7" || r.req.ID != p.ID {
			t.Fatalf("%+v", r)
		}
		if err := q.Decide(p.ID, Decision{Approve: true}); !errors.Is(err, ErrNotPending) {
			t.Fatalf("second decision: %v", err)
		}
	})
	t.Run("deny", func(t *testing.T) {
		ch := hold(context.Background(), time.Minute)
		p := waitPending(t, q, 1)[0]
		q.Decide(p.ID, Decision{Approve: false, Note: "no"})
		if r := <-ch; r.out.Result != OutcomeDenied || r.out.Note != "no" {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("timeout denies", func(t *testing.T) {
		r := <-hold(context.Background(), 50*time.Millisecond)
		if r.out.Result != OutcomeTimeout || r.out.Approved() {
			t.Fatalf("%+v", r)
		}
		if l, _ := q.List(); len(l) != 0 {
			t.Fatalf("timed-out request still pending")
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		ch := hold(ctx, time.Minute)
		waitPending(t, q, 1)
		cancel()
		if r := <-ch; r.out.Result != OutcomeCancelled {
			t.Fatalf("%+v", r)
		}
	})
	t.Run("unknown id", func(t *testing.T) {
		if err := q.Decide("nope", Decision{Approve: true}); !errors.Is(err, ErrNotPending) {
			t.Fatal(err)
		}
	})
}

func TestAPIOverUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "ica") // short path: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(SocketDir(dir), "gw.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(sock)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v", fi.Mode().Perm())
	}
	if _, err := Listen(sock); err == nil {
		t.Fatal("second listener on a live socket")
	}
	q := NewQueue()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, q, slog.New(slog.NewTextHandler(io.Discard, nil))) }()

	c := NewClient(sock)
	outc := make(chan Outcome, 1)
	go func() {
		_, o := q.Hold(context.Background(), Request{Server: "fs", Tool: "fs__write_file", Card: Card{Kind: CardCommand, Command: "ls"}}, time.Minute)
		outc <- o
	}()
	// Long poll sees the new request.
	var pending []Request
	var ver uint64
	for len(pending) == 0 {
		pending, ver, err = c.List(ctx, ver, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Get(ctx, pending[0].ID)
	if err != nil || got.Card.Command != "ls" {
		t.Fatalf("get: %+v %v", got, err)
	}
	d, err := c.Decide(ctx, pending[0].ID, true, "fine")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("uid %d", os.Getuid())
	if len(d.By) < len(want) || d.By[:len(want)] != want {
		t.Errorf("approver %q, want it to start with %q", d.By, want)
	}
	o := <-outc
	if !o.Approved() || o.By != d.By {
		t.Fatalf("outcome %+v", o)
	}
	if _, err := c.Decide(ctx, pending[0].ID, true, ""); !errors.Is(err, ErrNotPending) {
		t.Fatalf("decide twice: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ln.Close()
	// A stale socket is replaced by the next gateway.
	ln2, err := Listen(sock)
	if err != nil {
		t.Fatalf("relisten over stale socket: %v", err)
	}
	ln2.Close()
}

// TestZeroClient: a Client not made by NewClient used to panic on its nil
// http.Client. The zero value now returns an error, and a Client with
// only Socket set works.
func TestZeroClient(t *testing.T) {
	ctx := context.Background()
	var zero Client
	if _, _, err := zero.List(ctx, 0, 0); err == nil || !strings.Contains(err.Error(), "no socket") {
		t.Errorf("zero Client List: %v, want an error about the socket", err)
	}
	if _, err := zero.Get(ctx, "x"); err == nil {
		t.Error("zero Client Get succeeded")
	}
	if _, err := zero.Decide(ctx, "x", true, ""); err == nil {
		t.Error("zero Client Decide succeeded")
	}
	var nilc *Client
	if _, _, err := nilc.List(ctx, 0, 0); err == nil {
		t.Error("nil *Client List succeeded")
	}

	dir, err := os.MkdirTemp("", "icz")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "gw.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Serve(sctx, ln, NewQueue(), slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	c := Client{Socket: sock}
	if pending, _, err := c.List(ctx, 0, 0); err != nil || len(pending) != 0 {
		t.Errorf("Client{Socket} List: %v %v", pending, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
