package qemu

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
)

func TestBootExecFiles(t *testing.T) {
	testutil.RequireCommand(t, "qemu-system-x86_64")
	img := vmtest.Image(t)
	dir := t.TempDir()
	ctx := context.Background()
	v, err := Start(ctx, Config{Image: img, Dir: dir, Token: NewToken(), Hostname: "vmtest", BootTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	t.Logf("boot to agent ready: %s", v.BootTime)
	// The guest's console (what it and its agent print) is for the
	// host's root: sandbox keys are public (cgroup and link names), the
	// directory is searchable by all, so the file itself must be private.
	for _, f := range []string{ConsoleLog, StdoutLog, StderrLog, RecordFile, initrdFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v, mode %v: want no access for group or others", f, err, fi.Mode())
		}
	}
	// The running QEMU is filtered: the launcher's outer filter and
	// QEMU's own -sandbox, with no_new_privs, as the kernel reports it.
	sst, err := seccomp.ReadStatus(v.PID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if sst.Seccomp != 2 || !sst.NoNewPrivs || sst.SeccompFilters < 2 {
		t.Fatalf("QEMU pid %d: %+v, want Seccomp 2, NoNewPrivs, at least 2 filters (outer + -sandbox)", v.PID(), sst)
	}
	t.Logf("QEMU pid %d: Seccomp %d, %d filters, NoNewPrivs %t", v.PID(), sst.Seccomp, sst.SeccompFilters, sst.NoNewPrivs)
	var out bytes.Buffer
	st, err := v.Agent.Exec(ctx, agentapi.ExecSpec{Argv: []string{"uname", "-a"}}, agentapi.ExecIO{Stdout: &out})
	if err != nil || st.Code != 0 {
		t.Fatalf("uname: %+v %v", st, err)
	}
	t.Logf("guest: %s", out.String())
	if !strings.Contains(out.String(), "cloud-amd64") || !strings.Contains(out.String(), "vmtest") {
		t.Fatalf("uname -a = %q: not the Debian cloud kernel / hostname", out.String())
	}
	data := bytes.Repeat([]byte("ironclaw"), 1<<16)
	if _, err := v.Agent.WriteFile(ctx, "/workspace/f", bytes.NewReader(data), 0o600, 0); err != nil {
		t.Fatal(err)
	}
	var back bytes.Buffer
	if _, err := v.Agent.ReadFile(ctx, "/workspace/f", &back, 0); err != nil || !bytes.Equal(back.Bytes(), data) {
		t.Fatalf("file round trip: %v, %d bytes", err, back.Len())
	}
	pid := v.PID()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("qemu still running after Close")
	}
	if _, err := os.Stat(filepath.Join("/proc", itoa(pid))); err == nil {
		t.Fatalf("qemu pid %d still exists", pid)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n := e.Name(); n != ConsoleLog && n != StdoutLog && n != StderrLog {
			t.Errorf("left behind in the sandbox dir: %s", n)
		}
	}
}
