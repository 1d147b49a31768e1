package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
	// And it runs as an unprivileged uid of its own, without
	// capabilities, chrooted into an empty directory it cannot write.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", v.PID()))
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.Itoa(seccomp.VMMUID(v.PID()))
	for _, want := range []string{"\nUid:\t" + id + "\t" + id + "\t" + id + "\t" + id + "\n", "\nGid:\t" + id + "\t", "\nCapEff:\t0000000000000000\n", "\nCapPrm:\t0000000000000000\n"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("QEMU's /proc/%d/status lacks %q:\n%s", v.PID(), want, status)
		}
	}
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", v.PID())); err != nil || root != filepath.Join(dir, chrootDir) {
		t.Errorf("QEMU's root = %q, %v; want %s", root, err, filepath.Join(dir, chrootDir))
	}
	if ents, err := os.ReadDir(filepath.Join(dir, chrootDir)); err != nil || len(ents) != 0 {
		t.Errorf("QEMU's root holds %v (%v), want nothing", ents, err)
	}
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

// TestDroppedRefusesPrivileges: the start-time check refuses a process
// that kept root, or another root directory.
func TestDroppedRefusesPrivileges(t *testing.T) {
	if err := dropped(os.Getpid(), "/"); err == nil || !strings.Contains(err.Error(), "Uid") {
		t.Errorf("dropped(this test, as uid %d) = %v, want a refusal naming Uid", os.Getuid(), err)
	}
	if err := dropped(1<<30, "/"); err == nil {
		t.Error("dropped of a missing process passed")
	}
}
