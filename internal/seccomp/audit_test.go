package seccomp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil"
	"golang.org/x/sys/unix"
)

func runAudited(t *testing.T, profile string, capacity int, argv []string, env ...string) (jailed, Report) {
	t.Helper()
	reportPath := filepath.Join(t.TempDir(), "report.json")
	env = append(env, reportEnv+"="+reportPath, capEnv+"="+itoa(capacity))
	res := runJailed(t, mustCompile(t, profile, Audit), argv, env...)
	data, err := os.ReadFile(reportPath)
	if err != nil {
		t.Fatalf("no report (exit %d, stderr %s): %v", res.code, res.stderr, err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return res, r
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func count(r Report, name string) uint64 {
	for _, s := range r.Syscalls {
		if s.Name == name {
			return s.Count
		}
	}
	return 0
}

func TestAuditLogsAndLetsThrough(t *testing.T) {
	res, r := runAudited(t, ProfileDefault, 64, []string{os.Args[0], "ptrace", "mount", "getppid", "socket_vsock"}, childModeEnv+"=probe")
	if res.code != 0 {
		t.Fatalf("probe exit %d: %s", res.code, res.stderr)
	}
	var got map[string]int
	if err := json.Unmarshal([]byte(res.stdout), &got); err != nil {
		t.Fatal(err)
	}
	// The syscalls ran: the kernel, not seccomp, answered them.
	for _, n := range []string{"ptrace", "mount", "socket_vsock"} {
		if syscall.Errno(got[n]) == syscall.EPERM {
			t.Errorf("audit mode: %s got EPERM; it should have proceeded", n)
		}
	}
	for _, n := range []string{"ptrace", "mount", "socket"} {
		if count(r, n) == 0 {
			t.Errorf("report lacks %s: %+v", n, r.Syscalls)
		}
	}
	if count(r, "getppid") != 0 {
		t.Errorf("report lists allowed getppid: %+v", r.Syscalls)
	}
	if r.Version != ReportVersion || r.Total == 0 || len(r.Events) == 0 || r.Events[0].Name == "" {
		t.Errorf("report: %+v", r)
	}
}

// TestAuditRingBoundedUnderStorm: 10000 notified syscalls (half with
// numbers no table knows) into a ring of 16.
func TestAuditRingBoundedUnderStorm(t *testing.T) {
	const capacity = 16
	res, r := runAudited(t, ProfileDefault, capacity, []string{os.Args[0], "storm"}, childModeEnv+"=probe")
	if res.code != 0 {
		t.Fatalf("storm exit %d: %s", res.code, res.stderr)
	}
	if r.Total < 10000 || r.Unknown < 5000 || count(r, "ptrace") < 5000 {
		t.Fatalf("report: total %d unknown %d ptrace %d; want ≥10000, ≥5000, ≥5000", r.Total, r.Unknown, count(r, "ptrace"))
	}
	if r.Capacity != capacity || len(r.Events) != capacity || r.Dropped != r.Total-capacity {
		t.Fatalf("ring: capacity %d, %d events, %d dropped of %d; want %d events and the rest dropped", r.Capacity, len(r.Events), r.Dropped, r.Total, capacity)
	}
	// Unknown numbers never become count entries, so the table stays small.
	if len(r.Syscalls) > 10 {
		t.Fatalf("%d syscall entries after a storm of unknown numbers", len(r.Syscalls))
	}
	// The ring holds the most recent events, in order.
	for i := 1; i < len(r.Events); i++ {
		if r.Events[i].Time.Before(r.Events[i-1].Time) {
			t.Fatalf("events out of order at %d", i)
		}
	}
}

// TestAuditorServesAnotherProcess is the jail's arrangement: the listener
// belongs to the sandbox's init, the Auditor runs in another process (here
// it takes the fd with pidfd_getfd), and Run returns by itself when every
// task using the filter has exited.
func TestAuditorServesAnotherProcess(t *testing.T) {
	testutil.RequireRoot(t) // pidfd_getfd needs ptrace access to the helper
	data, err := json.Marshal(mustCompile(t, ProfileDefault, Audit))
	if err != nil {
		t.Fatal(err)
	}
	progPath := filepath.Join(t.TempDir(), "program.json")
	if err := os.WriteFile(progPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], os.Args[0], "ptrace", "mount", "getppid")
	cmd.Env = append(os.Environ(), helperEnv+"=jail", programEnv+"="+progPath, holdEnv+"=1", childModeEnv+"=probe")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	rd := bufio.NewReader(stdout)
	var fd int
	if _, err := fmt.Fscanf(rd, "listener %d\n", &fd); err != nil {
		t.Fatalf("helper: %v (stderr %s)", err, stderr.String())
	}
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	lfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	unix.Close(pidfd)
	if err != nil {
		t.Fatalf("pidfd_getfd: %v", err)
	}
	aud := NewAuditor(os.NewFile(uintptr(lfd), "listener"), 8, nil)
	done := make(chan error, 1)
	go func() { done <- aud.Run(context.Background()) }()
	io.WriteString(stdin, "go\n")
	out, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v (stderr %s)", err, stderr.String())
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the sandbox's tasks exited")
	}
	r := aud.Report()
	if count(r, "ptrace") == 0 || count(r, "mount") == 0 || count(r, "getppid") != 0 {
		t.Fatalf("report %+v (probe output %s)", r.Syscalls, out)
	}
}
