package approval

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SocketDir is the directory, inside the state root, where each gateway
// serves its approvals API as "<name>.sock".
func SocketDir(root string) string { return filepath.Join(root, "approvals") }

// Listen creates the Unix socket at path for the approvals API. The
// directory is created with mode 0700 and the socket is made 0600, so only
// the owner (and root) can approve. A stale socket (nobody listening) is
// replaced; a live one is an error.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("listen approvals %s: %w", path, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("listen approvals %s: %w", path, err)
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("listen approvals %s: another gateway is serving this socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen approvals %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen approvals %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen approvals %s: %w", path, err)
	}
	return ln, nil
}

type peerKey struct{}

// Serve serves the approvals API for q on ln until ctx ends. The approver of
// every decision is the peer's uid, read from the socket (SO_PEERCRED).
func Serve(ctx context.Context, ln net.Listener, q *Queue, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           Handler(q, log),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerName(c))
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve approvals: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-errc
		return nil
	}
}

// peerName names the process on the other end of a Unix connection by uid.
func peerName(c net.Conn) string {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "unknown peer"
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "unknown peer"
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return "unknown peer"
	}
	name := strconv.FormatUint(uint64(cred.Uid), 10)
	if u, err := user.LookupId(name); err == nil {
		return fmt.Sprintf("uid %d (%s)", cred.Uid, u.Username)
	}
	return "uid " + name
}

// listResponse is the body of GET /v1/approvals.
type listResponse struct {
	Version uint64    `json:"version"`
	Pending []Request `json:"pending"`
}

type errorResponse struct {
	Error string `json:"error"`
}

// maxWait caps a long poll.
const maxWait = 60 * time.Second

// Handler returns the approvals API:
//
//	GET  /v1/approvals[?version=N&wait=30s]  pending requests (long poll until the version changes)
//	GET  /v1/approvals/{id}                  one pending request
//	POST /v1/approvals/{id}                  {"approve":true|false,"note":"..."}
func Handler(q *Queue, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/approvals", func(w http.ResponseWriter, r *http.Request) {
		var since uint64
		if v := r.URL.Query().Get("version"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, errorResponse{"version: not a number"})
				return
			}
			since = n
		}
		if ws := r.URL.Query().Get("wait"); ws != "" {
			d, err := time.ParseDuration(ws)
			if err != nil || d < 0 {
				writeJSON(w, http.StatusBadRequest, errorResponse{"wait: not a duration"})
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), min(d, maxWait))
			q.WaitChange(ctx, since)
			cancel()
		}
		pending, v := q.List()
		writeJSON(w, http.StatusOK, listResponse{Version: v, Pending: pending})
	})
	mux.HandleFunc("GET /v1/approvals/{id}", func(w http.ResponseWriter, r *http.Request) {
		req, ok := q.Get(r.PathValue("id"))
		if !ok {
			writeJSON(w, http.StatusNotFound, errorResponse{ErrNotPending.Error()})
			return
		}
		writeJSON(w, http.StatusOK, req)
	})
	mux.HandleFunc("POST /v1/approvals/{id}", func(w http.ResponseWriter, r *http.Request) {
		var d Decision
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&d); err != nil {
			writeJSON(w, http.StatusBadRequest, errorResponse{"decision: " + err.Error()})
			return
		}
		by, _ := r.Context().Value(peerKey{}).(string)
		if by == "" {
			by = "unknown peer"
		}
		d.By = by
		id := r.PathValue("id")
		if err := q.Decide(id, d); err != nil {
			writeJSON(w, http.StatusNotFound, errorResponse{err.Error()})
			return
		}
		log.Info("approval decided", "id", id, "approve", d.Approve, "by", by)
		writeJSON(w, http.StatusOK, d)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Client talks to one gateway's approvals API. NewClient makes one that
// reuses its connections; a Client with only Socket set works too (one
// connection per request), and the zero Client returns an error.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{Socket: path, hc: unixHTTPClient(path, true)}
}

func unixHTTPClient(path string, keepAlive bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: !keepAlive,
	}
	return &http.Client{Transport: tr}
}

// List returns the pending requests. With wait > 0 it long-polls until the
// queue's version differs from version.
func (c *Client) List(ctx context.Context, version uint64, wait time.Duration) ([]Request, uint64, error) {
	u := "http://approvals/v1/approvals"
	if wait > 0 {
		u += fmt.Sprintf("?version=%d&wait=%s", version, wait)
	}
	var lr listResponse
	if err := c.do(ctx, http.MethodGet, u, nil, &lr); err != nil {
		return nil, 0, fmt.Errorf("list approvals at %s: %w", c.socket(), err)
	}
	return lr.Pending, lr.Version, nil
}

// Get returns one pending request.
func (c *Client) Get(ctx context.Context, id string) (Request, error) {
	var r Request
	if err := c.do(ctx, http.MethodGet, "http://approvals/v1/approvals/"+pathEscape(id), nil, &r); err != nil {
		return Request{}, fmt.Errorf("get approval %s: %w", id, err)
	}
	return r, nil
}

// Decide approves or denies a pending request and returns the decision as
// recorded (with the approver the gateway saw).
func (c *Client) Decide(ctx context.Context, id string, approve bool, note string) (Decision, error) {
	body, err := json.Marshal(Decision{Approve: approve, Note: note})
	if err != nil {
		return Decision{}, err
	}
	var d Decision
	if err := c.do(ctx, http.MethodPost, "http://approvals/v1/approvals/"+pathEscape(id), body, &d); err != nil {
		return Decision{}, fmt.Errorf("decide approval %s: %w", id, err)
	}
	return d, nil
}

func (c *Client) socket() string {
	if c == nil {
		return ""
	}
	return c.Socket
}

func pathEscape(s string) string { return strings.ReplaceAll(s, "/", "%2F") }

func (c *Client) do(ctx context.Context, method, u string, body []byte, out any) error {
	if c == nil || c.Socket == "" {
		return errors.New("approvals client has no socket (use NewClient)")
	}
	hc := c.hc
	if hc == nil {
		// Not made by NewClient: no shared transport to keep idle
		// connections in, so close each one after its request.
		hc = unixHTTPClient(c.Socket, false)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			if resp.StatusCode == http.StatusNotFound {
				return fmt.Errorf("%w: %s", ErrNotPending, e.Error)
			}
			return errors.New(e.Error)
		}
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	return json.Unmarshal(data, out)
}
