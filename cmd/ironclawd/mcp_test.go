package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestMCPGatewayEndToEnd drives the real binary like a user: `ironclaw mcp
// serve` over HTTP with a token in front of the real server-everything,
// an MCP client calling through it, `ironclaw approvals approve` releasing
// a held call, and `ironclaw audit --json` showing the records.
func TestMCPGatewayEndToEnd(t *testing.T) {
	dir, bin, _, entry := mcpFixture(t)
	root := testroot.New(t) // short: holds Unix sockets; sandboxes' uids search it
	cfg := filepath.Join(dir, "mcp.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"mcpServers":{"ev":{"command":"node","args":[%q],
		"ironclaw":{"backend":"none","trust_hints":true,"approval":{"rules":[{"tool":"echo","args":{"message":{"any_word":["danger"]}},"class":"red"}]}}}}}`, entry)), 0o600)

	// No token, no TCP.
	out, err := exec.Command(bin, "--root", root, "mcp", "serve", "--config", cfg, "--http", "127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "requires a bearer token") {
		t.Fatalf("served TCP without a token: %v\n%s", err, out)
	}

	token := "test-token-0123456789abcdef"
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	serve := exec.CommandContext(ctx, bin, "--root", root, "mcp", "serve", "--config", cfg, "--name", "e2e",
		"--http", "127.0.0.1:0", "--token-file", tokenFile)
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	stderr, _ := serve.StderrPipe()
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { serve.Process.Kill(); serve.Wait() }()
	addrRe := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
	sc := bufio.NewScanner(stderr)
	var addr string
	for sc.Scan() {
		if m := addrRe.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
			break
		}
	}
	if addr == "" {
		t.Fatal("gateway did not say where it listens")
	}
	go func() {
		for sc.Scan() {
		}
	}()
	url := "http://" + addr

	// Without the token: 401.
	resp, err := http.Post(url, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: HTTP %d", resp.StatusCode)
	}

	hc := &http.Client{Transport: bearer{token}}
	c := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: hc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
	}
	if !strings.Contains(strings.Join(names, " "), "ev__echo") || !strings.Contains(strings.Join(names, " "), "ironclaw__sandbox_run") {
		t.Fatalf("tools: %v", names)
	}
	if r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "ev__echo", Arguments: map[string]any{"message": "safe"}}); err != nil || r.IsError {
		t.Fatalf("green call: %v", err)
	}

	done := make(chan *mcp.CallToolResult, 1)
	go func() {
		r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "ev__echo", Arguments: map[string]any{"message": "danger ahead"}})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	var id string
	deadline := time.Now().Add(30 * time.Second)
	for id == "" {
		out, err := exec.Command(bin, "--root", root, "approvals", "--json").Output()
		if err == nil {
			var reqs []struct{ ID, Tool string }
			json.Unmarshal(out, &reqs)
			if len(reqs) == 1 && reqs[0].Tool == "ev__echo" {
				id = reqs[0].ID
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("held call never listed: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err = exec.Command(bin, "--root", root, "approvals", "show", id).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "danger ahead") || !strings.Contains(string(out), "held because") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "--root", root, "approvals", "approve", id, "--note", "ok by test").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "approved "+id) {
		t.Fatalf("approve: %v\n%s", err, out)
	}
	if r := <-done; r == nil || r.IsError {
		t.Fatalf("approved call failed: %+v", r)
	}

	out, err = exec.Command(bin, "--root", root, "audit", "--json", "--server", "ev").Output()
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	var recs []store.AuditRecord
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r store.AuditRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	// Each call that ran: a started record before it ran, then its outcome.
	if len(recs) != 4 || recs[0].Decision != "started" || recs[1].Decision != "allowed" ||
		recs[2].Decision != "started" || recs[3].Decision != "approved" ||
		!strings.HasPrefix(recs[3].Approver, fmt.Sprintf("uid %d", os.Getuid())) || recs[3].Approver != recs[2].Approver ||
		recs[3].Gateway != "e2e" {
		t.Fatalf("audit records: %s", out)
	}
	out, err = exec.Command(bin, "--root", root, "audit", "--decision", "approved").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "danger ahead") {
		t.Fatalf("audit table: %v\n%s", err, out)
	}
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// TestMCPServeCreatesItsRoot starts `ironclaw mcp serve` on a state root
// that does not exist yet, with a jailed server, as on a fresh host: the
// gateway must create the root so that the sandboxes' unprivileged uids
// can search it (the jail refuses a root they cannot), and the jailed
// server must answer.
func TestMCPServeCreatesItsRoot(t *testing.T) {
	testutil.RequireRoot(t)
	dir, bin, nm, _ := mcpFixture(t)
	probeRoot := testroot.New(t)
	out, err := exec.Command(bin, "--root", probeRoot, "run", "--", "/bin/true").CombinedOutput()
	testutil.Require(t, err == nil, fmt.Sprintf("needs a working `ironclaw run` jail (probe: %v %s)", err, out))

	root := filepath.Join(testutil.SearchableTempDir(t), "fresh", "root")
	testroot.Track(t, root)
	const guest = "/opt/mcp/node_modules"
	cfg := filepath.Join(dir, "mcp.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"mcpServers":{"ev":{"command":"node","args":[%q],
		"ironclaw":{"mounts":[%q],"approval":{"rules":[{"tool":"echo","class":"green"}]}}}}}`,
		guest+"/@modelcontextprotocol/server-everything/dist/index.js", nm+":"+guest+":ro")), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr strings.Builder
	serve := exec.Command(bin, "--root", root, "mcp", "serve", "--config", cfg, "--name", "fresh")
	serve.Stderr = &stderr
	c := mcp.NewClient(&mcp.Implementation{Name: "fresh-root", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.CommandTransport{Command: serve}, nil)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, stderr.String())
	}
	defer cs.Close()
	r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "ev__echo", Arguments: map[string]any{"message": "from a fresh root"}})
	if err != nil || r.IsError || !strings.Contains(mustText(r), "from a fresh root") {
		t.Fatalf("echo through the jailed server: %v %q\ngateway stderr:\n%s", err, mustText(r), stderr.String())
	}
	st, err := os.Stat(root)
	if err != nil || st.Mode().Perm() != 0o711 {
		t.Fatalf("state root: %v, mode %v; want 0711", err, st.Mode().Perm())
	}
}

func mustText(r *mcp.CallToolResult) string {
	if r == nil {
		return ""
	}
	var parts []string
	for _, c := range r.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "\n")
}

// mcpFixture requires the npm server-everything and node, builds ironclaw
// and ironclawd into a fresh directory, and returns that directory, the
// ironclaw binary, the node_modules directory and the server's entry
// script.
func mcpFixture(t *testing.T) (dir, bin, nm, entry string) {
	t.Helper()
	nm = os.Getenv("IRONCLAW_MCP_NODE_MODULES")
	if nm == "" {
		nm = filepath.Join("..", "..", ".cache", "npm", "node_modules")
	}
	nm, _ = filepath.Abs(nm)
	entry = filepath.Join(nm, "@modelcontextprotocol", "server-everything", "dist", "index.js")
	_, err := os.Stat(entry)
	testutil.Require(t, err == nil, "needs the npm MCP servers: run scripts/install-mcp-servers.sh")
	testutil.RequireCommand(t, "node")
	dir = t.TempDir()
	// The tests drive the lean ironclaw, which forwards mcp, approvals and
	// audit to the ironclawd built next to it.
	if err := testutil.BuildCommands(dir, "ironclaw", "ironclawd"); err != nil {
		t.Fatal(err)
	}
	return dir, filepath.Join(dir, "ironclaw"), nm, entry
}
