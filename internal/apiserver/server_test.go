package apiserver

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/api"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/ironclaw/ironclaw/internal/daemon"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

func loadDoc(t testing.TB) *openapi3.T {
	t.Helper()
	l := openapi3.NewLoader()
	doc, err := l.LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	return doc
}

// TestOpenAPIDocumentIsValid validates the document and every example in
// it against its schema.
func TestOpenAPIDocumentIsValid(t *testing.T) {
	doc := loadDoc(t)
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation()); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	// Each example must really be checked: break one and expect a failure.
	broken := bytes.Replace(api.OpenAPI, []byte("example: {status: ok, sandboxes: 3}"), []byte("example: {status: ok, sandboxes: -3}"), 1)
	bad, err := openapi3.NewLoader().LoadFromData(broken)
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Validate(context.Background(), openapi3.EnableExamplesValidation()); err == nil {
		t.Fatal("a broken example validated: examples are not checked")
	}
}

// TestRoutesMatchDocument requires the router and the document to list
// the same operations.
func TestRoutesMatchDocument(t *testing.T) {
	doc := loadDoc(t)
	inDoc := map[string]bool{}
	for p, item := range doc.Paths.Map() {
		for m := range item.Operations() {
			inDoc[m+" "+p] = true
		}
	}
	inRouter := map[string]bool{}
	for _, r := range Routes() {
		inRouter[r.Method+" "+r.Path] = true
	}
	var missing, extra []string
	for k := range inRouter {
		if !inDoc[k] {
			missing = append(missing, k)
		}
	}
	for k := range inDoc {
		if !inRouter[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("routes not in openapi.yaml: %v; documented but not routed: %v", missing, extra)
	}
}

// TestErrorCodesAreDocumented checks every code the server can send is in
// the document's enum.
func TestErrorCodesAreDocumented(t *testing.T) {
	doc := loadDoc(t)
	enum := map[string]bool{}
	for _, v := range doc.Components.Schemas["Error"].Value.Properties["code"].Value.Enum {
		enum[v.(string)] = true
	}
	for _, c := range []string{api.CodeMalformedJSON, api.CodeUnknownField, api.CodeInvalidField, api.CodeBodyTooLarge, api.CodeUnsupportedMedia,
		api.CodeNotFound, api.CodeAlreadyExists, api.CodeNotRunning, api.CodeLimitReached, api.CodeUnsupported, api.CodeUnauthorized, api.CodePathEscape,
		api.CodeFileNotFound, api.CodeFileExists, api.CodeFileTooLarge, api.CodeCommandNotFound, api.CodeNotExecutable, api.CodeStartFailed,
		api.CodeTimeout, api.CodeShuttingDown, api.CodeInternal} {
		if !enum[c] {
			t.Errorf("error code %q is not in openapi.yaml", c)
		}
	}
	if len(enum) != 21 {
		t.Errorf("openapi.yaml lists %d codes, the server has 21", len(enum))
	}
}

func decodeCreate(body []byte) (daemon.CreateOptions, *api.Error) {
	var req api.CreateRequest
	r := httptest.NewRequest("POST", "/v1/sandboxes", bytes.NewReader(body))
	if e := decodeBody(httptest.NewRecorder(), r, &req); e != nil {
		return daemon.CreateOptions{}, e
	}
	return createOptions(&req)
}

func TestDecodeCreateErrors(t *testing.T) {
	cases := []struct {
		body, code, field string
	}{
		{``, api.CodeMalformedJSON, ""},
		{`{`, api.CodeMalformedJSON, ""},
		{`{"id": "x",}`, api.CodeMalformedJSON, ""},
		{`[]`, api.CodeMalformedJSON, ""},
		{`{"id": "x"} {"id": "y"}`, api.CodeMalformedJSON, ""},
		{`{"id": "x", "colour": "red"}`, api.CodeUnknownField, "colour"},
		{`{"resources": {"memory": 5}}`, api.CodeUnknownField, "memory"},
		{`{"id": 5}`, api.CodeInvalidField, "id"},
		{`{"resources": {"pids": "many"}}`, api.CodeInvalidField, "resources.pids"},
		{`{"id": "a\u0000b"}`, api.CodeInvalidField, "id"},
		{`{"backend": "docker"}`, api.CodeInvalidField, "backend"},
		{`{"user": "alice"}`, api.CodeInvalidField, "user"},
		{`{"resources": {"memory_bytes": 1}}`, api.CodeInvalidField, "resources.memory_bytes"},
		{`{"resources": {"cpus": -1}}`, api.CodeInvalidField, "resources.cpus"},
		{`{"mounts": [{"source": "rel", "target": "/x"}]}`, api.CodeInvalidField, "mounts"},
		{`{"mounts": [{"source": "/a", "target": "/proc"}]}`, api.CodeInvalidField, "mounts"},
		{`{"env": ["NOVALUE"]}`, api.CodeInvalidField, "env"},
		{`{"ttl": "soon"}`, api.CodeInvalidField, "ttl"},
		{`{"idle_timeout": "-5s"}`, api.CodeInvalidField, "idle_timeout"},
		{`{"labels": {"": "x"}}`, api.CodeInvalidField, "labels"},
		{`{"network": {"allow": [""]}}`, api.CodeInvalidField, "network.allow[0]"},
		{`{"network": {"allow": ["not a rule"]}}`, api.CodeInvalidField, "network.allow"},
	}
	for _, c := range cases {
		_, e := decodeCreate([]byte(c.body))
		if e == nil {
			t.Errorf("%s: accepted", c.body)
			continue
		}
		if e.Code != c.code || e.Field != c.field || e.Status != http.StatusBadRequest || e.Message == "" {
			t.Errorf("%s: got %d %s field %q (%s), want 400 %s field %q", c.body, e.Status, e.Code, e.Field, e.Message, c.code, c.field)
		}
	}
	o, e := decodeCreate([]byte(`{"id": "ok", "resources": {"memory_bytes": 0}, "ttl": "1m", "labels": {"a": "b"}, "pool": false}`))
	if e != nil {
		t.Fatal(e)
	}
	if o.Spec.Resources.MemoryBytes != 0 || o.Spec.Resources.Pids != sandbox.DefaultResources.Pids || o.TTL.Minutes() != 1 ||
		!o.NoPool || o.Spec.User != sandbox.SandboxUser {
		t.Errorf("decoded %+v", o)
	}
}

func TestHugeBodyIsRefused(t *testing.T) {
	huge := append([]byte(`{"id": "`), bytes.Repeat([]byte("x"), MaxJSONBody)...)
	huge = append(huge, `"}`...)
	_, e := decodeCreate(huge)
	if e == nil || e.Code != api.CodeBodyTooLarge || e.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("huge body: %+v", e)
	}
	// The same without a Content-Length (chunked) is cut by MaxBytesReader.
	r := httptest.NewRequest("POST", "/v1/sandboxes", bytes.NewReader(huge))
	r.ContentLength = -1
	var req api.CreateRequest
	if e := decodeBody(httptest.NewRecorder(), r, &req); e == nil || e.Code != api.CodeBodyTooLarge {
		t.Fatalf("huge chunked body: %+v", e)
	}
	r = httptest.NewRequest("POST", "/v1/sandboxes", strings.NewReader(`{}`))
	r.Header.Set("Content-Type", "text/plain")
	if e := decodeBody(httptest.NewRecorder(), r, &req); e == nil || e.Code != api.CodeUnsupportedMedia {
		t.Fatalf("text/plain body: %+v", e)
	}
}

