package mcpgw

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

// These tests run the servers inside the real `ironclaw run` jail, built
// from this repository. They are gated on the jail working
// (`ironclaw run -- /bin/true`), so they skip until the jail has landed
// and must pass under IRONCLAW_TEST_PRIVILEGED=1.

// guestModules is where the npm packages appear inside the sandbox.
const guestModules = "/opt/mcp/node_modules"

func withJail(bin, root string) harnessOpt {
	return func(o *Options) {
		o.Launcher = &Launcher{Binary: bin, Root: root, Logger: o.Logger}
	}
}

// shortRoot is a state root the sandboxes' unprivileged uids can search,
// its parent cgroups removed when the test ends.
func shortRoot(t *testing.T) string { return testroot.New(t) }

func TestSandboxedEverything(t *testing.T) {
	nm := nodeModules(t)
	bin := requireJail(t)
	cfg := fmt.Sprintf(`{"mcpServers":{"ev":{"command":"node","args":[%q],
		"ironclaw":{"mounts":[%q],"trust_hints":true}}}}`,
		guestModules+"/@modelcontextprotocol/server-everything/dist/index.js", nm+":"+guestModules+":ro")
	h := startGateway(t, cfg, withJail(bin, shortRoot(t)))
	r, err := h.call(t, "ev__echo", map[string]any{"message": "from the jail"})
	if err != nil || r.IsError || !strings.Contains(text(r), "from the jail") {
		t.Fatalf("echo in the jail: %v %q", err, text(r))
	}
}

// TestSandboxedFilesystemServer: server-filesystem is told it may use all
// of "/", but the jail only grants it one directory (and the read-only
// npm tree): a host file outside is invisible, the granted one is there,
// and a write is held, shown as a diff against the current content, and
// lands on the host only once approved.
func TestSandboxedFilesystemServer(t *testing.T) {
	nm := nodeModules(t)
	bin := requireJail(t)
	granted := t.TempDir()
	os.WriteFile(filepath.Join(granted, "notes.txt"), []byte("line one\nline two\n"), 0o644)
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "secret.txt")
	os.WriteFile(secret, []byte("host secret"), 0o644)
	os.Chmod(granted, 0o777)
	os.Chmod(filepath.Join(granted, "notes.txt"), 0o666)

	cfg := fmt.Sprintf(`{"mcpServers":{"fs":{"command":"node","args":[%q,"/"],
		"ironclaw":{"mounts":[%q,%q],"trust_hints":true}}}}`,
		guestModules+"/@modelcontextprotocol/server-filesystem/dist/index.js",
		nm+":"+guestModules+":ro", granted+":/data:rw")
	h := startGateway(t, cfg, withJail(bin, shortRoot(t)))

	r, err := h.call(t, "fs__read_text_file", map[string]any{"path": "/data/notes.txt"})
	if err != nil || r.IsError || !strings.Contains(text(r), "line two") {
		t.Fatalf("read granted file: %v %q", err, text(r))
	}
	r, err = h.call(t, "fs__read_text_file", map[string]any{"path": secret})
	if err == nil && !r.IsError {
		t.Fatalf("the sandboxed server read a host file outside its grant: %q", text(r))
	}
	if strings.Contains(text(r), "host secret") {
		t.Fatal("host secret leaked")
	}

	done := make(chan *mcp.CallToolResult, 1)
	go func() {
		r, err := h.call(t, "fs__write_file", map[string]any{"path": "/data/notes.txt", "content": "line one\nline 2\n"})
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	req := h.waitHeld(t)
	if req.Card.Kind != approval.CardFile || !strings.Contains(req.Card.Diff, "-line two\n+line 2\n") {
		t.Fatalf("card: %+v", req.Card)
	}
	if b, _ := os.ReadFile(filepath.Join(granted, "notes.txt")); string(b) != "line one\nline two\n" {
		t.Fatal("the file changed before approval")
	}
	h.queue.Decide(req.ID, approval.Decision{Approve: true, By: "tester"})
	if r := <-done; r == nil || r.IsError {
		t.Fatalf("approved write failed: %+v", r)
	}
	if b, _ := os.ReadFile(filepath.Join(granted, "notes.txt")); string(b) != "line one\nline 2\n" {
		t.Fatalf("host file after approved write: %q", b)
	}
	recs := h.audit(t, 3)
	if recs[2].Decision != store.DecisionApproved || recs[2].Tool != "write_file" {
		t.Errorf("audit %+v", recs[2])
	}
}

// TestSandboxedServerHasNoNetwork runs node with the filesystem server's
// exact sandbox (same launcher, same config) and a probe in place of the
// server: it cannot reach a listener on the host's loopback.
func TestSandboxedServerHasNoNetwork(t *testing.T) {
	nm := nodeModules(t)
	bin := requireJail(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	probe := fmt.Sprintf(`const s=require("net").connect(%d,"127.0.0.1");s.on("connect",()=>{console.log("CONNECTED");process.exit(0)});s.on("error",e=>{console.log("BLOCKED "+e.code);process.exit(0)});setTimeout(()=>{console.log("BLOCKED timeout");process.exit(0)},3000)`, port)
	cfg, err := ParseConfig([]byte(fmt.Sprintf(`{"mcpServers":{"fs":{"command":"node","args":["-e",%q],
		"ironclaw":{"mounts":[%q,%q]}}}}`, probe, nm+":"+guestModules+":ro", t.TempDir()+":/data:rw")))
	if err != nil {
		t.Fatal(err)
	}
	l := &Launcher{Binary: bin, Root: shortRoot(t), Logger: testLogger(t)}
	cmd, done, err := l.Command(context.Background(), cfg.Servers["fs"], "mcp-netprobe")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	done()
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "BLOCKED") || accepted.Load() != 0 {
		t.Fatalf("sandboxed server reached the host network: %s (accepted %d)", out, accepted.Load())
	}
	// Control: the same probe unsandboxed does connect, so the check can fail.
	ctl, _ := exec.Command("node", "-e", probe).CombinedOutput()
	if !strings.Contains(string(ctl), "CONNECTED") {
		t.Fatalf("control probe did not connect: %s", ctl)
	}
}

func TestSandboxRunBuiltin(t *testing.T) {
	bin := requireJail(t)
	root := shortRoot(t)
	sbx, err := SandboxRun(bin, root)
	if err != nil {
		t.Fatal(err)
	}
	h := startGateway(t, `{"mcpServers":{}}`, withJail(bin, root), func(o *Options) {
		o.Builtins = []Builtin{sbx}
		o.ApprovalTimeout = 200 * time.Millisecond
	})
	r, err := h.call(t, "ironclaw__sandbox_run", map[string]any{"command": []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	if !r.IsError || !strings.Contains(text(r), "exit code 3") || !strings.Contains(text(r), "out") || !strings.Contains(text(r), "err") {
		t.Fatalf("sandbox_run: %q", text(r))
	}
	r, err = h.call(t, "ironclaw__sandbox_run", map[string]any{"code": "echo $((6*7))"})
	if err != nil || r.IsError || !strings.Contains(text(r), "42") {
		t.Fatalf("sandbox_run code: %v %q", err, text(r))
	}
	// A mount makes it red: with nobody approving it times out and never runs.
	r, err = h.call(t, "ironclaw__sandbox_run", map[string]any{"command": []string{"true"}, "mounts": []string{t.TempDir() + ":/x:rw"}})
	if err != nil || !r.IsError || !strings.Contains(text(r), "needed approval") {
		t.Fatalf("sandbox_run with a mount: %v %q", err, text(r))
	}
}
