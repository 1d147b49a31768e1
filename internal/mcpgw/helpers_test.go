package mcpgw

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// repoRoot is the module root (two levels above this package).
func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// nodeModules returns the node_modules that scripts/install-mcp-servers.sh
// filled, gating the test on it.
func nodeModules(t testing.TB) string {
	t.Helper()
	nm := os.Getenv("IRONCLAW_MCP_NODE_MODULES")
	if nm == "" {
		nm = filepath.Join(repoRoot(t), ".cache", "npm", "node_modules")
	}
	_, err := os.Stat(filepath.Join(nm, "@modelcontextprotocol", "server-everything", "dist", "index.js"))
	testutil.Require(t, err == nil, "needs the npm MCP servers: run scripts/install-mcp-servers.sh (or set IRONCLAW_MCP_NODE_MODULES)")
	testutil.RequireCommand(t, "node")
	return nm
}

func everythingEntry(nm string) string {
	return filepath.Join(nm, "@modelcontextprotocol", "server-everything", "dist", "index.js")
}

func filesystemEntry(nm string) string {
	return filepath.Join(nm, "@modelcontextprotocol", "server-filesystem", "dist", "index.js")
}

// testLogger writes to the test log (visible with -v or on failure).
func testLogger(_ testing.TB) *slog.Logger {
	if os.Getenv("IRONCLAW_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type harness struct {
	gw     *Gateway
	client *mcp.ClientSession
	store  *store.Store
	queue  *approval.Queue
	mu     sync.Mutex
	logs   []*mcp.LoggingMessageParams
	prog   []*mcp.ProgressNotificationParams
	upd    []string // URIs of resources/updated notifications
	tlc    int
}

type harnessOpt func(*Options)

// startGateway builds a gateway from cfgJSON, starts it, and connects an
// in-memory client to it.
func startGateway(t *testing.T, cfgJSON string, opts ...harnessOpt) *harness {
	t.Helper()
	cfg, err := ParseConfig([]byte(cfgJSON))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), datadir.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{store: st, queue: approval.NewQueue()}
	o := Options{
		Config: cfg, Queue: h.queue, Store: st, Logger: testLogger(t), Name: "test",
		Launcher:   &Launcher{Binary: "/nonexistent/ironclaw", Logger: testLogger(t)},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		InitTimeout: 30 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	gw, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	h.gw = gw
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := gw.Start(ctx); err != nil {
		gw.Close()
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { gw.Close() })
	st1, ct := mcp.NewInMemoryTransports()
	if _, err := gw.Server().Connect(ctx, st1, nil); err != nil {
		t.Fatal(err)
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "test-client", Version: "1"}, &mcp.ClientOptions{
		LoggingMessageHandler: func(_ context.Context, r *mcp.LoggingMessageRequest) {
			h.mu.Lock()
			h.logs = append(h.logs, r.Params)
			h.mu.Unlock()
		},
		ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) {
			h.mu.Lock()
			h.prog = append(h.prog, r.Params)
			h.mu.Unlock()
		},
		ResourceUpdatedHandler: func(_ context.Context, r *mcp.ResourceUpdatedNotificationRequest) {
			h.mu.Lock()
			h.upd = append(h.upd, r.Params.URI)
			h.mu.Unlock()
		},
		CreateMessageHandler: func(_ context.Context, r *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			return &mcp.CreateMessageResult{Model: "test-model", Role: "assistant", Content: &mcp.TextContent{Text: "hi from the client"}}, nil
		},
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
			h.mu.Lock()
			h.tlc++
			h.mu.Unlock()
		},
	})
	cs, err := c.Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	h.client = cs
	return h
}

func (h *harness) toolNames(t *testing.T) []string {
	t.Helper()
	res, err := h.client.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
	}
	return names
}

func (h *harness) call(t *testing.T, name string, args any) (*mcp.CallToolResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return h.client.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
}

func text(r *mcp.CallToolResult) string {
	var parts []string
	for _, c := range r.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

// audit waits until n outcome records exist (records other than
// DecisionStarted) and returns them. It checks that every call that ran
// (allowed or approved) has a started record written before its outcome.
func (h *harness) audit(t *testing.T, n int) []store.AuditRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		all, err := h.store.Audit(context.Background(), store.AuditFilter{})
		if err != nil {
			t.Fatal(err)
		}
		recs := outcomes(t, all)
		if len(recs) >= n || time.Now().After(deadline) {
			if len(recs) != n {
				b, _ := json.MarshalIndent(all, "", " ")
				t.Fatalf("%d audit outcome records, want %d:\n%s", len(recs), n, b)
			}
			return recs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// outcomes drops the started records of all, checking that each call that
// ran has one before its outcome.
func outcomes(t *testing.T, all []store.AuditRecord) []store.AuditRecord {
	t.Helper()
	var out []store.AuditRecord
	var started []store.AuditRecord
	for _, r := range all {
		if r.Decision == DecisionStarted {
			started = append(started, r)
			continue
		}
		out = append(out, r)
		if r.Decision != store.DecisionAllowed && r.Decision != store.DecisionApproved {
			continue
		}
		i := slices.IndexFunc(started, func(s store.AuditRecord) bool {
			return s.Server == r.Server && s.Tool == r.Tool && s.Session == r.Session && string(s.Arguments) == string(r.Arguments) &&
				s.Class == r.Class && s.Approver == r.Approver
		})
		if i < 0 {
			t.Fatalf("call %d (%s %s, %s) ran without a started record before it", r.ID, r.Server, r.Tool, r.Decision)
		}
		started = slices.Delete(started, i, i+1)
	}
	return out
}

// waitHeld waits for one pending approval.
func (h *harness) waitHeld(t *testing.T) approval.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var v uint64
	for {
		l, ver := h.queue.List()
		if len(l) > 0 {
			return l[0]
		}
		if ctx.Err() != nil {
			t.Fatal("no call was held for approval")
		}
		v = h.queue.WaitChange(ctx, ver)
		_ = v
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// buildIronclaw builds cmd/ironclaw, and the ironclawd its serve and mcp
// run, into a temp dir once per test binary.
var buildOnce struct {
	sync.Once
	path string
	err  error
	out  []byte
}

func ironclawBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		// IRONCLAW_TEST_BINARY uses a prebuilt binary (with ironclawd next
		// to it) instead of building one.
		if p := os.Getenv("IRONCLAW_TEST_BINARY"); p != "" {
			buildOnce.path = p
			return
		}
		dir, err := os.MkdirTemp("", "ironclaw-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "ironclaw")
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/ironclaw", "./cmd/ironclawd")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOnce.out, buildOnce.err = cmd.CombinedOutput()
	})
	if buildOnce.err != nil {
		t.Fatalf("go build ./cmd/ironclaw ./cmd/ironclawd: %v\n%s", buildOnce.err, buildOnce.out)
	}
	return buildOnce.path
}

// requireJail gates a test on `ironclaw run -- /bin/true` working with the
// freshly built binary (the jail lands with the foundation issue).
func requireJail(t testing.TB) string {
	t.Helper()
	bin := ironclawBinary(t)
	root := testroot.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--root", root, "run", "--", "/bin/true").CombinedOutput()
	testutil.Require(t, err == nil, "needs a working `ironclaw run` jail (probe `ironclaw run -- /bin/true`: "+strings.TrimSpace(firstLine(string(out)))+errString(err)+")")
	return bin
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), datadir.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newQueue() *approval.Queue { return approval.NewQueue() }
