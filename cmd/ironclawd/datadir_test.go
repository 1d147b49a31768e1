package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

// TestMCPAuditSurvivesRootRemoval: the real gateway, with its store in a
// --data-dir (created 0700), records tool calls there and not in the
// runtime root; the root is then removed (as a reboot empties the tmpfs
// /run/ironclaw) and the audit log is still whole, and a gateway on the
// recreated root (data directory given by IRONCLAW_DATA_DIR this time)
// appends to it.
func TestMCPAuditSurvivesRootRemoval(t *testing.T) {
	dir, bin, _, entry := mcpFixture(t)
	root := testroot.New(t)
	data := filepath.Join(dir, "var", "lib", "ironclaw")
	cfg := filepath.Join(dir, "mcp.json")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"mcpServers":{"ev":{"command":"node","args":[%q],
		"ironclaw":{"backend":"none","approval":{"rules":[{"tool":"echo","class":"green"}]}}}}}`, entry)), 0o600)

	call := func(msg string, env []string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var stderr strings.Builder
		serve := exec.Command(bin, append(append([]string{"--root", root}, args...), "mcp", "serve", "--config", cfg, "--name", "dd")...)
		serve.Env = append(os.Environ(), env...)
		serve.Stderr = &stderr
		c := mcp.NewClient(&mcp.Implementation{Name: "data-dir", Version: "1"}, nil)
		cs, err := c.Connect(ctx, &mcp.CommandTransport{Command: serve}, nil)
		if err != nil {
			t.Fatalf("connect: %v\n%s", err, stderr.String())
		}
		defer cs.Close()
		r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "ev__echo", Arguments: map[string]any{"message": msg}})
		if err != nil || r.IsError || !strings.Contains(mustText(r), msg) {
			t.Fatalf("echo %q: %v %q\ngateway stderr:\n%s", msg, err, mustText(r), stderr.String())
		}
	}
	audit := func(args ...string) []string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"--root", root, "audit", "--json"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("audit: %v\n%s", err, out)
		}
		var msgs []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			var r store.AuditRecord
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("audit line %q: %v", line, err)
			}
			if r.Decision == store.DecisionAllowed {
				var a struct{ Message string }
				json.Unmarshal(r.Arguments, &a)
				msgs = append(msgs, a.Message)
			}
		}
		return msgs
	}

	call("before the reboot", nil, "--data-dir", data)
	if fi, err := os.Stat(data); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data directory: %v %v; want mode 0700", fi, err)
	}
	if _, err := os.Stat(datadir.Path(root)); !os.IsNotExist(err) {
		t.Fatalf("a store in the runtime root: %v", err)
	}
	if got := audit("--data-dir", data); strings.Join(got, "|") != "before the reboot" {
		t.Fatalf("audit before the reboot: %q", got)
	}

	// The reboot empties the runtime root.
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if got := audit("--data-dir", data); strings.Join(got, "|") != "before the reboot" {
		t.Fatalf("audit after removing the root: %q", got)
	}
	call("after the reboot", []string{"IRONCLAW_DATA_DIR=" + data})
	if _, err := os.Stat(root); err != nil {
		t.Fatalf("the gateway did not recreate its root: %v", err)
	}
	if got := audit("--data-dir", data); strings.Join(got, "|") != "before the reboot|after the reboot" {
		t.Fatalf("audit after the reboot: %q", got)
	}
	// Without --data-dir a custom root is its own data directory: this
	// root has no store.
	if out, err := exec.Command(bin, "--root", root, "audit").CombinedOutput(); err == nil || !strings.Contains(string(out), "no audit log") {
		t.Errorf("audit of the root alone: %v\n%s", err, out)
	}
}
