package mcpgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// everythingConfig runs server-everything with its hints trusted (these
// tests are about forwarding and holding; TestServerHintsUntrustedByDefault
// covers the default).
func everythingConfig(nm, extra string) string {
	return fmt.Sprintf(`{"mcpServers":{"ev":{"command":"node","args":[%q],"ironclaw":{"backend":"none","trust_hints":true%s}}}}`, everythingEntry(nm), extra)
}

func TestEverythingThroughGateway(t *testing.T) {
	nm := nodeModules(t)
	h := startGateway(t, everythingConfig(nm, `,"tools":{"deny":["get-env"]}`))
	names := h.toolNames(t)
	for _, want := range []string{"ev__echo", "ev__get-sum", "ev__trigger-long-running-operation"} {
		if !slices.Contains(names, want) {
			t.Errorf("tool %s missing from %v", want, names)
		}
	}
	if slices.Contains(names, "ev__get-env") {
		t.Error("denied tool ev__get-env is listed")
	}
	res, err := h.call(t, "ev__echo", map[string]any{"message": "hello gateway"})
	if err != nil || res.IsError || !strings.Contains(text(res), "hello gateway") {
		t.Fatalf("echo: %v %v %q", err, res, text(res))
	}
	res, err = h.call(t, "ev__get-sum", map[string]any{"a": 2, "b": 40})
	if err != nil || !strings.Contains(text(res), "42") {
		t.Fatalf("get-sum: %v %q", err, text(res))
	}
	// A denied tool cannot be called by name either, and the attempt is audited.
	if _, err := h.call(t, "ev__get-env", map[string]any{}); err == nil {
		t.Error("denied tool was callable")
	}
	recs := h.audit(t, 3)
	if b := recs[2]; b.Decision != store.DecisionBlocked || b.Server != "ev" || b.Tool != "get-env" {
		t.Errorf("blocked record %+v", b)
	}
	recs = recs[:2]
	for _, r := range recs {
		if r.Server != "ev" || r.Decision != store.DecisionAllowed || r.Class != "green" || r.ResultBytes == 0 || r.Duration <= 0 || r.Gateway != "test" {
			t.Errorf("audit record %+v", r)
		}
	}
	if recs[0].Tool != "echo" || !strings.Contains(string(recs[0].Arguments), "hello gateway") {
		t.Errorf("first record %+v", recs[0])
	}

	// Progress notifications reach the caller under its own token.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := &mcp.CallToolParams{Name: "ev__trigger-long-running-operation", Arguments: map[string]any{"duration": 1, "steps": 3}}
	p.SetProgressToken("client-token-1")
	if _, err := h.client.CallTool(ctx, p); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	prog := slices.Clone(h.prog)
	h.mu.Unlock()
	if len(prog) < 2 {
		t.Fatalf("%d progress notifications, want several", len(prog))
	}
	for _, n := range prog {
		if n.ProgressToken != "client-token-1" {
			t.Errorf("progress token %v reached the client, want its own", n.ProgressToken)
		}
	}

	// Prompts are namespaced and proxied; resources keep their URIs.
	pr, err := h.client.GetPrompt(ctx, &mcp.GetPromptParams{Name: "ev__args-prompt", Arguments: map[string]string{"city": "Oslo"}})
	if err != nil || len(pr.Messages) == 0 || !strings.Contains(mustJSON(pr.Messages), "Oslo") {
		t.Fatalf("prompt: %v %s", err, mustJSON(pr))
	}
	rl, err := h.client.ListResources(ctx, nil)
	if err != nil || len(rl.Resources) == 0 {
		t.Fatalf("resources: %v", err)
	}
	rr, err := h.client.ReadResource(ctx, &mcp.ReadResourceParams{URI: rl.Resources[0].URI})
	if err != nil || len(rr.Contents) == 0 {
		t.Fatalf("read %s: %v", rl.Resources[0].URI, err)
	}
	rt, err := h.client.ReadResource(ctx, &mcp.ReadResourceParams{URI: "demo://resource/dynamic/text/3"})
	if err != nil || len(rt.Contents) == 0 || rt.Contents[0].URI != "demo://resource/dynamic/text/3" {
		t.Fatalf("read through a template: %v %s", err, mustJSON(rt))
	}
	// Completion is routed to the prompt's server.
	cr, err := h.client.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "ev__completable-prompt"},
		Argument: mcp.CompleteParamsArgument{Name: "department", Value: "E"}})
	if err != nil || len(cr.Completion.Values) == 0 {
		t.Fatalf("complete: %v %s", err, mustJSON(cr))
	}
}

