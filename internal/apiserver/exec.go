package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/daemon"
)

// MaxBufferedOutput caps each of stdout and stderr in a buffered exec's
// answer; the rest is drained and dropped, and the answer says so.
const MaxBufferedOutput = 1 << 20

// maxControlFrame bounds the frames a client sends on an exec stream.
const maxControlFrame = agentapi.MaxFrame

func wantsUpgrade(r *http.Request) bool {
	return headerHas(r.Header, "Connection", "upgrade") && strings.EqualFold(r.Header.Get("Upgrade"), api.ExecUpgrade)
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	if e := decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	o, e := execOptions(&req)
	if e != nil {
		writeError(w, e)
		return
	}
	id := r.PathValue("id")
	if !wantsUpgrade(r) {
		s.execBuffered(w, r, id, o, req.Stdin)
		return
	}
	if len(req.Stdin) > 0 {
		writeError(w, fieldErr("stdin", "an exec stream sends its input as frames"))
		return
	}
	s.execStream(w, r, id, o)
}

// capWriter keeps the first max bytes and counts the rest.
type capWriter struct {
	buf       bytes.Buffer
	max       int
	truncated bool
}

func (c *capWriter) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(room, len(p))])
	}
	if c.buf.Len()+len(p) > c.max {
		c.truncated = true
	}
	return len(p), nil
}

func (s *Server) execBuffered(w http.ResponseWriter, r *http.Request, id string, o daemon.ExecOptions, stdin []byte) {
	var out, errb = &capWriter{max: MaxBufferedOutput}, &capWriter{max: MaxBufferedOutput}
	e, err := s.m.Exec(r.Context(), id, o, agentapi.ExecIO{Stdin: bytes.NewReader(stdin), Stdout: out, Stderr: errb})
	if err != nil {
		writeError(w, errorFor(err, ""))
		return
	}
	st := e.Wait()
	writeJSON(w, http.StatusOK, api.ExecResult{
		ExitStatus: api.ExitStatus(st), ExecID: e.ID,
		Stdout: out.buf.Bytes(), Stderr: errb.buf.Bytes(), StdoutTruncated: out.truncated, StderrTruncated: errb.truncated,
	})
}

// streamWriter writes frames to the hijacked connection once it exists;
// until then writers wait (output may arrive before the 101 is written).
type streamWriter struct {
	mu    sync.Mutex
	ready chan struct{}
	conn  net.Conn
	dead  bool
}

func (sw *streamWriter) frame(t agentapi.FrameType, p []byte) error {
	<-sw.ready
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.dead {
		return net.ErrClosed
	}
	return agentapi.WriteFrame(sw.conn, t, p)
}

// data returns a writer of t frames.
func (sw *streamWriter) data(t agentapi.FrameType) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		n := 0
		for len(p) > 0 {
			c := p[:min(len(p), agentapi.DataChunk)]
			if err := sw.frame(t, c); err != nil {
				return n, err
			}
			n += len(c)
			p = p[len(c):]
		}
		return n, nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (s *Server) execStream(w http.ResponseWriter, r *http.Request, id string, o daemon.ExecOptions) {
	// The exec outlives the handler's request context only through ctx,
	// which ends when the client goes away.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stdinR, stdinW := io.Pipe()
	sw := &streamWriter{ready: make(chan struct{})}
	e, err := s.m.Exec(ctx, id, o, agentapi.ExecIO{Stdin: stdinR, Stdout: sw.data(agentapi.FrameStdout), Stderr: sw.data(agentapi.FrameStderr)})
	if err != nil {
		writeError(w, errorFor(err, ""))
		return
	}
	defer stdinR.CloseWithError(io.ErrClosedPipe)
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		e.Kill()
		sw.dead = true
		close(sw.ready)
		s.log.Error("exec: hijack", "sandbox", id, "err", err)
		writeError(w, &api.Error{Status: http.StatusInternalServerError, Code: api.CodeInternal, Message: "cannot take over the connection: " + err.Error()})
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	// The 101 and the start frame go out in one write: the client reads
	// both before it sends anything.
	hdr := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + api.ExecUpgrade + "\r\n\r\n"
	started, _ := json.Marshal(api.ExecStarted{ExecID: e.ID, PID: e.PID})
	sw.conn = conn
	_, err = brw.WriteString(hdr)
	if err == nil {
		err = agentapi.WriteFrame(brw, agentapi.FrameResponse, started)
	}
	if err == nil {
		err = brw.Flush()
	}
	if err != nil {
		sw.dead = true
		close(sw.ready)
		e.Kill()
		e.Wait()
		return
	}
	close(sw.ready)

	// Client → process: stdin, EOF, signals and resizes. A connection
	// that ends (or breaks) kills the process.
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		in := newStdinFeed(stdinW)
		defer in.stop()
		hangup := func() {
			stdinW.CloseWithError(io.ErrUnexpectedEOF)
			select {
			case <-e.Done():
			default:
				e.Kill()
			}
		}
		for {
			f, err := agentapi.ReadFrame(brw.Reader, maxControlFrame)
			if err != nil {
				hangup()
				return
			}
			switch f.Type {
			case agentapi.FrameStdin:
				// While the process does not take its input, this
				// loop reads no more frames (back-pressure), so it
				// watches the connection for a hang-up meanwhile.
				if in.feed(conn, f.Payload) == errHungUp {
					hangup()
					return
				}
			case agentapi.FrameStdinEOF:
				stdinW.Close()
			case agentapi.FrameRequest:
				s.control(ctx, e, f.Payload)
			default:
				s.log.Warn("exec stream: unexpected frame from client", "sandbox", id, "type", f.Type.String())
				e.Kill()
				return
			}
		}
	}()
	st := e.Wait()
	b, _ := json.Marshal(api.ExitStatus(st))
	if err := sw.frame(agentapi.FrameExit, b); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("exec stream: write exit", "sandbox", id, "err", err)
	}
	sw.mu.Lock()
	sw.dead = true
	sw.mu.Unlock()
	// Let the client read the exit frame and hang up before the
	// connection closes.
	if uc, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = uc.CloseWrite()
	}
	select {
	case <-readerDone:
	case <-time.After(5 * time.Second):
	}
}

