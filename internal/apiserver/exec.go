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
	if u := r.Header.Get("Upgrade"); u != "" && headerHas(r.Header, "Connection", "upgrade") && !wantsUpgrade(r) {
		writeError(w, fieldErr("Upgrade", "exec stream protocol %q is not %s", u, api.ExecUpgrade))
		return
	}
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
	started, _ := json.Marshal(api.ExecStarted{ExecID: e.ID, PID: e.PID, StdinWindow: api.ExecStdinWindow})
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

	// Client → process: stdin, EOF, signals and resizes. The reader
	// never waits for the process: input goes to a queue bounded by the
	// window the client keeps to, and a writer hands it on, so signals
	// and resizes apply at once. A connection that ends (or breaks)
	// kills the process.
	q := newStdinQueue()
	go q.pump(stdinW, sw)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer q.close()
		hangup := func() {
			q.close() // before the pipe closes: no grant for dropped input
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
				if !q.put(f.Payload) {
					s.log.Warn("exec stream: client sent stdin over its window", "sandbox", id, "window", api.ExecStdinWindow)
					hangup()
					return
				}
			case agentapi.FrameStdinEOF:
				q.putEOF()
			case agentapi.FrameRequest:
				s.control(ctx, e, f.Payload)
			default:
				s.log.Warn("exec stream: unexpected frame from client", "sandbox", id, "type", f.Type.String())
				hangup()
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

// stdinQueue holds the input an exec stream's client sent that the
// process has not taken yet. The client keeps to api.ExecStdinWindow bytes
// not yet granted back, so the queue never holds more than that.
type stdinQueue struct {
	mu     sync.Mutex
	chunks [][]byte
	held   int  // bytes received and not yet granted back
	eof    bool // stdin-eof received: after the chunks, close the input
	closed bool // the stream ended: drop the rest
	wake   chan struct{}
}

func newStdinQueue() *stdinQueue { return &stdinQueue{wake: make(chan struct{}, 1)} }

func (q *stdinQueue) notify() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// put queues p; it reports false when p would take the queue over the
// window (a client breaking the protocol). Input after stdin-eof is
// dropped, as a closed pipe drops it.
func (q *stdinQueue) put(p []byte) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.held+len(p) > api.ExecStdinWindow {
		return false
	}
	if q.eof || q.closed || len(p) == 0 {
		return true
	}
	q.held += len(p)
	// Small frames (keystrokes) join the last chunk, so the number of
	// chunks stays bounded along with their bytes.
	if n := len(q.chunks); n > 0 && len(q.chunks[n-1])+len(p) <= agentapi.DataChunk {
		q.chunks[n-1] = append(q.chunks[n-1], p...)
	} else {
		q.chunks = append(q.chunks, p)
	}
	q.notify()
	return true
}

// putEOF queues the end of the input, after the chunks queued before it.
func (q *stdinQueue) putEOF() {
	q.mu.Lock()
	q.eof = true
	q.mu.Unlock()
	q.notify()
}

// close ends the queue: pump stops at its next chunk.
func (q *stdinQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.notify()
}

// next waits for the next chunk; eof reports the end of the input, and
// ok false a closed queue.
func (q *stdinQueue) next() (p []byte, eof, ok bool) {
	for {
		q.mu.Lock()
		switch {
		case q.closed:
			q.mu.Unlock()
			return nil, false, false
		case len(q.chunks) > 0:
			p = q.chunks[0]
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
			q.mu.Unlock()
			return p, false, true
		case q.eof:
			q.mu.Unlock()
			return nil, true, true
		}
		q.mu.Unlock()
		<-q.wake
	}
}

// release frees n bytes of the window; it reports false once the queue
// is closed.
func (q *stdinQueue) release(n int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.held -= n
	return !q.closed
}

// pump writes the queued input to the process's stdin pipe in order,
// closes it at stdin-eof, and grants each chunk back to the client once
// the process took it (or its input was closed, which drops the chunk).
func (q *stdinQueue) pump(w *io.PipeWriter, sw *streamWriter) {
	for {
		p, eof, ok := q.next()
		if !ok {
			return
		}
		if eof {
			w.Close()
			return
		}
		_, _ = w.Write(p) // an error means the process closed its input: p is dropped
		if !q.release(len(p)) {
			return // the stream ended: grant nothing more
		}
		b, err := json.Marshal(api.ExecWindow{Stdin: len(p)})
		if err != nil {
			return
		}
		if err := sw.frame(agentapi.FrameResponse, b); err != nil {
			return // the connection is gone; the reader sees it too
		}
	}
}
