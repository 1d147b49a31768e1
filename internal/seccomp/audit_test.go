package seccomp

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
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
