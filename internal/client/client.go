// Package client is the typed Go client of the daemon's HTTP API
// (internal/api): it speaks to `ironclaw serve` over its Unix socket, or
// over TCP with a bearer token, and is what the CLI uses.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
)

// Config says where the daemon is.
type Config struct {
	// Socket is the daemon's Unix socket. Either Socket or URL.
	Socket string
	// URL is the daemon's TCP address ("http://127.0.0.1:7878").
	URL string
	// Token is the bearer token for URL.
	Token string
	// Transport, when set, wraps the HTTP transport (tests validate
	// traffic against the OpenAPI document with it).
	Transport func(http.RoundTripper) http.RoundTripper
}

// Client talks to one daemon. It is safe for concurrent use.
type Client struct {
	hc    *http.Client
	base  string
	token string
}

// New returns a client for cfg. It does not connect.
func New(cfg Config) (*Client, error) {
	t := &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	c := &Client{token: cfg.Token}
	switch {
	case cfg.Socket != "" && cfg.URL != "":
		return nil, errors.New("client: give a socket or a URL, not both")
	case cfg.Socket != "":
		sock := cfg.Socket
		t.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		c.base = "http://ironclaw"
	case cfg.URL != "":
		u, err := url.Parse(cfg.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("client: URL %q: want http://HOST:PORT", cfg.URL)
		}
		c.base = strings.TrimSuffix(cfg.URL, "/")
	default:
		return nil, errors.New("client: no socket or URL")
	}
	var rt http.RoundTripper = t
	if cfg.Transport != nil {
		rt = cfg.Transport(rt)
	}
	c.hc = &http.Client{Transport: rt}
	return c, nil
}

// Reachable reports whether a daemon answers /healthz on the socket within
// timeout.
func Reachable(ctx context.Context, socket string, timeout time.Duration) bool {
	c, err := New(Config{Socket: socket})
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = c.Health(ctx)
	c.hc.CloseIdleConnections()
	return err == nil
}

