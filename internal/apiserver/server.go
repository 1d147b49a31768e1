package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/daemon"
)

// Defaults of Config.
const (
	DefaultRequestTimeout = time.Minute
	DefaultFileTimeout    = 30 * time.Minute
	// MinTokenLen is the shortest bearer token a TCP listener accepts.
	MinTokenLen = 16
)

// Config wires a Server.
type Config struct {
	Manager *daemon.Manager
	Logger  *slog.Logger
	// Registry is where the server's metrics go; Gatherer is what
	// /metrics serves (normally the same registry).
	Registry prometheus.Registerer
	Gatherer prometheus.Gatherer
	// RequestTimeout bounds each request except file transfers, exec
	// and event streams; FileTimeout bounds file transfers.
	RequestTimeout time.Duration
	FileTimeout    time.Duration
}

// Server serves the API.
type Server struct {
	cfg     Config
	m       *daemon.Manager
	log     *slog.Logger
	mux     *http.ServeMux
	reqs    *prometheus.CounterVec
	latency *prometheus.HistogramVec
	prom    http.Handler
}

// timeout classes of routes.
const (
	short  = iota // RequestTimeout
	file          // FileTimeout
	stream        // none: the exec or event stream lives as long as it needs
)

// Route is one entry of the router; Routes lists them all (the OpenAPI
// document must describe exactly these).
type Route struct {
	Method, Path string
	class        int
	handle       func(*Server, http.ResponseWriter, *http.Request)
}

// Routes returns the API's routes, method and path as in the OpenAPI document.
func Routes() []Route {
	return []Route{
		{"GET", "/healthz", short, (*Server).health},
		{"GET", "/metrics", short, (*Server).metrics},
		{"GET", "/v1/openapi.yaml", short, (*Server).openapi},
		{"POST", "/v1/sandboxes", short, (*Server).create},
		{"GET", "/v1/sandboxes", short, (*Server).list},
		{"GET", "/v1/sandboxes/{id}", short, (*Server).get},
		{"DELETE", "/v1/sandboxes/{id}", short, (*Server).destroy},
		{"PUT", "/v1/sandboxes/{id}/network", short, (*Server).updateNetwork},
		{"POST", "/v1/sandboxes/{id}/exec", stream, (*Server).exec},
		{"GET", "/v1/sandboxes/{id}/files", file, (*Server).download},
		{"PUT", "/v1/sandboxes/{id}/files", file, (*Server).upload},
		{"DELETE", "/v1/sandboxes/{id}/files", short, (*Server).remove},
		{"GET", "/v1/sandboxes/{id}/files/stat", short, (*Server).stat},
		{"GET", "/v1/sandboxes/{id}/files/list", short, (*Server).listDir},
		{"POST", "/v1/sandboxes/{id}/files/mkdir", short, (*Server).mkdir},
		{"GET", "/v1/sandboxes/{id}/logs", short, (*Server).logs},
		{"GET", "/v1/events", stream, (*Server).events},
	}
}

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Manager == nil {
		return nil, errors.New("api: no manager")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		r := prometheus.NewRegistry()
		cfg.Registry, cfg.Gatherer = r, r
	}
	if cfg.Gatherer == nil {
		return nil, errors.New("api: Registry without Gatherer")
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.FileTimeout <= 0 {
		cfg.FileTimeout = DefaultFileTimeout
	}
	s := &Server{cfg: cfg, m: cfg.Manager, log: cfg.Logger, mux: http.NewServeMux(),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ironclaw_http_requests_total", Help: "API requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ironclaw_http_request_seconds", Help: "API request latency by route (streams: until the stream ends).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"route"}),
	}
	s.prom = promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
	for _, c := range []prometheus.Collector{s.reqs, s.latency} {
		if err := cfg.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	for _, rt := range Routes() {
		rt := rt
		s.mux.HandleFunc(rt.Method+" "+rt.Path, func(w http.ResponseWriter, r *http.Request) {
			switch rt.class {
			case short:
				ctx, cancel := context.WithTimeout(r.Context(), cfg.RequestTimeout)
				defer cancel()
				r = r.WithContext(ctx)
			case file:
				ctx, cancel := context.WithTimeout(r.Context(), cfg.FileTimeout)
				defer cancel()
				r = r.WithContext(ctx)
			}
			rt.handle(s, w, r)
		})
	}
	return s, nil
}

