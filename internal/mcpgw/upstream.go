package mcpgw

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// ErrUnavailable marks a call to a server that is down (starting,
// restarting, or failing to start).
var ErrUnavailable = errors.New("MCP server unavailable")

// upstream is one configured server: its live client session (nil while
// down), what it registered on the gateway, and its restart loop.
type upstream struct {
	g      *Gateway
	cfg    *ServerConfig
	policy approval.Policy
	log    *slog.Logger
	read   approval.ReadFunc

	// syncMu serializes re-listing (list_changed notifications can
	// arrive in bursts); mu guards the fields below.
	syncMu sync.Mutex
	// pending marks, per listing (tools, prompts, resources), a resync
	// that was scheduled and has not started listing yet: notifications
	// arriving meanwhile fold into it (see scheduleSync).
	pending   [3]atomic.Bool
	mu        sync.Mutex
	cs        *mcp.ClientSession
	up        chan struct{} // closed while cs != nil
	lastErr   error
	starts    int
	tools     map[string]*mcp.Tool // qualified name -> the server's tool
	prompts   map[string]string    // qualified name -> server's prompt name
	resources map[string]bool      // URIs registered for this server
	templates map[string]bool      // URI templates registered for this server
	inflight  map[*mcp.ServerSession][]*inflightCall
}

func newUpstream(g *Gateway, cfg *ServerConfig) *upstream {
	pol := cfg.Approval
	// The server's own rules first, then the gateway-wide ones.
	pol.Rules = append(append([]approval.Rule{}, cfg.Approval.Rules...), g.cfg.Approval.Rules...)
	if pol.Timeout == 0 {
		pol.Timeout = g.cfg.Approval.Timeout
	}
	// Only the server's own config can trust its hints.
	pol.TrustHints = cfg.TrustHints
	u := &upstream{
		g: g, cfg: cfg, policy: pol,
		log:       g.log.With("server", cfg.Name),
		up:        make(chan struct{}),
		tools:     map[string]*mcp.Tool{},
		prompts:   map[string]string{},
		resources: map[string]bool{},
		templates: map[string]bool{},
		inflight:  map[*mcp.ServerSession][]*inflightCall{},
	}
	u.read = hostReader(cfg)
	return u
}

// session returns the live session, waiting up to wait for one.
func (u *upstream) session(ctx context.Context, wait time.Duration) (*mcp.ClientSession, error) {
	u.mu.Lock()
	cs, up, last := u.cs, u.up, u.lastErr
	u.mu.Unlock()
	if cs != nil {
		return cs, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-up:
		u.mu.Lock()
		cs = u.cs
		u.mu.Unlock()
		if cs != nil {
			return cs, nil
		}
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if last != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnavailable, u.cfg.Name, last)
	}
	return nil, fmt.Errorf("%w: %s is not connected", ErrUnavailable, u.cfg.Name)
}

func (u *upstream) setSession(cs *mcp.ClientSession, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if cs != nil {
		u.cs, u.lastErr = cs, nil
		close(u.up)
		return
	}
	if u.cs != nil {
		u.up = make(chan struct{})
	}
	u.cs = nil
	if err != nil {
		u.lastErr = err
	}
}