// IsUnreachable reports whether err is a failure to connect to the
// daemon: the request never reached it (no socket, nobody listening).
func IsUnreachable(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Error is an API error with its HTTP status.
type Error = api.Error

// IsCode reports whether err is an API error with code.
func IsCode(err error, code string) bool {
	var e *api.Error
	return errors.As(err, &e) && e.Code == code
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// do sends a JSON request (in may be nil) and decodes a JSON answer into
// out (may be nil), turning error answers into *api.Error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb api.ErrorBody
	if err := json.Unmarshal(b, &eb); err != nil || eb.Error == nil {
		return &api.Error{Status: resp.StatusCode, Code: api.CodeInternal, Message: fmt.Sprintf("HTTP %s: %s", resp.Status, strings.TrimSpace(string(b)))}
	}
	eb.Error.Status = resp.StatusCode
	return eb.Error
}

func sbPath(id string, rest ...string) string {
	return "/v1/sandboxes/" + url.PathEscape(id) + strings.Join(rest, "")
}

// Health checks the daemon.
func (c *Client) Health(ctx context.Context) (*api.Health, error) {
	var h api.Health
	return &h, c.do(ctx, "GET", "/healthz", nil, nil, &h)
}

// Create makes a sandbox.
func (c *Client) Create(ctx context.Context, req api.CreateRequest) (*api.Sandbox, error) {
	var s api.Sandbox
	return &s, c.do(ctx, "POST", "/v1/sandboxes", nil, req, &s)
}

// List returns the sandboxes carrying every label in labels.
func (c *Client) List(ctx context.Context, labels map[string]string) ([]api.Sandbox, error) {
	q := url.Values{}
	for k, v := range labels {
		q.Add("label", k+"="+v)
	}
	var l api.SandboxList
	return l.Sandboxes, c.do(ctx, "GET", "/v1/sandboxes", q, nil, &l)
}

// Get describes the sandbox id.
func (c *Client) Get(ctx context.Context, id string) (*api.Sandbox, error) {
	var s api.Sandbox
	return &s, c.do(ctx, "GET", sbPath(id), nil, nil, &s)
}

// Destroy destroys the sandbox id.
func (c *Client) Destroy(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", sbPath(id), nil, nil, nil)
}

// UpdateNetwork replaces the allow rules of the sandbox id.
func (c *Client) UpdateNetwork(ctx context.Context, id string, allow []string) (*api.Sandbox, error) {
	if allow == nil {
		allow = []string{}
	}
	var s api.Sandbox
	return &s, c.do(ctx, "PUT", sbPath(id, "/network"), nil, api.NetworkUpdate{Allow: allow}, &s)
}

// Logs returns the newest limit entries of the sandbox's log.
func (c *Client) Logs(ctx context.Context, id string, limit int) ([]api.Event, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var l api.EventList
	return l.Entries, c.do(ctx, "GET", sbPath(id, "/logs"), q, nil, &l)
}

// EventFilter selects events to follow.
type EventFilter struct {
	Sandbox string
	Types   []string
	// Since replays stored events after this sequence number first; -1
	// (or a zero filter) follows live events only.
	Since int64
}

// Events follows the event stream until ctx ends, fn returns an error, or
// the daemon ends the stream (io.EOF).
func (c *Client) Events(ctx context.Context, f EventFilter, fn func(api.Event) error) error {
	q := url.Values{}
	if f.Sandbox != "" {
		q.Set("sandbox", f.Sandbox)
	}
	for _, t := range f.Types {
		q.Add("type", t)
	}
	if f.Since >= 0 {
		q.Set("since", strconv.FormatInt(f.Since, 10))
	}
	req, err := c.newRequest(ctx, "GET", "/v1/events", q, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return readError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev api.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("events: decode: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("events: %w", err)
	}
	return io.EOF
}

// Upload stores r at path in the sandbox id with mode (0: 0644).
func (c *Client) Upload(ctx context.Context, id, path string, r io.Reader, mode uint32) (int64, error) {
	q := url.Values{"path": {path}}
	if mode != 0 {
		q.Set("mode", strconv.FormatUint(uint64(mode), 8))
	}
	req, err := c.newRequest(ctx, "PUT", sbPath(id, "/files"), q, r)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("upload %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, readError(resp)
	}
	var wr api.Written
	if err := json.NewDecoder(resp.Body).Decode(&wr); err != nil {
		return 0, fmt.Errorf("upload %s: decode answer: %w", path, err)
	}
	return wr.Bytes, nil
}

// Download copies the file at path in the sandbox id to w.
func (c *Client) Download(ctx context.Context, id, path string, w io.Writer) (int64, error) {
	req, err := c.newRequest(ctx, "GET", sbPath(id, "/files"), url.Values{"path": {path}}, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, readError(resp)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("download %s: %w", path, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("download %s: got %d of %d bytes", path, n, resp.ContentLength)
	}
	return n, nil
}

// Stat describes path in the sandbox id.
func (c *Client) Stat(ctx context.Context, id, path string) (*api.FileInfo, error) {
	var fi api.FileInfo
	return &fi, c.do(ctx, "GET", sbPath(id, "/files/stat"), url.Values{"path": {path}}, nil, &fi)
}

// ListDir lists directory path in the sandbox id.
func (c *Client) ListDir(ctx context.Context, id, path string) ([]api.FileInfo, error) {
	var l api.FileList
	return l.Entries, c.do(ctx, "GET", sbPath(id, "/files/list"), url.Values{"path": {path}}, nil, &l)
}

// Mkdir creates directory path in the sandbox id.
func (c *Client) Mkdir(ctx context.Context, id, path string, mode uint32, parents bool) error {
	return c.do(ctx, "POST", sbPath(id, "/files/mkdir"), nil, api.MkdirRequest{Path: path, Mode: mode, Parents: parents}, nil)
}

// Remove deletes path in the sandbox id.
func (c *Client) Remove(ctx context.Context, id, path string, recursive bool) error {
	q := url.Values{"path": {path}}
	if recursive {
		q.Set("recursive", "true")
	}
	return c.do(ctx, "DELETE", sbPath(id, "/files"), q, nil, nil)
}

// ExecBuffered runs req to completion with its whole input in req.Stdin and
// returns its (capped) output.
func (c *Client) ExecBuffered(ctx context.Context, id string, req api.ExecRequest) (*api.ExecResult, error) {
	var r api.ExecResult
	return &r, c.do(ctx, "POST", sbPath(id, "/exec"), nil, req, &r)
}

// ExecIO wires an exec stream: nil Stdin is empty input, nil Stdout or
// Stderr discards.
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exec is a running exec stream.
type Exec struct {
	ID  string
	PID int

	conn   io.ReadWriteCloser
	wmu    sync.Mutex
	done   chan struct{}
	window *stdinWindow
	status api.ExitStatus
	err    error
}

// Exec starts req in the sandbox id over an upgraded connection and
// streams stdio both ways until the process ends. Cancelling ctx closes
// the connection, which kills the process.
func (c *Client) Exec(ctx context.Context, id string, req api.ExecRequest, stdio ExecIO) (*Exec, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode exec request: %w", err)
	}
	hreq, err := c.newRequest(ctx, "POST", sbPath(id, "/exec"), nil, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", api.ExecUpgrade)
	resp, err := c.hc.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("exec: the connection was not upgraded")
	}
	f, err := agentapi.ReadFrame(conn, agentapi.MaxFrame)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("exec: read start frame: %w", err)
	}
	var st api.ExecStarted
	if f.Type != agentapi.FrameResponse || json.Unmarshal(f.Payload, &st) != nil {
		conn.Close()
		return nil, fmt.Errorf("exec: unexpected first frame %s", f.Type)
	}
	if st.StdinWindow <= 0 {
		conn.Close()
		return nil, fmt.Errorf("exec: start frame: stdin_window %d is not positive", st.StdinWindow)
	}
	e := &Exec{ID: st.ExecID, PID: st.PID, conn: conn, done: make(chan struct{}), window: newStdinWindow(st.StdinWindow)}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	go func() {
		defer stop()
		e.run(stdio)
	}()
	if stdio.Stdin != nil {
		go e.pumpStdin(stdio.Stdin)
	} else if err := e.write(agentapi.FrameStdinEOF, nil); err != nil {
		conn.Close()
	}
	return e, nil
}

func (e *Exec) write(t agentapi.FrameType, p []byte) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return agentapi.WriteFrame(e.conn, t, p)
}