func TestCheckPath(t *testing.T) {
	for _, ok := range []string{"/", "/workspace", "/workspace/a b", "/tmp/ü"} {
		if e := checkPath("path", ok); e != nil {
			t.Errorf("checkPath(%q) = %v", ok, e)
		}
	}
	for _, bad := range []string{"", "workspace", "/workspace/../etc", "/a/./b", "/a//b", "/a/", "/..", "/a\x00b",
		"/" + strings.Repeat("a", daemon.MaxPath)} {
		if e := checkPath("path", bad); e == nil || e.Field != "path" || e.Code != api.CodeInvalidField {
			t.Errorf("checkPath(%q) = %v, want invalid_field naming path", bad, e)
		}
	}
}

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		err    error
		status int
		code   string
	}{
		{sandbox.ErrNotFound, 404, api.CodeNotFound},
		{sandbox.ErrExists, 409, api.CodeAlreadyExists},
		{sandbox.ErrUnsupported, 501, api.CodeUnsupported},
		{daemon.ErrLimit, 429, api.CodeLimitReached},
		{daemon.ErrNotRunning, 409, api.CodeNotRunning},
		{daemon.ErrCommandNotFound, 400, api.CodeCommandNotFound},
		{daemon.ErrNotExecutable, 400, api.CodeNotExecutable},
		{context.DeadlineExceeded, 504, api.CodeTimeout},
		{errors.New("boom"), 500, api.CodeInternal},
	}
	for _, c := range cases {
		e := errorFor(c.err, "path")
		if e.Status != c.status || e.Code != c.code {
			t.Errorf("%v: %d %s, want %d %s", c.err, e.Status, e.Code, c.status, c.code)
		}
	}
}

