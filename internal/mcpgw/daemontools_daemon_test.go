package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// These tests drive the real binaries: `ironclaw serve` (the daemon, with
// a temporary state root, as e2e/daemon_test.go starts it) and `ironclaw
// mcp serve` (the gateway, over stdio), with an MCP client calling the
// gateway's tools, the approvals API deciding held calls, and the audit
// log read back from the store.

// lockedBuffer collects a process's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// daemonRoot returns a fresh state root, checked for leaked sandboxes when
// the test ends (after the daemon stopped), its parent cgroups then removed
// (testroot).
func daemonRoot(t *testing.T) string {
	t.Helper()
	dir := testroot.New(t)
	t.Cleanup(func() {
		if err := testutil.Leaks(dir, state.NameOf(dir)); err != nil {
			t.Errorf("state root %s: %v", dir, err)
		}
	})
	return dir
}

// startDaemon starts `ironclaw serve` on root (socket: root's, or the
// given one), waits until it answers, and on cleanup destroys every
// sandbox left and stops it with SIGTERM.
func startDaemon(t *testing.T, bin, root, socket string) *client.Client {
	t.Helper()
	args := []string{"--root", root, "serve", "--sweep-interval", "100ms"}
	if socket == "" {
		socket = filepath.Join(root, "ironclaw.sock")
	} else {
		args = append(args, "--socket", socket)
	}
	log := &lockedBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	for deadline := time.Now().Add(30 * time.Second); !client.Reachable(context.Background(), socket, time.Second); {
		select {
		case <-exited:
			t.Fatalf("daemon exited at start:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("daemon did not answer:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := client.New(client.Config{Socket: socket})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if l, err := c.List(ctx, nil); err == nil {
			for _, s := range l {
				if err := c.Destroy(ctx, s.ID); err != nil && !client.IsCode(err, api.CodeNotFound) {
					t.Errorf("cleanup: destroy %s: %v", s.ID, err)
				}
			}
		}
		c.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("daemon did not stop on SIGTERM:\n%s", log.String())
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	return c
}

// gatewayProc is an `ironclaw mcp serve` process with a client session.
type gatewayProc struct {
	cs   *mcp.ClientSession
	log  *lockedBuffer
	root string
	name string
}

// startGatewayProc starts the gateway on root with the config cfgJSON,
// connected to an MCP client over its stdio.
func startGatewayProc(t *testing.T, bin, root, name, cfgJSON string) *gatewayProc {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "mcp.json")
	if err := os.WriteFile(cfg, []byte(cfgJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &gatewayProc{log: &lockedBuffer{}, root: root, name: name}
	cmd := exec.Command(bin, "--root", root, "--debug", "mcp", "serve", "--config", cfg, "--name", name, "--approval-timeout", "1m")
	cmd.Stderr = g.log
	cmd.Env = append(os.Environ(), "IRONCLAW_SOCKET=") // the root's socket unless the config names one
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "daemon-tools-test", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect to the gateway: %v\n%s", err, g.log.String())
	}
	g.cs = cs
	t.Cleanup(func() {
		cs.Close()
		if t.Failed() {
			t.Logf("gateway %s log:\n%s", name, g.log.String())
		}
	})
	return g
}

func (g *gatewayProc) tools(t *testing.T) []string {
	t.Helper()
	res, err := g.cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
	}
	return names
}

func (g *gatewayProc) call(t *testing.T, tool string, args any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := g.cs.CallTool(ctx, &mcp.CallToolParams{Name: "ironclaw__" + tool, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	return r
}

// structured decodes a result's structured content into v.
func structured(t *testing.T, r *mcp.CallToolResult, v any) {
	t.Helper()
	b, err := json.Marshal(r.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("structured content %s: %v", b, err)
	}
}

// approvals returns the gateway's approvals client.
func (g *gatewayProc) approvals() *approval.Client {
	return approval.NewClient(filepath.Join(approval.SocketDir(g.root), g.name+".sock"))
}

// held waits for exactly one pending call and returns it.
func (g *gatewayProc) held(t *testing.T) approval.Request {
	t.Helper()
	ac := g.approvals()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var version uint64
	for {
		l, v, err := ac.List(ctx, version, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(l) == 1 {
			return l[0]
		}
		if len(l) > 1 {
			t.Fatalf("%d calls held, want 1", len(l))
		}
		version = v
	}
}

// heldCall starts a call that will be held and returns the held request
// and a function waiting for the call's result.
func (g *gatewayProc) heldCall(t *testing.T, tool string, args any) (approval.Request, func() *mcp.CallToolResult) {
	t.Helper()
	done := make(chan *mcp.CallToolResult, 1)
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		r, err := g.cs.CallTool(ctx, &mcp.CallToolParams{Name: "ironclaw__" + tool, Arguments: args})
		if err != nil {
			errc <- err
			return
		}
		done <- r
	}()
	req := g.held(t)
	return req, func() *mcp.CallToolResult {
		select {
		case r := <-done:
			return r
		case err := <-errc:
			t.Fatalf("%s: %v", tool, err)
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s: no result", tool)
		}
		return nil
	}
}

func (g *gatewayProc) decide(t *testing.T, id string, approve bool) approval.Decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := g.approvals().Decide(ctx, id, approve, "test")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// download reads a file of a sandbox straight from the daemon.
func download(t *testing.T, c *client.Client, id, p string) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := c.Download(context.Background(), id, p, &b); err != nil {
		t.Fatalf("download %s from %s: %v", p, id, err)
	}
	return b.String()
}

var daemonToolNames = []string{"ironclaw__sandbox_create", "ironclaw__sandbox_destroy", "ironclaw__sandbox_exec",
	"ironclaw__sandbox_list", "ironclaw__sandbox_read_file", "ironclaw__sandbox_write_file"}

func hasAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func hasNone(have, want []string) bool {
	for _, w := range want {
		if slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// TestDaemonToolsThroughRealDaemon: create → write → exec (reads the file)
// → read → destroy through the gateway against the real daemon; a red
// write held with a diff card read through the sandbox, then approved, and
// another denied; sandboxes the gateway did not create refused; the audit
// log holds every call.
func TestDaemonToolsThroughRealDaemon(t *testing.T) {
	bin := requireJail(t)
	testutil.RequireRoot(t)
	root := daemonRoot(t)
	dc := startDaemon(t, bin, root, "")
	ctx := context.Background()

	// exec and destroy are made green by the user's rules, writes under
	// /workspace/scratch too; other writes stay red (the default).
	g := startGatewayProc(t, bin, root, "gwt", `{"mcpServers":{},"ironclaw":{"approval":{"rules":[
		{"server":"ironclaw","tool":"sandbox_exec","class":"green"},
		{"server":"ironclaw","tool":"sandbox_destroy","class":"green"},
		{"server":"ironclaw","tool":"sandbox_write_file","args":{"path":{"under":"/workspace/scratch"}},"class":"green"}]}}}`)
	if names := g.tools(t); !hasAll(names, append(daemonToolNames, "ironclaw__sandbox_run")) {
		t.Fatalf("tools %v: want the daemon tools", names)
	}

	// Create (green: no mounts, no egress, default seccomp).
	r := g.call(t, "sandbox_create", map[string]any{"memory": "256m", "env": map[string]string{"GREETING": "hello"}, "labels": map[string]string{"purpose": "test"}})
	if r.IsError {
		t.Fatalf("create: %s", text(r))
	}
	var created SandboxInfo
	structured(t, r, &created)
	id := created.ID
	sb, err := dc.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != "running" || sb.Labels[OwnerLabel] != "gwt" || sb.Labels["purpose"] != "test" || *sb.Limits.MemoryBytes != 256<<20 ||
		sb.TTL != "1h0m0s" || sb.IdleTimeout != "30m0s" || !slices.Equal(sb.EnvNames, []string{"GREETING"}) {
		t.Fatalf("the daemon's view of the created sandbox: %+v", sb)
	}

	// Write (green under /workspace/scratch), exec reading it, read back.
	r = g.call(t, "sandbox_write_file", map[string]any{"sandbox": id, "path": "/workspace/scratch/in.txt", "content": "from the gateway\n", "parents": true})
	if r.IsError {
		t.Fatalf("write: %s", text(r))
	}
	r = g.call(t, "sandbox_exec", map[string]any{"sandbox": id, "stdin": "piped",
		"command": []string{"sh", "-c", "cat /workspace/scratch/in.txt; echo $GREETING $PWD; cat; echo err >&2; exit 3"}})
	var ex SandboxExecOutput
	structured(t, r, &ex)
	if !r.IsError || ex.ExitCode != 3 || ex.Stdout != "from the gateway\nhello /workspace\npiped" || ex.Stderr != "err\n" {
		t.Fatalf("exec: %+v (%q)", ex, text(r))
	}
	r = g.call(t, "sandbox_read_file", map[string]any{"sandbox": id, "path": "/workspace/scratch/in.txt"})
	var rd SandboxReadFileOutput
	structured(t, r, &rd)
	if r.IsError || rd.Encoding != "text" || rd.Content != "from the gateway\n" || rd.Size != 17 || rd.Truncated {
		t.Fatalf("read: %+v", rd)
	}
	// Binary content goes both ways as base64; a short read says so.
	r = g.call(t, "sandbox_write_file", map[string]any{"sandbox": id, "path": "/workspace/scratch/bin", "content_base64": "AAEC/w==", "mode": "0600"})
	if r.IsError {
		t.Fatalf("write base64: %s", text(r))
	}
	r = g.call(t, "sandbox_read_file", map[string]any{"sandbox": id, "path": "/workspace/scratch/bin"})
	structured(t, r, &rd)
	if r.IsError || rd.Encoding != "base64" || rd.ContentBase64 != "AAEC/w==" {
		t.Fatalf("read base64: %+v", rd)
	}
	if fi, err := dc.Stat(ctx, id, "/workspace/scratch/bin"); err != nil || fi.Mode != 0o600 {
		t.Errorf("mode of the written file: %+v %v", fi, err)
	}
	r = g.call(t, "sandbox_read_file", map[string]any{"sandbox": id, "path": "/workspace/scratch/in.txt", "max_bytes": 4})
	structured(t, r, &rd)
	if r.IsError || rd.Content != "from" || !rd.Truncated || rd.Size != 17 {
		t.Fatalf("short read: %+v", rd)
	}

	// A red write: held, its card a diff against the current content read
	// through the sandbox; approved, it lands.
	r = g.call(t, "sandbox_exec", map[string]any{"sandbox": id, "command": []string{"sh", "-c", "printf 'line1\\nline2\\n' > /workspace/notes.txt"}})
	if r.IsError {
		t.Fatalf("exec: %s", text(r))
	}
	req, result := g.heldCall(t, "sandbox_write_file", map[string]any{"sandbox": id, "path": "/workspace/notes.txt", "content": "line1\nCHANGED\n"})
	if req.Tool != "ironclaw__sandbox_write_file" || req.Card.Kind != approval.CardFile || req.Card.Path != "/workspace/notes.txt" ||
		!strings.Contains(req.Card.Diff, "-line2\n") || !strings.Contains(req.Card.Diff, "+CHANGED\n") || !strings.Contains(req.Card.Diff, " line1\n") {
		t.Fatalf("card: %+v", req.Card)
	}
	if got := download(t, dc, id, "/workspace/notes.txt"); got != "line1\nline2\n" {
		t.Fatalf("the held write ran before approval: %q", got)
	}
	if d := g.decide(t, req.ID, true); !strings.Contains(d.By, "uid 0") {
		t.Errorf("decided by %q", d.By)
	}
	if r := result(); r.IsError {
		t.Fatalf("approved write: %s", text(r))
	}
	if got := download(t, dc, id, "/workspace/notes.txt"); got != "line1\nCHANGED\n" {
		t.Fatalf("approved write: the file holds %q", got)
	}
	// A new file's card says so; denied, nothing is written.
	req, result = g.heldCall(t, "sandbox_write_file", map[string]any{"sandbox": id, "path": "/workspace/new.txt", "content": "nope\n"})
	if req.Card.Kind != approval.CardFile || req.Card.Note != "new file" || !strings.Contains(req.Card.Diff, "+nope") {
		t.Fatalf("card for a new file: %+v", req.Card)
	}
	g.decide(t, req.ID, false)
	if r := result(); !r.IsError || !strings.Contains(text(r), "denied") {
		t.Fatalf("denied write: %q", text(r))
	}
	if _, err := dc.Stat(ctx, id, "/workspace/new.txt"); !client.IsCode(err, api.CodeFileNotFound) {
		t.Fatalf("denied write: stat says %v", err)
	}
	// A create that weakens seccomp is red; denied, no sandbox appears.
	req, result = g.heldCall(t, "sandbox_create", map[string]any{"seccomp": "unconfined", "id": "weak"})
	g.decide(t, req.ID, false)
	if r := result(); !r.IsError {
		t.Fatalf("denied create: %q", text(r))
	}
	if _, err := dc.Get(ctx, "weak"); !client.IsCode(err, api.CodeNotFound) {
		t.Fatalf("denied create: %v", err)
	}

	// Sandboxes this gateway did not create: refused before classification
	// (nothing held), untouched, and not listed.
	if _, err := dc.Create(ctx, api.CreateRequest{ID: "foreign-plain"}); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Create(ctx, api.CreateRequest{ID: "foreign-other-gw", Labels: map[string]string{OwnerLabel: "someone-else"}}); err != nil {
		t.Fatal(err)
	}
	for _, fid := range []string{"foreign-plain", "foreign-other-gw", "no-such-sandbox"} {
		for tool, args := range map[string]map[string]any{
			"sandbox_exec":       {"sandbox": fid, "command": []string{"touch", "/workspace/pwned"}},
			"sandbox_read_file":  {"sandbox": fid, "path": "/etc/hostname"},
			"sandbox_write_file": {"sandbox": fid, "path": "/workspace/pwned", "content": "x"},
			"sandbox_destroy":    {"sandbox": fid},
		} {
			r := g.call(t, tool, args)
			if !r.IsError || !strings.Contains(text(r), "no such sandbox created by this gateway") {
				t.Errorf("%s on %s: %q", tool, fid, text(r))
			}
		}
	}
	for _, fid := range []string{"foreign-plain", "foreign-other-gw"} {
		if _, err := dc.Get(ctx, fid); err != nil {
			t.Errorf("%s after the refused destroy: %v", fid, err)
		}
		if _, err := dc.Stat(ctx, fid, "/workspace/pwned"); !client.IsCode(err, api.CodeFileNotFound) {
			t.Errorf("%s: a refused call wrote a file: %v", fid, err)
		}
	}
	if l, _, err := g.approvals().List(ctx, 0, 0); err != nil || len(l) != 0 {
		t.Errorf("held calls after the refused ones: %+v %v", l, err)
	}
	r = g.call(t, "sandbox_list", map[string]any{})
	var ls SandboxListOutput
	structured(t, r, &ls)
	if r.IsError || len(ls.Sandboxes) != 1 || ls.Sandboxes[0].ID != id || ls.Sandboxes[0].Labels[OwnerLabel] != "gwt" {
		t.Errorf("list: %+v", ls)
	}
	// A label filter narrows the gateway's own sandboxes; it cannot widen them.
	r = g.call(t, "sandbox_list", map[string]any{"labels": map[string]string{OwnerLabel: "someone-else"}})
	structured(t, r, &ls)
	if len(ls.Sandboxes) != 0 {
		t.Errorf("list of another gateway's sandboxes: %+v", ls)
	}

	// Destroy.
	if r := g.call(t, "sandbox_destroy", map[string]any{"sandbox": id}); r.IsError {
		t.Fatalf("destroy: %s", text(r))
	}
	if _, err := dc.Get(ctx, id); !client.IsCode(err, api.CodeNotFound) {
		t.Fatalf("after destroy: %v", err)
	}

	// The audit log, read back from the store the gateway wrote.
	st, err := store.Open(ctx, datadir.Path(root))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	all, err := st.Audit(ctx, store.AuditFilter{Server: BuiltinServer})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, rec := range all {
		if rec.Gateway != "gwt" {
			t.Errorf("record of gateway %q", rec.Gateway)
		}
		key := rec.Tool + " " + rec.Decision + " " + rec.Class
		count[key]++
		if rec.Tool == "sandbox_write_file" && rec.Decision == store.DecisionApproved && !strings.Contains(rec.Approver, "uid 0") {
			t.Errorf("approved write without its approver: %+v", rec)
		}
	}
	for key, n := range map[string]int{
		"sandbox_create allowed green":     1,
		"sandbox_create denied red":        1,
		"sandbox_write_file allowed green": 2,
		"sandbox_write_file approved red":  1,
		"sandbox_write_file denied red":    1,
		"sandbox_exec allowed green":       2,
		"sandbox_read_file allowed green":  3,
		"sandbox_exec blocked ":            3,
		"sandbox_read_file blocked ":       3,
		"sandbox_write_file blocked ":      3,
		"sandbox_destroy blocked ":         3,
		"sandbox_destroy allowed green":    1,
		"sandbox_list allowed green":       2,
		"sandbox_write_file started red":   1,
		"sandbox_destroy started green":    1,
		"sandbox_write_file started green": 2,
		"sandbox_create started green":     1,
		"sandbox_exec started green":       2,
		"sandbox_read_file started green":  3,
		"sandbox_list started green":       2,
	} {
		if count[key] != n {
			t.Errorf("audit: %d records %q, want %d (all: %v)", count[key], key, n, count)
		}
	}
}

// TestDaemonToolsOfferedOnlyWithDaemon: without a daemon on the socket the
// gateway checks, the daemon tools are absent (sandbox_run stays); with
// one on a configured socket they appear; "disabled" turns them off.
func TestDaemonToolsOfferedOnlyWithDaemon(t *testing.T) {
	bin := requireJail(t)
	testutil.RequireRoot(t)
	root := daemonRoot(t)
	const noDaemon = `{"mcpServers":{}}`
	names := startGatewayProc(t, bin, root, "gw-none", noDaemon).tools(t)
	if !slices.Contains(names, "ironclaw__sandbox_run") || !hasNone(names, daemonToolNames) {
		t.Fatalf("no daemon: tools %v", names)
	}
	sock := filepath.Join(testutil.SearchableTempDir(t), "d.sock")
	startDaemon(t, bin, root, sock)
	// The daemon listens elsewhere than the root's socket: still absent.
	if names := startGatewayProc(t, bin, root, "gw-root", noDaemon).tools(t); !hasNone(names, daemonToolNames) {
		t.Errorf("daemon on another socket: tools %v", names)
	}
	if names := startGatewayProc(t, bin, root, "gw-conf", fmt.Sprintf(`{"mcpServers":{},"ironclaw":{"daemon":{"socket":%q}}}`, sock)).tools(t); !hasAll(names, daemonToolNames) {
		t.Errorf("daemon on the configured socket: tools %v", names)
	}
	if names := startGatewayProc(t, bin, root, "gw-off", fmt.Sprintf(`{"mcpServers":{},"ironclaw":{"daemon":{"socket":%q,"disabled":true}}}`, sock)).tools(t); !hasNone(names, daemonToolNames) {
		t.Errorf("daemon tools disabled: tools %v", names)
	}
}