// Handler returns the API for trusted transports (the Unix socket).
func (s *Server) Handler() http.Handler { return s.observe(s.mux) }

// TokenHandler returns the API behind bearer-token authentication (TCP).
func (s *Server) TokenHandler(token []byte) (http.Handler, error) {
	if len(token) < MinTokenLen {
		return nil, fmt.Errorf("api: a TCP listener needs a bearer token of at least %d bytes", MinTokenLen)
	}
	next := s.mux
	return s.observe(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !agentapi.TokenEqual([]byte(got), token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ironclaw"`)
			writeError(w, &api.Error{Status: http.StatusUnauthorized, Code: api.CodeUnauthorized, Message: "missing or wrong bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})), nil
}

// statusWriter records the status and keeps Flush and Hijack reachable.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observe logs each request with its peer and counts it.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status != 0 && w.Header().Get("Content-Length") != "" {
			// The answer is complete: send it before the log line is
			// written, so a slow log never delays the client.
			_ = http.NewResponseController(w).Flush()
		}
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		if sw.status == 0 {
			sw.status = http.StatusSwitchingProtocols // hijacked
		}
		d := time.Since(t0)
		s.reqs.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
		s.latency.WithLabelValues(route).Observe(d.Seconds())
		attrs := []any{"method", r.Method, "path", r.URL.Path, "route", route, "status", sw.status, "duration", d.String()}
		if p, ok := r.Context().Value(peerKey{}).(Peer); ok {
			attrs = append(attrs, "peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID)
		} else {
			attrs = append(attrs, "remote", r.RemoteAddr)
		}
		s.log.Info("request", attrs...)
	})
}

// Peer is the process on the other end of a Unix socket connection.
type Peer struct {
	UID, GID uint32
	PID      int32
}

type peerKey struct{}

// PeerOf returns the peer credentials of a request on a Unix socket.
func PeerOf(r *http.Request) (Peer, bool) {
	p, ok := r.Context().Value(peerKey{}).(Peer)
	return p, ok
}

// connContext stores a Unix socket peer's SO_PEERCRED in the context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid})
}

// HTTPServer returns an http.Server for h with the daemon's limits.
func HTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// ListenUnix creates the API socket at path with mode perm, owned by gid
// when gid >= 0. The socket is bound in a private directory and renamed
// into place, so it is never reachable with looser permissions. A stale
// socket at path is replaced; a live one (another daemon) is an error, and
// so is anything at path that is not a socket (it is never replaced).
func ListenUnix(path string, perm os.FileMode, gid int) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen on %s: a daemon is already serving it", path)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("listen on %s: %s exists and is not a socket", path, fi.Mode().Type())
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".sock-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	tpath := filepath.Join(tmp, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tpath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(tpath, perm); err != nil {
		return fail(err)
	}
	if gid >= 0 {
		if err := os.Chown(tpath, 0, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tpath, path); err != nil {
		return fail(err)
	}
	return l, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(api.ErrorBody{Error: &api.Error{Code: api.CodeInternal, Message: "encode response: " + err.Error()}})
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// A known length lets observe flush the whole answer before it logs.
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

func writeError(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, e.Status, api.ErrorBody{Error: e})
}

// decodeBody decodes a JSON request body of at most MaxJSONBody bytes.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) *api.Error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, _ := strings.Cut(ct, ";"); strings.TrimSpace(mt) != "application/json" {
			return &api.Error{Status: http.StatusUnsupportedMediaType, Code: api.CodeUnsupportedMedia, Message: "Content-Type " + ct + ": want application/json"}
		}
	}
	if r.ContentLength > MaxJSONBody {
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Code: api.CodeBodyTooLarge, Message: fmt.Sprintf("request body of %d bytes over the limit of %d", r.ContentLength, MaxJSONBody)}
	}
	return decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), v)
}
