package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/ironclaw/ironclaw/internal/api"
)

func TestNewRejectsBadConfigs(t *testing.T) {
	for _, cfg := range []Config{{}, {Socket: "/s", URL: "http://x:1"}, {URL: "ftp://x"}, {URL: "localhost:80"}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// TestErrorsAndToken checks that API errors arrive typed, with their
// status, and that the bearer token is sent.
func TestErrorsAndToken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer sekrit-sekrit-sekrit" {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":{"code":"unauthorized","message":"no"}}`))
			return
		}
		switch r.URL.Path {
		case "/v1/sandboxes/a%2Fb", "/v1/sandboxes/a/b":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"code":"not_found","message":"sandbox not found: \"a/b\""}}`))
		default:
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("upstream trouble"))
		}
	}))
	defer srv.Close()
	c, err := New(Config{URL: srv.URL, Token: "sekrit-sekrit-sekrit"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(context.Background(), "a/b")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != api.CodeNotFound || !IsCode(err, api.CodeNotFound) {
		t.Errorf("404: %#v", err)
	}
	if _, err := c.Health(context.Background()); !errors.As(err, &ae) || ae.Status != 502 || ae.Code != api.CodeInternal {
		t.Errorf("non-JSON error: %#v", err)
	}
	bad, _ := New(Config{URL: srv.URL, Token: "wrong"})
	if _, err := bad.Health(context.Background()); !IsCode(err, api.CodeUnauthorized) {
		t.Errorf("wrong token: %v", err)
	}
	if Reachable(context.Background(), "/nonexistent/socket", 0) {
		t.Error("a missing socket is reachable")
	}
}

// TestIsUnreachable: only a request that never reached a daemon (no
// socket, a socket nobody listens on) is unreachable; an answer of any
// kind, or a connection cut after the request went out, is not, since the
// daemon may have acted on it.
func TestIsUnreachable(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	missing, _ := New(Config{Socket: filepath.Join(dir, "missing.sock")})
	if _, err := missing.Create(ctx, api.CreateRequest{}); !IsUnreachable(err) {
		t.Errorf("no socket: %v, want unreachable", err)
	}
	// A socket file left by a daemon that died: nobody accepts.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	sc, _ := New(Config{Socket: stale})
	if _, err := sc.Create(ctx, api.CreateRequest{}); !IsUnreachable(err) {
		t.Errorf("stale socket: %v, want unreachable", err)
	}
	// A daemon that answers with an error, and one that cuts the
	// connection after reading the request.
	for name, h := range map[string]http.HandlerFunc{
		"error": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":{"code":"shutting_down","message":"closing"}}`))
		},
		"cut": func(w http.ResponseWriter, r *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		},
	} {
		sock := filepath.Join(dir, name+".sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(l)
		c, _ := New(Config{Socket: sock})
		_, err = c.Create(ctx, api.CreateRequest{})
		if err == nil || IsUnreachable(err) {
			t.Errorf("%s: %v, want an error that is not unreachable", name, err)
		}
		srv.Close()
	}
}
