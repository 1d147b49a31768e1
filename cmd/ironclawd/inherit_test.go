package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

// TestInheritedDescriptorsStayWithIronclaw: a descriptor the ironclaw
// process inherits without close-on-exec (a shell's `exec 9>file`, a CI
// runner's pipe) reaches none of the processes it starts outside a
// sandbox, here an MCP server with backend "none". The server lists the
// targets of its descriptors before it becomes the real server.
func TestInheritedDescriptorsStayWithIronclaw(t *testing.T) {
	dir, bin, _, entry := mcpFixture(t)
	root := testroot.New(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	pipe := fmt.Sprintf("pipe:[%d]", st.Ino)
	fds := filepath.Join(dir, "fds")
	cfg := filepath.Join(dir, "mcp.json")
	script := fmt.Sprintf(`for f in /proc/$$/fd/*; do readlink "$f"; done > %s.tmp; mv %s.tmp %s; exec node %s`, fds, fds, fds, entry)
	os.WriteFile(cfg, []byte(fmt.Sprintf(`{"mcpServers":{"ev":{"command":"sh","args":["-c",%q],"ironclaw":{"backend":"none"}}}}`, script)), 0o600)
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("test-token-0123456789abcdef\n"), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	serve := exec.CommandContext(ctx, bin, "--root", root, "mcp", "serve", "--config", cfg, "--name", "inherit",
		"--http", "127.0.0.1:0", "--token-file", token)
	serve.Cancel = func() error { return serve.Process.Signal(os.Interrupt) }
	// Without close-on-exec, as a shell passes `exec 9>file` on.
	serve.ExtraFiles = []*os.File{w}
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { serve.Process.Signal(os.Interrupt); serve.Wait() }()
	var got []byte
	for ctx.Err() == nil {
		if got, err = os.ReadFile(fds); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the MCP server never listed its descriptors: %v", err)
	}
	if strings.Contains(string(got), pipe) {
		t.Errorf("the MCP server inherited ironclaw's inherited %s:\n%s", pipe, got)
	}
}