// pumpStdin sends r as stdin frames, never more than the daemon's window
// allows: the daemon then always reads the connection, so a signal or
// resize written meanwhile never waits behind input.
func (e *Exec) pumpStdin(r io.Reader) {
	buf := make([]byte, agentapi.DataChunk)
	for {
		n, err := r.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			k := e.window.take(len(p))
			if k == 0 {
				return // the stream ended
			}
			if werr := e.write(agentapi.FrameStdin, p[:k]); werr != nil {
				return
			}
			p = p[k:]
		}
		if err != nil {
			// EOF or a read error: either way the input ends here.
			_ = e.write(agentapi.FrameStdinEOF, nil)
			return
		}
	}
}

func (e *Exec) run(stdio ExecIO) {
	defer close(e.done)
	defer e.window.end()
	defer e.conn.Close()
	for {
		f, err := agentapi.ReadFrame(e.conn, agentapi.MaxFrame)
		if err != nil {
			e.err = fmt.Errorf("exec %s: stream ended before the exit status: %w", e.ID, err)
			return
		}
		var w io.Writer
		switch f.Type {
		case agentapi.FrameStdout:
			w = stdio.Stdout
		case agentapi.FrameStderr:
			w = stdio.Stderr
		case agentapi.FrameResponse:
			var win api.ExecWindow
			if err := json.Unmarshal(f.Payload, &win); err != nil || win.Stdin <= 0 {
				e.err = fmt.Errorf("exec %s: bad stdin window frame %q", e.ID, f.Payload)
				return
			}
			e.window.grant(win.Stdin)
			continue
		case agentapi.FrameExit:
			if err := json.Unmarshal(f.Payload, &e.status); err != nil {
				e.err = fmt.Errorf("exec %s: decode exit status: %w", e.ID, err)
			}
			return
		default:
			e.err = fmt.Errorf("exec %s: unexpected %s frame", e.ID, f.Type)
			return
		}
		if w != nil {
			if _, err := w.Write(f.Payload); err != nil {
				e.err = fmt.Errorf("exec %s: write output: %w", e.ID, err)
				return
			}
		}
	}
}

// stdinWindow counts the stdin bytes an exec stream may still send.
type stdinWindow struct {
	mu    sync.Mutex
	cond  *sync.Cond
	avail int
	ended bool
}

func newStdinWindow(n int) *stdinWindow {
	w := &stdinWindow{avail: n}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// take waits until the window is open and takes up to n bytes of it; 0
// means the stream ended.
func (w *stdinWindow) take(n int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.avail == 0 && !w.ended {
		w.cond.Wait()
	}
	if w.ended {
		return 0
	}
	k := min(n, w.avail)
	w.avail -= k
	return k
}

// grant gives n bytes back to the window.
func (w *stdinWindow) grant(n int) {
	w.mu.Lock()
	w.avail += n
	w.mu.Unlock()
	w.cond.Broadcast()
}

// end wakes a waiting take for good.
func (w *stdinWindow) end() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
	w.cond.Broadcast()
}

// Signal sends sig (a signal number) to the process.
func (e *Exec) Signal(sig int) error {
	b, _ := json.Marshal(api.ExecControl{Signal: sig})
	return e.write(agentapi.FrameRequest, b)
}

// Resize sets the terminal size of a TTY exec.
func (e *Exec) Resize(rows, cols uint16) error {
	b, _ := json.Marshal(api.ExecControl{Resize: &api.TerminalSz{Rows: rows, Cols: cols}})
	return e.write(agentapi.FrameRequest, b)
}

// Wait returns how the process ended, once all its output was written.
func (e *Exec) Wait() (api.ExitStatus, error) {
	<-e.done
	return e.status, e.err
}

// Close ends the stream, killing the process if it still runs.
func (e *Exec) Close() error { return e.conn.Close() }