// TestApprovalCliffEverything drives a red call to approval, denial and
// timeout against the real server-everything.
func TestApprovalCliffEverything(t *testing.T) {
	nm := nodeModules(t)
	h := startGateway(t, everythingConfig(nm, `,"approval":{"timeout":"300ms","rules":[{"tool":"echo","args":{"message":{"any_word":["danger"]}},"class":"red"}]}`))

	type result struct {
		res *mcp.CallToolResult
		err error
	}
	callAsync := func(msg string) chan result {
		ch := make(chan result, 1)
		go func() {
			r, err := h.call(t, "ev__echo", map[string]any{"message": msg})
			ch <- result{r, err}
		}()
		return ch
	}
	// Green: "endangered" is not the word "danger".
	if r, err := h.call(t, "ev__echo", map[string]any{"message": "endangered species"}); err != nil || r.IsError {
		t.Fatalf("green call: %v", err)
	}
	if l, _ := h.queue.List(); len(l) != 0 {
		t.Fatal("green call was held")
	}

	// Approve. The timeout is short, so approve from the queue directly.
	h.gw.opts.Queue = h.queue
	ch := callAsync("danger: approve me")
	req := h.waitHeld(t)
	if req.Tool != "ev__echo" || req.Card.Kind != approval.CardArguments || !strings.Contains(string(req.Card.Arguments), "approve me") {
		t.Errorf("held request %+v", req)
	}
	if err := h.queue.Decide(req.ID, approval.Decision{Approve: true, By: "uid 0 (tester)"}); err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil || r.res.IsError || !strings.Contains(text(r.res), "approve me") {
		t.Fatalf("approved call: %v %q", r.err, text(r.res))
	}

	// Deny.
	ch = callAsync("danger: deny me")
	req = h.waitHeld(t)
	h.queue.Decide(req.ID, approval.Decision{Approve: false, By: "uid 0 (tester)", Note: "not today"})
	r = <-ch
	if r.err != nil || !r.res.IsError || !strings.Contains(text(r.res), "denied by uid 0 (tester): not today") {
		t.Fatalf("denied call: %v %q", r.err, text(r.res))
	}

	// Time out: nobody answers within 300ms.
	r = <-callAsync("danger: nobody answers")
	if r.err != nil || !r.res.IsError || !strings.Contains(text(r.res), "needed approval and was denied") {
		t.Fatalf("timed-out call: %v %q", r.err, text(r.res))
	}

	recs := h.audit(t, 4)
	want := []string{store.DecisionAllowed, store.DecisionApproved, store.DecisionDenied, store.DecisionTimeout}
	for i, rec := range recs {
		if rec.Decision != want[i] {
			t.Errorf("record %d decision %s, want %s", i, rec.Decision, want[i])
		}
	}
	if recs[1].Approver != "uid 0 (tester)" || recs[1].Class != "red" || !strings.Contains(recs[1].Reason, "policy rule 0") {
		t.Errorf("approved record %+v", recs[1])
	}
	if recs[2].Approver != "uid 0 (tester)" || recs[2].ResultBytes != 0 {
		t.Errorf("denied record %+v", recs[2])
	}
}

