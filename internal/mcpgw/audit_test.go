package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// spyBuiltin is a builtin that counts its runs: green when called with
// {"safe":true}, red otherwise.
func spyBuiltin(runs *atomic.Int32) Builtin {
	yes := json.RawMessage(`true`)
	return Builtin{
		Tool: &mcp.Tool{Name: "spy", InputSchema: &jsonschema.Schema{Type: "object",
			Properties: map[string]*jsonschema.Schema{"safe": {Type: "boolean"}}}},
		Handler: func(context.Context, json.RawMessage) (*mcp.CallToolResult, error) {
			runs.Add(1)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ran"}}}, nil
		},
		Policy: approval.Policy{Rules: []approval.Rule{
			{Tool: "spy", Args: map[string]approval.Matcher{"safe": {Equals: yes}}, Class: approval.Green},
			{Tool: "spy", Class: approval.Red},
		}},
	}
}

// TestCallRefusedWhenAuditFails: a call runs only after its "started"
// record is written; with a store that fails writes, green and approved
// calls alike are refused and never run.
func TestCallRefusedWhenAuditFails(t *testing.T) {
	var runs atomic.Int32
	h := startGateway(t, `{"mcpServers":{}}`, func(o *Options) { o.Builtins = []Builtin{spyBuiltin(&runs)} })

	// Working store: a started record, then the outcome.
	r, err := h.call(t, "ironclaw__spy", map[string]any{"safe": true})
	if err != nil || r.IsError || runs.Load() != 1 {
		t.Fatalf("green call with a working store: %v %+v (runs %d)", err, r, runs.Load())
	}
	h.audit(t, 1) // checks the started record precedes the outcome
	recs, err := h.store.Audit(context.Background(), store.AuditFilter{})
	if err != nil || len(recs) != 2 || recs[0].Decision != DecisionStarted || recs[0].Class != "green" ||
		recs[1].Decision != store.DecisionAllowed || recs[1].Duration <= 0 {
		t.Fatalf("records %+v %v", recs, err)
	}

	h.store.Close() // every write now fails
	_, err = h.call(t, "ironclaw__spy", map[string]any{"safe": true})
	var jerr *jsonrpc.Error
	if !errors.As(err, &jerr) || !strings.Contains(jerr.Message, "audit") {
		t.Errorf("green call with a failing store: %v, want an error about the audit log", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := h.call(t, "ironclaw__spy", map[string]any{"safe": false})
		done <- err
	}()
	held := h.waitHeld(t)
	if err := h.queue.Decide(held.ID, approval.Decision{Approve: true, By: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.As(err, &jerr) || !strings.Contains(jerr.Message, "audit") {
		t.Errorf("approved call with a failing store: %v, want an error about the audit log", err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("the tool ran %d times with the audit log failing", n-1)
	}
}

// TestNewCompilesPolicies: a Config built in code (not by ParseConfig)
// holds uncompiled policies. Before New compiled them, an uncompiled regex
// matcher matched every value, so a rule meant to make only "safe" calls
// green made every call green.
func TestNewCompilesPolicies(t *testing.T) {
	var runs atomic.Int32
	rule := func(re string) approval.Policy {
		return approval.Policy{Rules: []approval.Rule{{Server: BuiltinServer, Tool: "spy",
			Args: map[string]approval.Matcher{"note": {Regex: re}}, Class: approval.Green}}}
	}
	cfg := &Config{Servers: map[string]*ServerConfig{}, Approval: rule("safe")}
	spy := spyBuiltin(&runs)
	spy.Tool.InputSchema.(*jsonschema.Schema).Properties["note"] = &jsonschema.Schema{Type: "string"}
	h := startGateway(t, `{"mcpServers":{}}`, func(o *Options) {
		o.Config = cfg
		o.Builtins = []Builtin{spy}
		o.ApprovalTimeout = 100 * time.Millisecond
	})
	if r, err := h.call(t, "ironclaw__spy", map[string]any{"note": "safe"}); err != nil || r.IsError || runs.Load() != 1 {
		t.Fatalf("matching call: %v %+v", err, r)
	}
	r, err := h.call(t, "ironclaw__spy", map[string]any{"note": "rm -rf /"})
	if err != nil || !r.IsError || !strings.Contains(text(r), "needed approval") || runs.Load() != 1 {
		t.Fatalf("a call the regex does not match ran or was not held: %v %q (runs %d)", err, text(r), runs.Load())
	}

	// An invalid policy is an error from New, naming where it is.
	for name, c := range map[string]*Config{
		"gateway-wide": {Servers: map[string]*ServerConfig{}, Approval: rule("(")},
		"server": {Servers: map[string]*ServerConfig{"s": {Name: "s", Transport: TransportStdio, Command: "x",
			Sandbox: SandboxConfig{Backend: BackendNone}, Approval: approval.Policy{Rules: []approval.Rule{{Tool: "t",
				Args: map[string]approval.Matcher{"a": {AnyWord: []string{"two words"}}}, Class: approval.Green}}}}}},
	} {
		_, err := New(Options{Config: c, Launcher: &Launcher{Logger: testLogger(t)}, Queue: newQueue(), Store: openStore(t), Logger: testLogger(t)})
		if err == nil || !errors.Is(err, approval.ErrPolicy) {
			t.Errorf("%s: New accepted an invalid policy: %v", name, err)
		}
	}
}
