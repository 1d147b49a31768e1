package agentapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// Client is the host side of one agent connection. Its methods are safe for
// concurrent use; each operation runs on its own stream. The zero Client is
// valid and returns ErrNotConnected from every method.
type Client struct {
	mu     sync.Mutex
	sess   *yamux.Session
	closed bool
	// broken is why the client ended the session itself (the agent
	// broke the protocol); nil otherwise.
	broken error
}

// Connect performs the handshake on conn with token and starts the yamux
// session. It takes ownership of conn: on error conn is closed. conn may be
// any byte stream (a Unix socket, a virtio-serial chardev socket, a vsock
// connection after DialFirecrackerVsock).
func Connect(ctx context.Context, conn io.ReadWriteCloser, token []byte) (*Client, error) {
	if len(token) == 0 {
		_ = conn.Close()
		return nil, fmt.Errorf("connect to agent: token: must not be empty")
	}
	if err := clientHandshake(ctx, conn, token); err != nil {
		_ = conn.Close()
		return nil, err
	}
	sess, err := yamux.Client(conn, MuxConfig())
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connect to agent: start session: %w", err)
	}
	c := &Client{sess: sess}
	go c.refuseStreams()
	return c, nil
}

// refuseStreams ends the session when the agent opens a stream: the
// protocol has none in that direction, and yamux would otherwise keep up
// to AcceptBacklog unaccepted streams, each with a full receive window
// filled by the guest, in the host's memory for the session's life.
func (c *Client) refuseStreams() {
	st, err := c.sess.AcceptStream()
	if err != nil {
		return // the session ended
	}
	c.mu.Lock()
	c.broken = fmt.Errorf("%w: it opened stream %d towards the host; session closed", ErrProtocol, st.StreamID())
	c.mu.Unlock()
	_ = c.sess.Close()
}

// Close ends the session and the underlying connection. Running execs are
// killed by the agent when their session ends.
func (c *Client) Close() error {
	if c == nil {
		return ErrNotConnected
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.sess == nil {
		return nil
	}
	return c.sess.Close()
}

// Done is closed when the session ends (Close, or the connection failed).
// It is closed already on a Client that was never connected.
func (c *Client) Done() <-chan struct{} {
	if c != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.sess != nil {
			return c.sess.CloseChan()
		}
	}
	ch := make(chan struct{})
	close(ch)
	return ch
}

func (c *Client) open(ctx context.Context, op Op) (*yamux.Stream, error) {
	if c == nil {
		return nil, fmt.Errorf("agent %s: %w", op, ErrNotConnected)
	}
	c.mu.Lock()
	sess, closed, broken := c.sess, c.closed, c.broken
	c.mu.Unlock()
	switch {
	case broken != nil:
		return nil, fmt.Errorf("agent %s: %w", op, broken)
	case closed:
		return nil, fmt.Errorf("agent %s: %w", op, ErrClosed)
	case sess == nil:
		return nil, fmt.Errorf("agent %s: %w", op, ErrNotConnected)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("agent %s: %w", op, err)
	}
	st, err := sess.OpenStream()
	if err != nil {
		if sess.IsClosed() {
			return nil, fmt.Errorf("agent %s: open stream: %w: %w", op, ErrClosed, err)
		}
		return nil, fmt.Errorf("agent %s: open stream: %w", op, err)
	}
	return st, nil
}

// call runs a request whose whole answer is one Response.
func (c *Client) call(ctx context.Context, req Request) (*Response, error) {
	st, err := c.open(ctx, req.Op)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	stop := watchCtx(ctx, st)
	defer stop()
	if err := WriteJSON(st, FrameRequest, req); err != nil {
		// yamux's Write can report ErrSessionShutdown for a frame that
		// did go out: it waits for the send and for the session's end
		// in one select, and a peer that answers and then closes the
		// session (Shutdown) makes both ready at once. The answer, if
		// the agent sent one, was buffered before the session ended.
		if errors.Is(err, yamux.ErrSessionShutdown) {
			if resp, rerr := readResponse(ctx, st, req.Op); rerr == nil {
				return resp, nil
			}
		}
		return nil, fmt.Errorf("agent %s: %w", req.Op, ctxErr(ctx, err))
	}
	return readResponse(ctx, st, req.Op)
}

func readResponse(ctx context.Context, r io.Reader, op Op) (*Response, error) {
	f, err := ReadFrame(r, MaxFrame)
	if err != nil {
		return nil, fmt.Errorf("agent %s: read response: %w", op, ctxErr(ctx, err))
	}
	var resp Response
	if err := DecodeJSON(f, FrameResponse, &resp); err != nil {
		return nil, fmt.Errorf("agent %s: %w", op, err)
	}
	if resp.Error != "" {
		return nil, &RemoteError{Op: op, Code: resp.Code, Msg: resp.Error}
	}
	return &resp, nil
}

