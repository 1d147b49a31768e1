package seccomp

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSuggestAllowsWhatWasUsed(t *testing.T) {
	rep := Report{Version: ReportVersion, Unknown: 3, Syscalls: []SyscallCount{
		{Name: "ptrace", Count: 2}, {Name: "clone3", Count: 1}, {Name: "mount", Count: 5},
	}}
	base := DefaultProfile()
	before, _ := json.Marshal(base)
	p, err := Suggest(rep, base)
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := json.Marshal(base); string(after) != string(before) {
		t.Fatal("Suggest modified its base")
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "suggested.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// The suggested profile is a valid profile file that allows them.
	for _, a := range arches {
		prog, err := CompileFor(path, Enforce, a, kernel)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"ptrace", "clone3", "mount"} {
			if got := eval(t, prog, nr(t, a, n), [6]uint64{}); got != unix.SECCOMP_RET_ALLOW {
				t.Errorf("%s: suggested profile: %s = %#x, want allow", a, n, got)
			}
		}
		// Everything else the default denies stays denied.
		if got := eval(t, prog, nr(t, a, "bpf"), [6]uint64{}); got != unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM) {
			t.Errorf("%s: bpf = %#x, want EPERM", a, got)
		}
	}
	if _, err := Suggest(Report{Version: 99}, base); err == nil {
		t.Error("unknown report version accepted")
	}
}

// TestSuggestFromRealAudit: audit a real workload under strict, suggest,
// and run the workload under the suggestion in enforce mode.
func TestSuggestFromRealAudit(t *testing.T) {
	argv := []string{"/usr/bin/python3", "-c", "import socket; s=socket.socket(socket.AF_UNIX); s.close(); print('ok')"}
	if res := runJailed(t, mustCompile(t, ProfileStrict, Enforce), argv); res.code == 0 {
		t.Fatal("the workload runs under strict already; the test proves nothing")
	}
	res, rep := runAudited(t, ProfileStrict, 64, argv)
	if res.code != 0 || count(rep, "socket") == 0 {
		t.Fatalf("audit run: exit %d, report %+v, stderr %s", res.code, rep.Syscalls, res.stderr)
	}
	p, err := Suggest(rep, StrictProfile())
	if err != nil {
		t.Fatal(err)
	}
	path := writeProfile(t, p)
	if res := runJailed(t, mustCompile(t, path, Enforce), argv); res.code != 0 || res.stdout != "ok\n" {
		t.Fatalf("under the suggested profile: exit %d stdout %q stderr %s", res.code, res.stdout, res.stderr)
	}
}
