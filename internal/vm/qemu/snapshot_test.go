package qemu

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
)

// TestSnapshotRestore snapshots a booted VM to a file, restores a clone in
// a fresh QEMU and checks that the clone carries the template's state (a
// file written before the snapshot), runs commands, has been rekeyed (the
// template's token no longer opens its agent) and cleans up like any VM.
func TestSnapshotRestore(t *testing.T) {
	testutil.RequireCommand(t, "qemu-system-x86_64")
	img := vmtest.Image(t)
	ctx := context.Background()
	tmplToken := NewToken()
	tdir := t.TempDir()
	tmpl, err := Start(ctx, Config{Image: img, Dir: tdir, Token: tmplToken, BootTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer tmpl.Close()
	if _, err := tmpl.Agent.WriteFile(ctx, "/workspace/marker", strings.NewReader("from the template"), 0o644, 0); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(t.TempDir(), "snap")
	t0 := time.Now()
	if err := tmpl.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %d MiB in %s", fi.Size()>>20, time.Since(t0).Round(time.Millisecond))
	if err := tmpl.Close(); err != nil {
		t.Fatal(err)
	}

	cdir := t.TempDir()
	cloneToken := NewToken()
	clone, err := Restore(ctx, Config{Image: img, Dir: cdir, Token: cloneToken, BootTimeout: 60 * time.Second}, tmplToken, snap)
	if err != nil {
		t.Fatal(err)
	}
	defer clone.Close()
	t.Logf("restore to a rekeyed agent: %s (cold boot of the template: %s)", clone.BootTime, tmpl.BootTime)
	var out bytes.Buffer
	if st, err := clone.Agent.Exec(ctx, agentapi.ExecSpec{Argv: []string{"cat", "/workspace/marker"}}, agentapi.ExecIO{Stdout: &out}); err != nil || st.Code != 0 {
		t.Fatalf("exec in the clone: %+v %v", st, err)
	}
	if out.String() != "from the template" {
		t.Fatalf("clone's /workspace/marker = %q", out.String())
	}
	// The template token no longer opens the clone's agent; its own does.
	if err := clone.Reconnect(ctx, tmplToken); !errors.Is(err, agentapi.ErrAuth) {
		t.Fatalf("reconnect with the template's token: %v, want a refusal", err)
	}
	if err := clone.Reconnect(ctx, cloneToken); err != nil {
		t.Fatalf("reconnect with the clone's token: %v", err)
	}
	if _, err := clone.Agent.Health(ctx); err != nil {
		t.Fatal(err)
	}
	pid := clone.PID()
	if err := clone.Close(); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("kill", "-0", itoa(pid)).Run(); err == nil {
		t.Errorf("clone QEMU %d still runs", pid)
	}
	ents, _ := os.ReadDir(cdir)
	for _, e := range ents {
		if n := e.Name(); n != ConsoleLog && n != StdoutLog && n != StderrLog {
			t.Errorf("left behind: %s", n)
		}
	}
}
