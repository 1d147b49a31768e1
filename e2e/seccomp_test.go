package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// syscallProbe asks the kernel directly (through ctypes) for syscalls the
// default profile denies and prints each errno, so the test sees the
// filter's answer rather than a libc wrapper's.
const syscallProbe = `
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
calls = {"ptrace": (101, 0, 0, 0, 0), "bpf": (321, 0, 0, 0, 0), "keyctl": (250, 0, 0, 0, 0),
         "userfaultfd": (323, 0), "io_uring_setup": (425, 1, 0), "unshare": (272, 0x10000000),
         "mount": (165, 0, 0, 0, 0, 0), "personality": (135, 0x0040000), "getpid": (39,)}
for name, args in calls.items():
    ctypes.set_errno(0)
    r = libc.syscall(*args)
    print(name, "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "?"))
`

func TestDefaultSeccompProfileDenies(t *testing.T) {
	r := ironclaw(t, nil, "run", "--user", "root", "--", "python3", "-c", syscallProbe)
	if r.code != 0 {
		t.Fatalf("probe: %d %s", r.code, r.stderr)
	}
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		f := strings.Fields(l)
		got[f[0]] = f[1]
	}
	for _, name := range []string{"ptrace", "bpf", "keyctl", "userfaultfd", "io_uring_setup", "unshare", "mount", "personality"} {
		if got[name] != "EPERM" {
			t.Errorf("%s under the default profile: %s, want EPERM", name, got[name])
		}
	}
	if got["getpid"] != "ok" {
		t.Errorf("getpid: %s", got["getpid"])
	}
	// Unconfined, asked for by name, is said out loud, and lets the same
	// calls reach the kernel (which refuses them for other reasons).
	r = ironclaw(t, nil, "run", "--seccomp", "unconfined", "--", "python3", "-c", syscallProbe)
	if !strings.Contains(r.stderr, "WARNING") || !strings.Contains(r.stderr, "unconfined") {
		t.Errorf("unconfined run is not announced: %q", r.stderr)
	}
	if strings.Contains(r.stdout, "userfaultfd EPERM") && strings.Contains(r.stdout, "io_uring_setup EPERM") && strings.Contains(r.stdout, "bpf EPERM") && strings.Contains(r.stdout, "keyctl EPERM") {
		t.Errorf("unconfined sandbox still sees every denial as EPERM:\n%s", r.stdout)
	}
}

func TestStrictProfileBlocksSockets(t *testing.T) {
	r := ironclaw(t, nil, "run", "--seccomp", "strict", "--", "python3", "-c", "import socket; socket.socket()")
	if r.code == 0 || !strings.Contains(r.stderr, "Operation not permitted") {
		t.Errorf("socket() under strict: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, cmd := range [][]string{{"sh", "-c", "echo hi | cat"}, {"python3", "-c", "print(sum(range(10)))"}} {
		if r := ironclaw(t, nil, append([]string{"run", "--seccomp", "strict", "--"}, cmd...)...); r.code != 0 {
			t.Errorf("%v under strict: %d %s", cmd, r.code, r.stderr)
		}
	}
}

func TestCustomProfileAndAudit(t *testing.T) {
	dir := t.TempDir()
	prof := filepath.Join(dir, "deny-uname.json")
	os.WriteFile(prof, []byte(`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["uname"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}`), 0o644)
	r := ironclaw(t, nil, "run", "--seccomp", prof, "--", "uname")
	if r.code == 0 || !strings.Contains(r.stderr, "not implemented") {
		t.Errorf("uname under a profile returning ENOSYS: exit %d, stderr %q", r.code, r.stderr)
	}
	report := filepath.Join(dir, "report.json")
	r = ironclaw(t, nil, "run", "--seccomp-mode", "audit", "--seccomp-report", report, "--", "python3", "-c", syscallProbe)
	if r.code != 0 || !strings.Contains(r.stderr, "seccomp audit") || !strings.Contains(r.stderr, "userfaultfd") {
		t.Fatalf("audit run: exit %d stderr %q", r.code, r.stderr)
	}
	// ptrace(PTRACE_TRACEME) is EPERM under the enforced profile; in audit
	// mode it reaches the kernel, which allows it.
	if !strings.Contains(r.stdout, "ptrace ok") {
		t.Errorf("audit mode blocked a call:\n%s", r.stdout)
	}
	s := ironclaw(t, nil, "seccomp", "suggest", report)
	if s.code != 0 || !strings.Contains(s.stdout, "userfaultfd") {
		t.Errorf("seccomp suggest: %d %q %q", s.code, s.stdout, s.stderr)
	}
}