// Health asks the agent for its self-report.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	resp, err := c.call(ctx, Request{Op: OpHealth})
	if err != nil {
		return nil, err
	}
	if resp.Health == nil {
		return nil, fmt.Errorf("agent health: %w: response without health", ErrFrame)
	}
	return resp.Health, nil
}

// Shutdown asks the agent to power the sandbox off (a VM) or exit (a jail's
// init). It returns once the agent has acknowledged.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.call(ctx, Request{Op: OpShutdown})
	return err
}

// Rekey replaces the agent's token and mixes entropy into the guest's
// random pool. New connections must use the new token.
func (c *Client) Rekey(ctx context.Context, token, entropy []byte) error {
	if len(token) == 0 {
		return fmt.Errorf("agent rekey: token: must not be empty")
	}
	_, err := c.call(ctx, Request{Op: OpRekey, Rekey: &RekeySpec{Token: string(token), Entropy: entropy}})
	return err
}

// Stat describes path (not following a final symlink).
func (c *Client) Stat(ctx context.Context, path string) (*FileInfo, error) {
	resp, err := c.call(ctx, Request{Op: OpStat, File: &FileSpec{Path: path}})
	if err != nil {
		return nil, err
	}
	if resp.Info == nil {
		return nil, fmt.Errorf("agent stat: %w: response without info", ErrFrame)
	}
	return resp.Info, nil
}

// List returns the entries of directory path.
func (c *Client) List(ctx context.Context, path string) ([]FileInfo, error) {
	resp, err := c.call(ctx, Request{Op: OpList, File: &FileSpec{Path: path}})
	if err != nil {
		return nil, err
	}
	return resp.List, nil
}

// Mkdir creates directory path with mode (0 means 0755), and its missing
// parents when parents is set.
func (c *Client) Mkdir(ctx context.Context, path string, mode uint32, parents bool) error {
	_, err := c.call(ctx, Request{Op: OpMkdir, File: &FileSpec{Path: path, Mode: mode, Parents: parents}})
	return err
}

// Remove deletes path; a non-empty directory only when recursive is set.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := c.call(ctx, Request{Op: OpRemove, File: &FileSpec{Path: path, Recursive: recursive}})
	return err
}

// WriteFile uploads r to path with mode (0 means 0644). The agent stores the
// file under a temporary name and renames it into place only when the whole
// upload arrived within limit bytes (0 means the agent's limit), so a failed
// upload leaves nothing behind. It returns the bytes stored.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, mode uint32, limit int64) (int64, error) {
	st, err := c.open(ctx, OpWrite)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	stop := watchCtx(ctx, st)
	defer stop()
	if err := WriteJSON(st, FrameRequest, Request{Op: OpWrite, File: &FileSpec{Path: path, Mode: mode, Limit: limit}}); err != nil {
		return 0, fmt.Errorf("agent write %s: %w", path, ctxErr(ctx, err))
	}
	// The agent may refuse early (bad path, over the limit) and stop
	// reading; its answer then unblocks the sender through a deadline.
	sendCh := make(chan error, 1)
	go func() { sendCh <- sendData(st, FrameStdin, FrameStdinEOF, r) }()
	resp, err := readResponse(ctx, st, OpWrite)
	if err != nil {
		_ = st.SetWriteDeadline(time.Unix(1, 0))
		<-sendCh
		return 0, err
	}
	if sendErr := <-sendCh; sendErr != nil {
		return 0, fmt.Errorf("agent write %s: %w", path, ctxErr(ctx, sendErr))
	}
	return resp.Written, nil
}

// sendData copies r to w as data frames, then an EOF frame.
func sendData(w io.Writer, data, eof FrameType, r io.Reader) error {
	if r != nil {
		buf := make([]byte, DataChunk)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if werr := WriteFrame(w, data, buf[:n]); werr != nil {
					return werr
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("read input: %w", err)
			}
		}
	}
	return WriteFrame(w, eof, nil)
}

// ReadFile downloads path into w, refusing files over limit bytes (0 means
// the agent's limit). It returns the bytes copied.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer, limit int64) (int64, error) {
	st, err := c.open(ctx, OpRead)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	stop := watchCtx(ctx, st)
	defer stop()
	if err := WriteJSON(st, FrameRequest, Request{Op: OpRead, File: &FileSpec{Path: path, Limit: limit}}); err != nil {
		return 0, fmt.Errorf("agent read %s: %w", path, ctxErr(ctx, err))
	}
	resp, err := readResponse(ctx, st, OpRead)
	if err != nil {
		return 0, err
	}
	var n int64
	for {
		f, err := ReadFrame(st, MaxFrame)
		if err != nil {
			return n, fmt.Errorf("agent read %s: %w", path, ctxErr(ctx, err))
		}
		switch f.Type {
		case FrameStdout:
			if limit > 0 && n+int64(len(f.Payload)) > limit {
				return n, fmt.Errorf("agent read %s: %w (%d bytes)", path, ErrTooLarge, limit)
			}
			if _, err := w.Write(f.Payload); err != nil {
				return n, fmt.Errorf("agent read %s: write output: %w", path, err)
			}
			n += int64(len(f.Payload))
		case FrameEOF:
			if resp.Info != nil && resp.Info.Size != n {
				return n, fmt.Errorf("agent read %s: got %d bytes, agent announced %d", path, n, resp.Info.Size)
			}
			return n, nil
		case FrameError:
			var e Response
			if err := DecodeJSON(Frame{Type: FrameResponse, Payload: f.Payload}, FrameResponse, &e); err != nil {
				return n, fmt.Errorf("agent read %s: %w", path, err)
			}
			return n, &RemoteError{Op: OpRead, Code: e.Code, Msg: e.Error}
		default:
			return n, fmt.Errorf("agent read %s: unexpected %s frame: %w", path, f.Type, ErrFrame)
		}
	}
}

