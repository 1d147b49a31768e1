package mcpgw

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// remoteServer is a local SDK MCP server on loopback that requires a
// header, so the test proves the gateway sends the configured headers.
func remoteServer(t *testing.T, sse bool) (string, *atomic.Int32) {
	s := mcp.NewServer(&mcp.Implementation{Name: "remote", Version: "1"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "hello", Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true}},
		func(ctx context.Context, req *mcp.CallToolRequest, in struct {
			Who string `json:"who"`
		}) (*mcp.CallToolResult, any, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "hello " + in.Who}}}, nil, nil
		})
	var h http.Handler
	if sse {
		h = mcp.NewSSEHandler(func(*http.Request) *mcp.Server { return s }, nil)
	} else {
		h = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
	}
	var rejected atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Api-Key") != "remote-secret-123456" {
			rejected.Add(1)
			http.Error(w, "no key", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &rejected
}

func TestRemoteServers(t *testing.T) {
	streamURL, _ := remoteServer(t, false)
	sseURL, _ := remoteServer(t, true)
	hdr := `"headers":{"X-Api-Key":"remote-secret-123456"},"ironclaw":{"trust_hints":true}`
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{
		"st":{"type":"http","url":%q,%s},
		"ss":{"type":"sse","url":%q,%s},
		"auto":{"url":%q,%s}}}`, streamURL, hdr, sseURL, hdr, sseURL, hdr))
	for _, name := range []string{"st__hello", "ss__hello", "auto__hello"} {
		r, err := h.call(t, name, map[string]any{"who": name})
		if err != nil || r.IsError || text(r) != "hello "+name {
			t.Errorf("%s: %v %q", name, err, text(r))
		}
	}
	recs := h.audit(t, 3)
	for _, r := range recs {
		if strings.Contains(string(r.Arguments), "remote-secret") {
			t.Errorf("header secret in audit: %s", r.Arguments)
		}
	}
}

func TestRemoteServerWithoutHeaderFailsToStart(t *testing.T) {
	u, rejected := remoteServer(t, false)
	cfg, err := ParseConfig([]byte(fmt.Sprintf(`{"mcpServers":{"st":{"type":"http","url":%q}}}`, u)))
	if err != nil {
		t.Fatal(err)
	}
	st := openStore(t)
	g, err := New(Options{Config: cfg, Queue: newQueue(), Store: st, Logger: testLogger(t), Launcher: &Launcher{Logger: testLogger(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Start(context.Background()); err == nil {
		t.Fatal("server that rejects us started")
	}
	if rejected.Load() == 0 {
		t.Fatal("the remote server was never asked")
	}
}
