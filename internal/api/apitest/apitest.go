// Package apitest helps tests of the daemon's API: a client transport that
// checks every request and answer against the OpenAPI document, and a
// reader of the daemon's Prometheus metrics.
package apitest

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/ironclaw/ironclaw/internal/api"
)

// Validating returns a transport wrapper that checks every request the
// client sends and every JSON answer the daemon gives against the OpenAPI
// document: the document must describe what the daemon really does.
func Validating(t testing.TB) func(http.RoundTripper) http.RoundTripper {
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	doc.Servers = openapi3.Servers{{URL: "http://ironclaw/"}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return func(next http.RoundTripper) http.RoundTripper {
		return rtFunc(func(req *http.Request) (*http.Response, error) {
			return validateRoundTrip(t, router, next, req)
		})
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func validateRoundTrip(t testing.TB, router routers.Router, next http.RoundTripper, req *http.Request) (*http.Response, error) {
	var body []byte
	binary := req.Header.Get("Content-Type") == "application/octet-stream"
	if req.Body != nil && !binary {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body.Close()
		body = b
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	vreq := req.Clone(req.Context())
	vreq.Body = http.NoBody
	if body != nil {
		vreq.Body = io.NopCloser(bytes.NewReader(body))
	}
	route, params, err := router.FindRoute(vreq)
	if err != nil {
		t.Errorf("OpenAPI: %s %s: no route: %v", req.Method, req.URL.Path, err)
		return next.RoundTrip(req)
	}
	opts := &openapi3filter.Options{MultiError: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	if binary {
		opts.ExcludeRequestBody = true
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: opts}
	// Requests tests make bad on purpose are marked; all others must match.
	if req.Header.Get("X-Test-Invalid") == "" {
		if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
			t.Errorf("OpenAPI: request %s %s does not match the document: %v", req.Method, req.URL.Path, err)
		}
	}
	resp, err := next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	ct := resp.Header.Get("Content-Type")
	if resp.StatusCode == http.StatusSwitchingProtocols || !strings.HasPrefix(ct, "application/json") {
		if resp.StatusCode != http.StatusSwitchingProtocols {
			checkStatusDocumented(t, route, req, resp.StatusCode)
		}
		return resp, nil
	}
	rb, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(rb))
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{MultiError: true, IncludeResponseStatus: true}}
	rin.SetBodyBytes(rb)
	if err := openapi3filter.ValidateResponse(req.Context(), rin); err != nil {
		t.Errorf("OpenAPI: answer %d to %s %s does not match the document: %v\nbody: %s", resp.StatusCode, req.Method, req.URL.Path, err, rb)
	}
	return resp, nil
}

func checkStatusDocumented(t testing.TB, route *routers.Route, req *http.Request, status int) {
	if route.Operation.Responses.Status(status) == nil {
		t.Errorf("OpenAPI: %s %s answered %d, which the document does not list", req.Method, req.URL.Path, status)
	}
}

// Metric returns the value of the first sample line that starts with prefix.
func Metric(t testing.TB, socket, prefix string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	resp, err := hc.Get("http://ironclaw/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			return f[len(f)-1]
		}
	}
	return ""
}