// control applies an ExecControl frame.
func (s *Server) control(ctx context.Context, e *daemon.Exec, payload []byte) {
	var c api.ExecControl
	if err := json.Unmarshal(payload, &c); err != nil {
		s.log.Warn("exec stream: bad control frame", "err", err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c.Signal != 0 {
		if err := e.Signal(cctx, syscall.Signal(c.Signal)); err != nil {
			s.log.Debug("exec stream: signal", "err", err)
		}
	}
	if c.Resize != nil {
		if err := e.Resize(cctx, c.Resize.Rows, c.Resize.Cols); err != nil {
			s.log.Debug("exec stream: resize", "err", err)
		}
	}
}

// errHungUp reports a client that hung up while its process's input was full.
var errHungUp = errors.New("client hung up")

// stdinFeed writes an exec stream's input to the process's stdin pipe on
// a goroutine of its own, so that the frame reader, while a write waits
// for the process, can watch the connection.
type stdinFeed struct {
	w     *io.PipeWriter
	reqs  chan []byte
	acks  chan error
	timer *time.Timer
}

func newStdinFeed(w *io.PipeWriter) *stdinFeed {
	f := &stdinFeed{w: w, reqs: make(chan []byte), acks: make(chan error, 1), timer: time.NewTimer(time.Hour)}
	f.timer.Stop()
	go func() {
		for p := range f.reqs {
			_, err := w.Write(p)
			f.acks <- err
		}
	}()
	return f
}

// stop ends the writer goroutine (after a write under way, which a
// closed pipe ends).
func (f *stdinFeed) stop() { close(f.reqs) }

// feed hands p to the process. A write error (the process closed its
// input) drops p, as before. While the write waits, it polls conn for a
// hang-up and returns errHungUp when the client went away.
func (f *stdinFeed) feed(conn net.Conn, p []byte) error {
	f.reqs <- p
	f.timer.Reset(50 * time.Millisecond)
	select {
	case <-f.acks:
		if !f.timer.Stop() {
			<-f.timer.C
		}
		return nil
	case <-f.timer.C:
	}
	for {
		select {
		case <-f.acks:
			return nil
		default:
		}
		if peerClosed(conn, 200*time.Millisecond) {
			f.w.CloseWithError(io.ErrClosedPipe) // ends the waiting write
			<-f.acks
			return errHungUp
		}
	}
}

// peerClosed waits up to timeout for the peer of conn to shut down or
// close its end (POLLRDHUP), without reading from conn. A connection
// without a descriptor never reports one.
func peerClosed(conn net.Conn, timeout time.Duration) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		time.Sleep(timeout)
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		time.Sleep(timeout)
		return false
	}
	closed := false
	_ = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		n, err := unix.Poll(fds, int(timeout/time.Millisecond))
		closed = err == nil && n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
	})
	return closed
}
