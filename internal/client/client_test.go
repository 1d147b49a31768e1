package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
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
