package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

var testToken = []byte("test-token-0123456789")

type fixture struct {
	srv  *Server
	sock string
	root string
	c    *agentapi.Client
}

// start runs a Server on a Unix socket in a temp dir (the jail's transport)
// and connects a client to it.
func start(t testing.TB, mod func(*Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Token: testToken, FileRoot: root, Version: "test"}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, l) }()
	f := &fixture{srv: srv, sock: sock, root: root}
	f.c = f.dial(t, testToken)
	t.Cleanup(func() {
		_ = f.c.Close()
		cancel()
		<-done
		_ = srv.Close()
	})
	return f
}

func (f *fixture) dial(t testing.TB, token []byte) *agentapi.Client {
	t.Helper()
	c, err := f.connect(token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) connect(token []byte) (*agentapi.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := agentapi.DialUnix(ctx, f.sock)
	if err != nil {
		return nil, err
	}
	return agentapi.Connect(ctx, conn, token)
}

func run(t *testing.T, c *agentapi.Client, spec agentapi.ExecSpec, stdin io.Reader) (string, string, agentapi.ExitStatus) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := c.Exec(ctx, spec, agentapi.ExecIO{Stdin: stdin, Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("exec %v: %v", spec.Argv, err)
	}
	return out.String(), errb.String(), st
}

func TestExecOutputsAndExitCode(t *testing.T) {
	f := start(t, nil)
	out, errs, st := run(t, f.c, agentapi.ExecSpec{Argv: []string{"sh", "-c", "echo out; echo err >&2; pwd; echo $FOO; exit 3"}, Dir: "/tmp", Env: []string{"PATH=/usr/bin:/bin", "FOO=bar"}}, nil)
	if out != "out\n/tmp\nbar\n" || errs != "err\n" || st.Code != 3 {
		t.Fatalf("stdout %q stderr %q status %+v", out, errs, st)
	}
	h, err := f.c.Health(t.Context())
	if err != nil || h.Version != agentapi.Version || h.AgentVersion != "test" {
		t.Fatalf("health = %+v, %v", h, err)
	}
}

func TestExecErrors(t *testing.T) {
	f := start(t, nil)
	ctx := t.Context()
	for _, spec := range []agentapi.ExecSpec{
		{Argv: []string{"/nonexistent/binary"}},
		{Argv: []string{"no-such-command-anywhere"}},
		{Argv: []string{"true"}, Env: []string{"NOEQUALS"}},
		{Argv: []string{"true"}, User: "1:x"},
		{Argv: []string{"true"}, Dir: "/nonexistent-dir"},
	} {
		if _, err := f.c.Exec(ctx, spec, agentapi.ExecIO{}); err == nil {
			t.Errorf("exec %+v succeeded, want an error", spec)
		}
	}
	if _, err := f.c.Exec(ctx, agentapi.ExecSpec{}, agentapi.ExecIO{}); err == nil {
		t.Error("empty argv accepted")
	}
	// The connection still works after refused execs.
	if out, _, _ := run(t, f.c, agentapi.ExecSpec{Argv: []string{"echo", "ok"}}, nil); out != "ok\n" {
		t.Fatalf("after errors: %q", out)
	}
}

// TestExecStream100MB pushes 100 MB through `cat` and checks every byte
// came back, in order.
func TestExecStream100MB(t *testing.T) {
	f := start(t, nil)
	const size = 100 << 20
	src := io.LimitReader(rand.NewChaCha8([32]byte{7}), size)
	in := sha256.New()
	out := sha256.New()
	var n countWriter
	_, errs, st := runHash(t, f.c, io.TeeReader(src, in), io.MultiWriter(out, &n))
	if st.Code != 0 || errs != "" {
		t.Fatalf("cat: status %+v stderr %q", st, errs)
	}
	if n.n != size {
		t.Fatalf("got %d bytes back, sent %d", n.n, size)
	}
	if !bytes.Equal(in.Sum(nil), out.Sum(nil)) {
		t.Fatal("sha256 of output differs from input")
	}
}

func runHash(t *testing.T, c *agentapi.Client, stdin io.Reader, stdout io.Writer) (string, string, agentapi.ExitStatus) {
	var errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	st, err := c.Exec(ctx, agentapi.ExecSpec{Argv: []string{"cat"}}, agentapi.ExecIO{Stdin: stdin, Stdout: stdout, Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	return "", errb.String(), st
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func TestConcurrentExecs(t *testing.T) {
	f := start(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			// Each exec streams its own 1 MB pattern while the others run.
			pattern := bytes.Repeat([]byte{byte('a' + i)}, 1<<20)
			st, err := f.c.Exec(t.Context(), agentapi.ExecSpec{Argv: []string{"sh", "-c", "sleep 0.2; cat; exit " + fmt.Sprint(i)}},
				agentapi.ExecIO{Stdin: bytes.NewReader(pattern), Stdout: &out})
			switch {
			case err != nil:
				errs <- err
			case st.Code != i:
				errs <- fmt.Errorf("exec %d: exit %d", i, st.Code)
			case !bytes.Equal(out.Bytes(), pattern):
				errs <- fmt.Errorf("exec %d: output of %d bytes differs", i, out.Len())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// blockingWriter accepts the first n bytes, then blocks until released.
type blockingWriter struct {
	mu      sync.Mutex
	n       int64
	allow   int64
	release chan struct{}
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	over := b.n+int64(len(p)) > b.allow
	b.n += int64(len(p))
	b.mu.Unlock()
	if over {
		<-b.release
	}
	return len(p), nil
}

// TestBackPressure: a host that stops reading must stall the producer, not
// make memory grow. `cat /dev/zero` writes as fast as it can; the host's
// writer blocks after 1 MiB. Heap use is measured while it is blocked.
func TestBackPressure(t *testing.T) {
	f := start(t, nil)
	bw := &blockingWriter{allow: 1 << 20, release: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := f.c.Start(ctx, agentapi.ExecSpec{Argv: []string{"cat", "/dev/zero"}}, agentapi.ExecIO{Stdout: bw})
	if err != nil {
		t.Fatal(err)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	time.Sleep(300 * time.Millisecond)
	before := heap()
	time.Sleep(1500 * time.Millisecond)
	after := heap()
	t.Logf("heap in use while the reader is blocked: %d KiB, 1.5 s later %d KiB", before>>10, after>>10)
	if after > before+8<<20 {
		t.Errorf("heap grew by %d KiB while the reader was blocked: no back-pressure", (after-before)>>10)
	}
	if err := p.Signal(context.Background(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	close(bw.release)
	st, err := p.Wait()
	if err != nil || st.Signal != int(syscall.SIGKILL) {
		t.Fatalf("after kill: %+v, %v", st, err)
	}
}

func TestCancelKillsExec(t *testing.T) {
	f := start(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	p, err := f.c.Start(ctx, agentapi.ExecSpec{Argv: []string{"sleep", "60"}}, agentapi.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("exec still running 10 s after its context was cancelled")
	}
	waitGone(t, p.PID)
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 100 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d still exists", pid)
}

func TestSignalAndTTY(t *testing.T) {
	f := start(t, nil)
	ctx := t.Context()
	p, err := f.c.Start(ctx, agentapi.ExecSpec{Argv: []string{"sleep", "60"}}, agentapi.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Wait(); err != nil || st.Signal != int(syscall.SIGTERM) || st.Code != -1 {
		t.Fatalf("after SIGTERM: %+v, %v", st, err)
	}

	// TTY: the size set at start, then a resize, are seen by the process.
	inR, inW := io.Pipe()
	var out syncBuffer
	p, err = f.c.Start(ctx, agentapi.ExecSpec{Argv: []string{"sh", "-c", "stty size; read x; stty size; tty"}, TTY: true, Rows: 24, Cols: 80},
		agentapi.ExecIO{Stdin: inR, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "24 80") })
	if err := p.Resize(ctx, 30, 100); err != nil {
		t.Fatal(err)
	}
	_, _ = inW.Write([]byte("go\n"))
	st, err := p.Wait()
	_ = inW.Close()
	if err != nil || st.Code != 0 {
		t.Fatalf("tty exec: %+v, %v; output %q", st, err, out.String())
	}
	if s := out.String(); !strings.Contains(s, "30 100") || !strings.Contains(s, "/dev/pts/") {
		t.Fatalf("tty output %q lacks the resized size or the tty name", s)
	}
	if err := p.Resize(ctx, 1, 1); err == nil {
		t.Error("resize of a finished exec succeeded")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met within 5 s")
}

func TestAuth(t *testing.T) {
	f := start(t, nil)
	if _, err := f.connect([]byte("wrong")); !errors.Is(err, agentapi.ErrAuth) {
		t.Fatalf("bad token: %v, want ErrAuth", err)
	}
	if _, err := f.connect(nil); err == nil {
		t.Fatal("empty token accepted")
	}
	// A host speaking another version is refused, and told why.
	conn, err := agentapi.DialUnix(t.Context(), f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := agentapi.WriteJSON(conn, agentapi.FrameHello, agentapi.Hello{Version: agentapi.Version + 1, Token: testToken}); err != nil {
		t.Fatal(err)
	}
	fr, err := agentapi.ReadFrame(conn, 0)
	if err != nil {
		t.Fatal(err)
	}
	var hr agentapi.HelloReply
	if err := agentapi.DecodeJSON(fr, agentapi.FrameHelloReply, &hr); err != nil {
		t.Fatal(err)
	}
	if hr.OK || !strings.Contains(hr.Error, "version mismatch") {
		t.Fatalf("version mismatch reply = %+v", hr)
	}
	// Rekey: the old token stops working, the new one works.
	if err := f.c.Rekey(t.Context(), []byte("new-token"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.connect(testToken); !errors.Is(err, agentapi.ErrAuth) {
		t.Fatalf("old token after rekey: %v, want ErrAuth", err)
	}
	c2 := f.dial(t, []byte("new-token"))
	defer c2.Close()
	if _, err := c2.Health(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The client is unusable after Close, without panicking.
	_ = c2.Close()
	if _, err := c2.Health(t.Context()); !errors.Is(err, agentapi.ErrClosed) {
		t.Fatalf("health after close: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("empty token accepted")
	}
	if _, err := New(Config{Token: testToken, FileRoot: "/nonexistent-root"}); err == nil {
		t.Error("missing file root accepted")
	}
}

// TestMaxExecsHoldsUnderConcurrency starts many execs at once against a
// limit of 2: no more than 2 may ever run together (the limit used to be
// checked before, and registered after, the start).
func TestMaxExecsHoldsUnderConcurrency(t *testing.T) {
	f := start(t, func(c *Config) { c.MaxExecs = 2 })
	var mu sync.Mutex
	running, peak, refused := 0, 0, 0
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := f.c.Start(context.Background(), agentapi.ExecSpec{Argv: []string{"sleep", "0.3"}}, agentapi.ExecIO{})
			mu.Lock()
			if err != nil {
				refused++
				mu.Unlock()
				return
			}
			running++
			peak = max(peak, running)
			mu.Unlock()
			p.Wait()
			mu.Lock()
			running--
			mu.Unlock()
		}()
	}
	wg.Wait()
	if peak > 2 || refused < 10 {
		t.Fatalf("peak %d concurrent execs, %d refused; want at most 2 running", peak, refused)
	}
}