// ExecIO wires a process's standard streams. Nil Stdin means empty input;
// nil Stdout or Stderr discards that stream. With a TTY the terminal's
// output arrives on Stdout only.
type ExecIO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Process is a running exec.
type Process struct {
	c      *Client
	ID     string
	PID    int
	st     *yamux.Stream
	done   chan struct{}
	status ExitStatus
	err    error
}

// Exec runs spec to completion and returns its exit status. Cancelling ctx
// kills the process.
func (c *Client) Exec(ctx context.Context, spec ExecSpec, stdio ExecIO) (ExitStatus, error) {
	p, err := c.Start(ctx, spec, stdio)
	if err != nil {
		return ExitStatus{}, err
	}
	return p.Wait()
}

// Start starts spec and streams its input and output in the background.
// Cancelling ctx kills the process; Wait reports how it ended.
func (c *Client) Start(ctx context.Context, spec ExecSpec, stdio ExecIO) (*Process, error) {
	if len(spec.Argv) == 0 {
		return nil, fmt.Errorf("agent exec: argv: must not be empty")
	}
	st, err := c.open(ctx, OpExec)
	if err != nil {
		return nil, err
	}
	stop := watchCtx(ctx, st)
	if err := WriteJSON(st, FrameRequest, Request{Op: OpExec, Exec: &spec}); err != nil {
		stop()
		_ = st.Close()
		return nil, fmt.Errorf("agent exec %s: %w", spec.Argv[0], ctxErr(ctx, err))
	}
	resp, err := readResponse(ctx, st, OpExec)
	stop()
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	p := &Process{c: c, ID: resp.ExecID, PID: resp.PID, st: st, done: make(chan struct{})}
	go p.run(ctx, stdio)
	return p, nil
}

func (p *Process) run(ctx context.Context, stdio ExecIO) {
	defer close(p.done)
	defer p.st.Close()
	stopKill := context.AfterFunc(ctx, func() {
		kctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = p.Signal(kctx, syscall.SIGKILL)
		cancel()
		_ = p.st.SetDeadline(time.Unix(1, 0))
	})
	defer stopKill()
	go func() {
		// Errors here end the exec stream from the read side too.
		if err := sendData(p.st, FrameStdin, FrameStdinEOF, stdio.Stdin); err != nil && !isClosed(err) {
			_ = p.st.SetDeadline(time.Unix(1, 0))
		}
	}()
	for {
		f, err := ReadFrame(p.st, MaxFrame)
		if err != nil {
			p.err = fmt.Errorf("agent exec %s: %w", p.ID, ctxErr(ctx, err))
			return
		}
		var w io.Writer
		switch f.Type {
		case FrameStdout:
			w = stdio.Stdout
		case FrameStderr:
			w = stdio.Stderr
		case FrameExit:
			if err := DecodeJSON(f, FrameExit, &p.status); err != nil {
				p.err = fmt.Errorf("agent exec %s: %w", p.ID, err)
			} else if p.status.Error != "" {
				p.err = fmt.Errorf("agent exec %s: %s", p.ID, p.status.Error)
			}
			return
		default:
			p.err = fmt.Errorf("agent exec %s: unexpected %s frame: %w", p.ID, f.Type, ErrFrame)
			return
		}
		if w != nil {
			if _, err := w.Write(f.Payload); err != nil {
				p.err = fmt.Errorf("agent exec %s: write output: %w", p.ID, err)
				kctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = p.Signal(kctx, syscall.SIGKILL)
				cancel()
				return
			}
		}
	}
}

// Wait blocks until the process has exited and its output has been
// delivered, and returns its exit status.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

// Done is closed when Wait would return.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Process) Signal(ctx context.Context, sig syscall.Signal) error {
	_, err := p.c.call(ctx, Request{Op: OpSignal, Signal: &SignalSpec{ExecID: p.ID, Signal: int(sig)}})
	return err
}

// Resize sets the terminal size of a TTY process.
func (p *Process) Resize(ctx context.Context, rows, cols uint16) error {
	_, err := p.c.call(ctx, Request{Op: OpResize, Resize: &ResizeSpec{ExecID: p.ID, Rows: rows, Cols: cols}})
	return err
}