func TestFixtureCancellationLoggingSampling(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "events")
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"fx":%s}}`, fixtureServer(t, marker)))

	// Logging passes through, the logger name prefixed by the server.
	if err := h.client.SetLoggingLevel(context.Background(), &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
		t.Fatal(err)
	}
	// Protocol 2026-07-28 carries the client's log level in each request.
	lp := &mcp.CallToolParams{Name: "fx__log", Arguments: map[string]any{}}
	lp.SetMeta(map[string]any{mcp.MetaKeyLogLevel: "info"})
	if _, err := h.client.CallTool(context.Background(), lp); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "log message", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, l := range h.logs {
			if l.Logger == "fx/fx" && l.Data == "hello from the fixture" {
				return true
			}
		}
		return false
	})

	// Cancellation reaches the server.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := h.client.CallTool(ctx, &mcp.CallToolParams{Name: "fx__slow", Arguments: map[string]any{"seconds": 30}})
		errc <- err
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("cancelled call succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled call did not return")
	}
	waitFor(t, "server saw the cancellation", func() bool { return fileHas(marker, "cancelled") })

	// Sampling goes to the client that made the call.
	res, err := h.call(t, "fx__sample", map[string]any{})
	if err != nil || !strings.Contains(text(res), "model said: hi from the client") {
		t.Fatalf("sampling: %v %q", err, text(res))
	}

	// list_changed passes through and the new tool is callable.
	if _, err := h.call(t, "fx__add_tool", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fx__late_tool listed", func() bool { return slices.Contains(h.toolNames(t), "fx__late_tool") })
	waitFor(t, "tools/list_changed at the client", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.tlc > 0
	})
	if r, err := h.call(t, "fx__late_tool", map[string]any{}); err != nil || text(r) != "late" {
		t.Fatalf("late tool: %v", err)
	}
}

// TestServerFailuresFailOneCall: a server that dies or writes garbage
// mid-call fails that call only; the other server keeps working and the
// broken one is restarted.
func TestServerFailuresFailOneCall(t *testing.T) {
	dir := t.TempDir()
	m1, m2 := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"a":%s,"b":%s}}`, fixtureServer(t, m1), fixtureServer(t, m2)))
	pid := func(server string) string {
		r, err := h.call(t, server+"__pid", map[string]any{})
		if err != nil || r.IsError {
			t.Fatalf("%s__pid: %v %q", server, err, text(r))
		}
		return text(r)
	}
	a1, b1 := pid("a"), pid("b")

	// A slow call on b is in flight while a crashes.
	slow := make(chan error, 1)
	go func() {
		r, err := h.call(t, "b__slow", map[string]any{"seconds": 1})
		if err == nil && r.IsError {
			err = errors.New(text(r))
		}
		slow <- err
	}()
	r, err := h.call(t, "a__crash", map[string]any{})
	if err == nil && !r.IsError {
		t.Fatal("call to a crashing server succeeded")
	}
	if err := <-slow; err != nil {
		t.Fatalf("call on the healthy server failed: %v", err)
	}
	waitFor(t, "a restarted", func() bool {
		r, err := h.call(t, "a__pid", map[string]any{})
		return err == nil && !r.IsError && text(r) != a1
	})

	r, err = h.call(t, "b__garbage", map[string]any{})
	if err == nil && !r.IsError {
		t.Fatal("call answered with garbage succeeded")
	}
	if got := pid("a"); got == a1 {
		t.Error("a was not restarted")
	}
	waitFor(t, "b restarted after garbage", func() bool {
		r, err := h.call(t, "b__pid", map[string]any{})
		return err == nil && !r.IsError && text(r) != b1
	})
	all, _ := h.store.Audit(context.Background(), store.AuditFilter{Tool: "crash"})
	if recs := outcomes(t, all); len(recs) != 1 || recs[0].Error == "" {
		t.Errorf("crash audit %+v", all)
	}
}