// The fuzzers feed arbitrary bodies to the decoders: they never panic,
// refuse with a 4xx, or produce options that validate.

func FuzzDecodeCreate(f *testing.F) {
	for _, s := range []string{`{}`, `{"id":"x","resources":{"memory_bytes":5000000}}`, `{"mounts":[{"source":"/a","target":"/b"}]}`,
		`{"labels":{"k":"v"},"ttl":"1h","network":{"allow":["tcp://1.2.3.4:80"]}}`, `{"id":"\u0000"}`, `[1,2]`, `{"pool":false}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		o, e := decodeCreate(body)
		if e != nil {
			if e.Status < 400 || e.Status >= 500 || e.Code == "" || e.Message == "" {
				t.Fatalf("bad refusal %+v", e)
			}
			return
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("accepted options do not validate: %v", err)
		}
	})
}

func FuzzDecodeExec(f *testing.F) {
	for _, s := range []string{`{"argv":["true"]}`, `{"argv":["sh","-c","x"],"env":["A=1"],"tty":true,"rows":3,"cols":4}`,
		`{"argv":[]}`, `{"argv":["x"],"timeout":"1s","stdin":"aGk="}`, `{"argv":["x"],"dir":"/a/../b"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.ExecRequest
		r := httptest.NewRequest("POST", "/v1/sandboxes/x/exec", bytes.NewReader(body))
		if e := decodeBody(httptest.NewRecorder(), r, &req); e != nil {
			if e.Status < 400 || e.Status >= 500 {
				t.Fatalf("bad refusal %+v", e)
			}
			return
		}
		o, e := execOptions(&req)
		if e != nil {
			if e.Status != 400 || e.Field == "" {
				t.Fatalf("refusal without a field: %+v", e)
			}
			return
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("accepted options do not validate: %v", err)
		}
	})
}

func FuzzDecodeSmallBodies(f *testing.F) {
	for _, s := range []string{`{"path":"/a","mode":493,"parents":true}`, `{"allow":[]}`, `{"allow":["x"]}`, `{"path":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&api.MkdirRequest{}, &api.NetworkUpdate{}, &api.ExecControl{}} {
			r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
			if e := decodeBody(httptest.NewRecorder(), r, v); e != nil && (e.Status < 400 || e.Status >= 500) {
				t.Fatalf("bad refusal %+v", e)
			}
		}
		if mk, ok := any(&api.MkdirRequest{}).(*api.MkdirRequest); ok {
			_ = checkPath("path", mk.Path)
		}
		_ = checkPath("path", string(body))
		_, _ = parseMode(string(body))
		_, _ = parseLabels([]string{string(body)})
	})
}