// run connects, keeps the gateway's view of the server in sync, and
// restarts the server with exponential backoff whenever it goes away, until
// ctx ends. The first connection attempt's result is sent on first.
func (u *upstream) run(ctx context.Context, first chan<- error) {
	backoff := u.g.opts.MinBackoff
	for {
		attemptCtx, cancelAttempt := context.WithCancel(ctx)
		cs, err := u.connect(attemptCtx)
		if err != nil {
			if first != nil {
				first <- err
				first = nil
			}
			cancelAttempt()
			u.setSession(nil, err)
			if ctx.Err() != nil {
				return
			}
			u.log.Warn("MCP server failed to start; retrying", "err", u.g.redact.String(err.Error()), "retry_in", backoff)
		} else {
			started := time.Now()
			u.setSession(cs, nil)
			if err := u.sync(ctx, cs); err != nil {
				u.log.Warn("list the server's tools, prompts and resources", "err", err)
			}
			if first != nil {
				first <- nil
				first = nil
			}
			werr := cs.Wait()
			cancelAttempt()
			u.setSession(nil, fmt.Errorf("server exited: %v", werr))
			if ctx.Err() != nil {
				return
			}
			if time.Since(started) > u.g.opts.StableAfter {
				backoff = u.g.opts.MinBackoff
			}
			u.log.Warn("MCP server went away; restarting", "err", werr, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, u.g.opts.MaxBackoff)
	}
}

// connect starts (or dials) the server and initializes an MCP session.
func (u *upstream) connect(ctx context.Context) (*mcp.ClientSession, error) {
	u.mu.Lock()
	u.starts++
	n := u.starts
	u.mu.Unlock()
	client := mcp.NewClient(&mcp.Implementation{Name: "ironclaw-gateway", Version: u.g.opts.Version}, u.clientOptions())
	var cleanup func()
	var t mcp.Transport
	switch u.cfg.Transport {
	case TransportStdio:
		id := fmt.Sprintf("mcp-%s-%d-%s", u.cfg.Name, n, randomHex(4))
		cmd, done, err := u.g.opts.Launcher.Command(ctx, u.cfg, id)
		if err != nil {
			return nil, err
		}
		cleanup = done
		cmd.Stderr = &lineLogger{log: u.log, red: u.g.redact}
		t = &mcp.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}
	case TransportStreamable:
		t = &mcp.StreamableClientTransport{Endpoint: u.cfg.URL, HTTPClient: u.httpClient()}
	case TransportSSE:
		t = &mcp.SSEClientTransport{Endpoint: u.cfg.URL, HTTPClient: u.httpClient()}
	default:
		return nil, fmt.Errorf("server %q: transport %q", u.cfg.Name, u.cfg.Transport)
	}
	cs, err := u.initialize(ctx, client, t)
	if cleanup != nil {
		cleanup()
	}
	if err != nil && u.cfg.Transport == TransportStreamable && u.cfg.AutoFallback && ctx.Err() == nil {
		// Backwards compatibility (spec 2025-03-26): an old server
		// answers the streamable POST with an error; try legacy SSE.
		u.log.Debug("streamable HTTP failed; trying legacy SSE", "err", err)
		cs2, err2 := u.initialize(ctx, client, &mcp.SSEClientTransport{Endpoint: u.cfg.URL, HTTPClient: u.httpClient()})
		if err2 == nil {
			return cs2, nil
		}
		err = fmt.Errorf("streamable HTTP: %v; legacy SSE: %v", err, err2)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to server %q: %w", u.cfg.Name, err)
	}
	return cs, nil
}

// initialize runs the handshake with a deadline. The deadline cannot be
// put on ctx itself: some transports tie the whole connection to it.
func (u *upstream) initialize(ctx context.Context, client *mcp.Client, t mcp.Transport) (*mcp.ClientSession, error) {
	type result struct {
		cs  *mcp.ClientSession
		err error
	}
	connCtx, cancel := context.WithCancel(ctx)
	ch := make(chan result, 1)
	go func() {
		cs, err := client.Connect(connCtx, t, nil)
		ch <- result{cs, err}
	}()
	timer := time.NewTimer(u.g.opts.InitTimeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			cancel()
			return nil, r.err
		}
		// The session, and connCtx, end with the attempt's ctx.
		context.AfterFunc(ctx, func() { r.cs.Close(); cancel() })
		return r.cs, nil
	case <-timer.C:
		cancel()
		if r := <-ch; r.cs != nil {
			r.cs.Close()
		}
		return nil, fmt.Errorf("initialize: no answer within %s", u.g.opts.InitTimeout)
	}
}

func (u *upstream) httpClient() *http.Client {
	if len(u.cfg.Headers) == 0 {
		return &http.Client{}
	}
	return &http.Client{Transport: &headerTransport{base: http.DefaultTransport, headers: u.cfg.Headers}}
}

// headerTransport adds the configured headers to every request.
type headerTransport struct {
	base    http.RoundTripper
	headers map[string]string
}

func (h *headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range h.headers {
		r.Header.Set(k, v)
	}
	return h.base.RoundTrip(r)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error()) // never fails on Linux 3.17+
	}
	return hex.EncodeToString(b)
}

// lineLogger logs a server's stderr line by line at debug level, with
// configured secrets hidden.
type lineLogger struct {
	log *slog.Logger
	red *approval.Redactor
	mu  sync.Mutex
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := strings.IndexByte(string(l.buf), '\n')
		if i < 0 {
			if len(l.buf) > 64<<10 {
				l.log.Debug("server stderr", "line", l.red.String(string(l.buf)))
				l.buf = l.buf[:0]
			}
			return len(p), nil
		}
		l.log.Debug("server stderr", "line", l.red.String(string(l.buf[:i])))
		l.buf = l.buf[i+1:]
	}
}

var _ io.Writer = (*lineLogger)(nil)