// TestClientRobustness: requests before initialize and after close are
// errors, not crashes.
func TestClientRobustness(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "events")
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"fx":%s}}`, fixtureServer(t, marker)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A raw connection that calls a tool before initializing.
	st, ct := mcp.NewInMemoryTransports()
	ss, err := h.gw.Server().Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	conn, err := ct.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := jsonrpc.MakeID(float64(1))
	if err := conn.Write(ctx, &jsonrpc.Request{ID: id, Method: "tools/call", Params: json.RawMessage(`{"name":"fx__pid","arguments":{}}`)}); err != nil {
		t.Fatal(err)
	}
	msg, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, ok := msg.(*jsonrpc.Response)
	if !ok || resp.Error == nil {
		t.Fatalf("call before initialize answered %#v", msg)
	}
	conn.Close()

	// After close.
	c := mcp.NewClient(&mcp.Implementation{Name: "c", Version: "1"}, nil)
	st2, ct2 := mcp.NewInMemoryTransports()
	if _, err := h.gw.Server().Connect(ctx, st2, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := c.Connect(ctx, ct2, nil)
	if err != nil {
		t.Fatal(err)
	}
	cs.Close()
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__pid"}); err == nil {
		t.Fatal("call after close succeeded")
	}
	// The gateway still serves its other client.
	if r, err := h.call(t, "fx__pid", map[string]any{}); err != nil || r.IsError {
		t.Fatalf("gateway broken after a bad client: %v", err)
	}
	// Arguments that are not an object are invalid params, not a crash.
	if _, err := h.call(t, "fx__pid", []int{1}); err == nil {
		t.Fatal("array arguments accepted")
	}
}

func TestAuditRedactsSecrets(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "events")
	exe, _ := os.Executable()
	cfg := fmt.Sprintf(`{"mcpServers":{"fx":{"command":%q,"env":{%q:"1","FIXTURE_MARKER":%q,"SERVICE_TOKEN":"tok-9f8e7d6c5b4a"},"ironclaw":{"backend":"none","trust_hints":true}}}}`, exe, fixtureEnv, marker)
	h := startGateway(t, cfg)
	if _, err := h.call(t, "fx__pid", map[string]any{"password": "hunter2", "note": "uses tok-9f8e7d6c5b4a", "path": "/x"}); err != nil {
		t.Fatal(err)
	}
	rec := h.audit(t, 1)[0]
	args := string(rec.Arguments)
	if strings.Contains(args, "hunter2") || strings.Contains(args, "tok-9f8e7d6c5b4a") || !strings.Contains(args, `"/x"`) {
		t.Fatalf("audit arguments not redacted: %s", args)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileHas(p, s string) bool {
	b, _ := os.ReadFile(p)
	return strings.Contains(string(b), s)
}

// TestServerHintsUntrustedByDefault: the same real server twice, once with
// its hints untrusted (the default) and once with "trust_hints": a tool it
// marks readOnlyHint and one whose name starts with a read verb are held
// from the first and run from the second. A user rule applies to both.
func TestServerHintsUntrustedByDefault(t *testing.T) {
	nm := nodeModules(t)
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{
		"ev":{"command":"node","args":[%[1]q],"ironclaw":{"backend":"none","approval":{"timeout":"200ms"}}},
		"evt":{"command":"node","args":[%[1]q],"ironclaw":{"backend":"none","trust_hints":true,"approval":{"timeout":"200ms"}}}},
		"ironclaw":{"approval":{"rules":[{"tool":"get-sum","class":"green"}]}}}`, everythingEntry(nm)))
	for _, tc := range []struct {
		tool string
		args map[string]any
	}{
		{"get-structured-content", map[string]any{"location": "New York"}}, // readOnlyHint: true
		{"echo", map[string]any{"message": "hi"}},                          // read verb "echo", no annotations
	} {
		r, err := h.call(t, "ev__"+tc.tool, tc.args)
		if err != nil || !r.IsError || !strings.Contains(text(r), "needed approval") {
			t.Errorf("untrusted ev__%s was not held: %v %q", tc.tool, err, text(r))
		}
		r, err = h.call(t, "evt__"+tc.tool, tc.args)
		if err != nil || r.IsError {
			t.Errorf("trusted evt__%s: %v %q", tc.tool, err, text(r))
		}
	}
	for _, s := range []string{"ev", "evt"} {
		if r, err := h.call(t, s+"__get-sum", map[string]any{"a": 1, "b": 2}); err != nil || r.IsError {
			t.Errorf("%s__get-sum (green by rule): %v %q", s, err, text(r))
		}
	}
	recs := h.audit(t, 6)
	if r := recs[0]; r.Server != "ev" || r.Decision != store.DecisionTimeout || !strings.Contains(r.Reason, "not trusted") {
		t.Errorf("untrusted record %+v", r)
	}
	if r := recs[1]; r.Server != "evt" || r.Decision != store.DecisionAllowed || !strings.Contains(r.Reason, "readOnlyHint") {
		t.Errorf("trusted record %+v", r)
	}
}

