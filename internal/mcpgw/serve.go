package mcpgw

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/ironclaw/ironclaw/internal/apiserver"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// ErrNoToken marks an attempt to serve MCP on TCP without a bearer token.
var ErrNoToken = errors.New("serving MCP over TCP requires a bearer token")

// MinTokenLen is the shortest bearer token accepted.
const MinTokenLen = 16

// ServeStdio serves the gateway to one client on stdin/stdout until the
// client disconnects or ctx ends.
func (g *Gateway) ServeStdio(ctx context.Context) error {
	if err := g.server.Run(ctx, &mcp.StdioTransport{}); err != nil && ctx.Err() == nil {
		return fmt.Errorf("serve MCP on stdio: %w", err)
	}
	return nil
}

// HTTPHandler returns the streamable HTTP handler of the gateway. When
// token is not empty, every request must carry "Authorization: Bearer
// TOKEN" (compared in constant time).
func (g *Gateway) HTTPHandler(token string) http.Handler {
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return g.server }, &mcp.StreamableHTTPOptions{
		Logger: g.log,
	})
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ironclaw"`)
			http.Error(w, "missing or wrong bearer token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Listen opens the HTTP listener: "unix:/path" for a Unix socket (mode
// 0600; token optional), anything else is a TCP address and needs a token.
func Listen(addr, token string) (net.Listener, error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		// Bound elsewhere and renamed into place with mode 0600: never
		// reachable by other users, not even for a moment (the token is
		// optional here).
		ln, err := apiserver.ListenUnix(p, 0o600, -1)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		return ln, nil
	}
	if len(token) < MinTokenLen {
		if token == "" {
			return nil, fmt.Errorf("listen %s: %w (set one with --token-file or IRONCLAW_MCP_TOKEN)", addr, ErrNoToken)
		}
		return nil, fmt.Errorf("listen %s: %w of at least %d characters", addr, ErrNoToken, MinTokenLen)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// ServeHTTP serves the gateway on ln until ctx ends.
func (g *Gateway) ServeHTTP(ctx context.Context, ln net.Listener, token string) error {
	if _, tcp := ln.Addr().(*net.TCPAddr); tcp && len(token) < MinTokenLen {
		return fmt.Errorf("serve %s: %w", ln.Addr(), ErrNoToken)
	}
	srv := &http.Server{Handler: g.HTTPHandler(token), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve MCP over HTTP: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-errc
		return nil
	}
}