// TestProgressStaysWithItsServer: the gateway gives each forwarded call
// a token of its own ("ironclaw-N"). A server that sends progress under
// a token it was not given — another server's call, another client's —
// must not reach that call's client: it would speak there in the other
// server's name.
func TestProgressStaysWithItsServer(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "marker")
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"a":%s,"b":%s}}`, fixtureServer(t, marker), fixtureServer(t, marker)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := &mcp.CallToolParams{Name: "b__slow", Arguments: map[string]any{"seconds": 1.5}}
	p.SetProgressToken("victim-token")
	done := make(chan error, 1)
	go func() {
		_, err := h.client.CallTool(ctx, p)
		done <- err
	}()
	// Wait until b's call is forwarded (its own progress arrives).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		h.mu.Lock()
		n := len(h.prog)
		h.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no progress from b__slow")
		}
	}
	if res, err := h.call(t, "a__forge_progress", map[string]any{}); err != nil || res.IsError {
		t.Fatalf("a__forge_progress: %v %v", err, res)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range h.prog {
		if n.Message == "forged" {
			t.Fatalf("server a's forged progress reached the client of b__slow under %v", n.ProgressToken)
		}
	}
}

// TestResourceUpdatesStayWithTheirServer: a server may announce updates
// of its own resources only. Server a announcing b's resource as updated
// must not reach b's subscribers in b's name (a client re-reads what it
// is told changed; a hostile server could steer that, or flood it).
func TestResourceUpdatesStayWithTheirServer(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "marker")
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"a":%s,"b":%s}}`,
		namedFixtureServer(t, marker, "a", "FIXTURE_FORGE_URI", "fixture://b/doc"), namedFixtureServer(t, marker, "b")))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, uri := range []string{"fixture://a/doc", "fixture://b/doc"} {
		if err := h.client.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); err != nil {
			t.Fatalf("subscribe %s: %v", uri, err)
		}
	}
	// b's own announcement arrives: the route works. (A subscription
	// can take a moment to hold on b: announce until one arrives.)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if res, err := h.call(t, "b__touch_doc", map[string]any{}); err != nil || res.IsError {
			t.Fatalf("b__touch_doc: %v %v", err, res)
		}
		time.Sleep(100 * time.Millisecond)
		h.mu.Lock()
		got := slices.Contains(h.upd, "fixture://b/doc")
		h.mu.Unlock()
		if got {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b's own update of fixture://b/doc never reached its subscriber")
		}
	}
	h.mu.Lock()
	h.upd = nil
	h.mu.Unlock()
	// a announces b's resource.
	if res, err := h.call(t, "a__touch_doc", map[string]any{}); err != nil || res.IsError {
		t.Fatalf("a__touch_doc: %v %v", err, res)
	}
	time.Sleep(300 * time.Millisecond)
	h.mu.Lock()
	defer h.mu.Unlock()
	if slices.Contains(h.upd, "fixture://b/doc") {
		t.Fatalf("server a's announcement of fixture://b/doc reached b's subscribers: %v", h.upd)
	}
}

// TestEndlessListingIsBounded: a server whose tools/list always offers
// another page (a new tool and a next cursor) must not keep the gateway
// — an unsandboxed host process — fetching and storing pages forever.
// The resync its tools/list_changed starts runs without a deadline.
func TestEndlessListingIsBounded(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "marker")
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"fx":%s}}`, fixtureServer(t, marker)))
	if res, err := h.call(t, "fx__go_endless", map[string]any{}); err != nil || res.IsError {
		t.Fatalf("fx__go_endless: %v %v", err, res)
	}
	pages := func() int {
		b, _ := os.ReadFile(marker)
		return strings.Count(string(b), "page\n")
	}
	// Wait until the listing has stopped growing for a while.
	last, still := -1, 0
	for deadline := time.Now().Add(20 * time.Second); still < 10; time.Sleep(100 * time.Millisecond) {
		n := pages()
		if n == last && n > 0 {
			still++
		} else {
			still = 0
		}
		last = n
		if time.Now().After(deadline) {
			t.Fatalf("after 20s the gateway is still listing the endless server's tools: %d pages so far", n)
		}
	}
	if last > maxListPages+1 {
		t.Errorf("the gateway fetched %d pages, more than the bound of %d", last, maxListPages)
	}
	// The tools it had stay callable.
	if res, err := h.call(t, "fx__pid", map[string]any{}); err != nil || res.IsError {
		t.Errorf("fx__pid after the endless listing: %v %v", err, res)
	}
}

// TestListChangedFloodIsCoalesced: every tools/list_changed a server
// sends used to start a resync goroutine of its own, each waiting for the
// one before: a server writing notifications faster than a listing takes
// piles goroutines up in the gateway without bound. Notifications that
// arrive while a resync is pending must fold into it.
func TestListChangedFloodIsCoalesced(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "marker")
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"fx":%s}}`, fixtureServer(t, marker)))
	before := runtime.NumGoroutine()
	if res, err := h.call(t, "fx__flood_changed", map[string]any{}); err != nil || res.IsError {
		t.Fatalf("fx__flood_changed: %v %v", err, res)
	}
	peak := 0
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		peak = max(peak, runtime.NumGoroutine()-before)
	}
	if peak > 100 {
		t.Errorf("5000 list_changed notifications raised the gateway's goroutines by up to %d", peak)
	}
	if res, err := h.call(t, "fx__pid", map[string]any{}); err != nil || res.IsError {
		t.Errorf("fx__pid after the flood: %v %v", err, res)
	}
}
