package seccomp

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

func nativeArch(t testing.TB) Arch {
	t.Helper()
	a, err := NativeArch()
	testutil.Require(t, err == nil, "needs an architecture IronClaw supports")
	return a
}

func mustCompile(t testing.TB, profile string, mode Mode) *Program {
	t.Helper()
	p, err := Compile(profile, mode, nativeArch(t))
	if err != nil {
		t.Fatalf("Compile(%s, %s): %v", profile, mode, err)
	}
	return p
}

// jailed is the outcome of running a command through the jail helper.
type jailed struct {
	stdout, stderr string
	code           int // exit status, or 128+signal
}

// runJailed re-executes the test binary as the jail helper (lock thread,
// no_new_privs, InstallThread, ForkExec argv) with p.
func runJailed(t *testing.T, p *Program, argv []string, env ...string) jailed {
	t.Helper()
	dir := t.TempDir()
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	progPath := filepath.Join(dir, "program.json")
	if err := os.WriteFile(progPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], argv...)
	cmd.Env = append(os.Environ(), helperEnv+"=jail", programEnv+"="+progPath)
	cmd.Env = append(cmd.Env, env...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run jail helper: %v", err)
	}
	res := jailed{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
	if res.code == 120 {
		t.Fatalf("jail helper failed: %s", res.stderr)
	}
	return res
}

// probe runs the named probes in a jailed copy of the test binary and
// returns each probe's errno.
func probe(t *testing.T, p *Program, names ...string) map[string]syscall.Errno {
	t.Helper()
	res := runJailed(t, p, append([]string{os.Args[0]}, names...), childModeEnv+"=probe")
	if res.code != 0 {
		t.Fatalf("probe exited %d: %s", res.code, res.stderr)
	}
	var m map[string]int
	if err := json.Unmarshal([]byte(res.stdout), &m); err != nil {
		t.Fatalf("decode probe output %q: %v", res.stdout, err)
	}
	out := map[string]syscall.Errno{}
	for k, v := range m {
		out[k] = syscall.Errno(v)
	}
	return out
}

// standinDir holds the built stand-in; TestMain removes it.
var standinDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "ironclaw-seccomp-standin-") })

var standin = sync.OnceValues(func() (string, error) {
	dir, err := standinDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "standin-vmm")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/standin-vmm")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", errors.New("build stand-in: " + err.Error() + ": " + string(out))
	}
	return bin, nil
})

// standinBinary builds testdata/standin-vmm (a static Go binary) once.
func standinBinary(t *testing.T) string {
	t.Helper()
	testutil.RequireCommand(t, "go")
	bin, err := standin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// tightenedProbes maps default-profile probes to the syscall group they test.
var tightenedProbes = []string{
	"io_uring_setup", "io_uring_enter", "io_uring_register", "ptrace", "process_vm_readv", "process_vm_writev",
	"bpf", "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load", "keyctl", "add_key", "request_key",
	"mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
	"mount_setattr", "unshare", "setns", "clone_newuser", "clone_newnet", "open_by_handle_at",
	"personality_norandom", "socket_vsock",
}

var allowedProbes = []string{"clone_plain", "clone3", "personality_query", "socket_unix", "socket_inet", "socketpair", "getppid"}

func TestDefaultDeniesReal(t *testing.T) {
	all := append(append([]string{}, tightenedProbes...), allowedProbes...)
	// Unconfined first: proves none of the probes fails with EPERM on its
	// own, so EPERM under "default" is seccomp's doing.
	free := probe(t, mustCompile(t, ProfileUnconfined, Enforce), all...)
	for _, n := range all {
		if free[n] == syscall.EPERM {
			t.Fatalf("probe %s fails with EPERM even unconfined; it cannot tell a seccomp denial", n)
		}
	}
	got := probe(t, mustCompile(t, ProfileDefault, Enforce), all...)
	for _, n := range tightenedProbes {
		if got[n] != syscall.EPERM {
			t.Errorf("default: %s = %v (unconfined %v), want EPERM", n, got[n], free[n])
		}
	}
	want := map[string]syscall.Errno{
		"clone_plain": free["clone_plain"], "clone3": syscall.ENOSYS, "personality_query": 0,
		"socket_unix": 0, "socket_inet": 0, "socketpair": free["socketpair"], "getppid": 0,
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("default: %s = %v, want %v", n, got[n], w)
		}
	}
}

func TestStrictBlocksSocketsReal(t *testing.T) {
	got := probe(t, mustCompile(t, ProfileStrict, Enforce), "socket_unix", "socket_inet", "socketpair", "socket_vsock", "getppid", "ptrace", "mount", "clone_newuser", "clone3")
	for _, n := range []string{"socket_unix", "socket_inet", "socketpair", "socket_vsock", "ptrace", "mount", "clone_newuser"} {
		if got[n] != syscall.EPERM {
			t.Errorf("strict: %s = %v, want EPERM", n, got[n])
		}
	}
	if got["getppid"] != 0 || got["clone3"] != syscall.ENOSYS {
		t.Errorf("strict: getppid = %v, clone3 = %v; want 0, ENOSYS", got["getppid"], got["clone3"])
	}
}

func TestX32Killed(t *testing.T) {
	if nativeArch(t) != ArchX86_64 {
		testutil.Require(t, false, "x32 exists only on x86_64")
	}
	for _, profile := range []string{ProfileDefault, ProfileStrict} {
		res := runJailed(t, mustCompile(t, profile, Enforce), []string{os.Args[0], "x32_getpid"}, childModeEnv+"=probe")
		if res.code != 128+int(syscall.SIGSYS) {
			t.Errorf("%s: x32 getpid: exit %d (stdout %q), want death by SIGSYS (%d)", profile, res.code, res.stdout, 128+int(syscall.SIGSYS))
		}
	}
}

// workloads are real programs that must run under the given profiles.
func workloads(t *testing.T) map[string][]string {
	return map[string][]string{
		"sh":     {"/bin/sh", "-c", "x=$(echo ok); for i in 1 2 3; do x=$x$i; done; echo $x > out.txt; cat out.txt"},
		"python": {"/usr/bin/python3", "-c", "import threading,subprocess,json,os,tempfile\nt=threading.Thread(target=lambda:None);t.start();t.join()\nout=subprocess.run(['/bin/echo','sub'],capture_output=True).stdout\nwith tempfile.TemporaryDirectory() as d: open(os.path.join(d,'f'),'w').write('x')\nprint(json.dumps({'ok':out.decode().strip()}))"},
		"static": {standinBinary(t), "-hello"},
	}
}

func TestWorkloadsUnderDefault(t *testing.T) {
	p := mustCompile(t, ProfileDefault, Enforce)
	w := workloads(t)
	w["node"] = []string{testutil.RequireCommand(t, "node"), "-e", "const cp=require('child_process');const fs=require('fs');fs.writeFileSync('n.txt','x');console.log(cp.execFileSync('/bin/echo',['node-ok']).toString().trim(), fs.readFileSync('n.txt','utf8'))"}
	git := testutil.RequireCommand(t, "git")
	w["git"] = []string{"/bin/sh", "-c", git + " init -q repo && cd repo && echo hi > f && " + git + " add f && " + git + " -c user.name=t -c user.email=t@t commit -qm init && " + git + " log --oneline | wc -l"}
	for name, argv := range w {
		t.Run(name, func(t *testing.T) {
			res := runJailed(t, p, argv)
			if res.code != 0 {
				t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s", argv, res.code, res.stdout, res.stderr)
			}
			if strings.TrimSpace(res.stdout) == "" {
				t.Fatalf("%v printed nothing", argv)
			}
			t.Logf("%s: %s", name, strings.TrimSpace(res.stdout))
		})
	}
}

func TestWorkloadsUnderStrict(t *testing.T) {
	p := mustCompile(t, ProfileStrict, Enforce)
	for name, argv := range workloads(t) {
		t.Run(name, func(t *testing.T) {
			res := runJailed(t, p, argv)
			if res.code != 0 {
				t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s", argv, res.code, res.stdout, res.stderr)
			}
			t.Logf("%s: %s", name, strings.TrimSpace(res.stdout))
		})
	}
	// And python's socket module fails cleanly.
	res := runJailed(t, p, []string{"/usr/bin/python3", "-c", "import socket\ntry:\n  socket.socket()\nexcept PermissionError as e:\n  print('denied', e.errno)"})
	if res.code != 0 || strings.TrimSpace(res.stdout) != "denied 1" {
		t.Fatalf("python socket under strict: exit %d, stdout %q, stderr %s", res.code, res.stdout, res.stderr)
	}
}

// customProfile is the default profile with one extra rule on names (ahead
// of everything, after removing names from other rules).
func customProfile(action string, errnoRet *uint, names ...string) map[string]any {
	var p map[string]any
	data, _ := json.Marshal(DefaultProfile())
	json.Unmarshal(data, &p)
	var kept []any
	for _, sc := range p["syscalls"].([]any) {
		m := sc.(map[string]any)
		var keep []any
		for _, n := range m["names"].([]any) {
			if !slices.Contains(names, n.(string)) {
				keep = append(keep, n)
			}
		}
		if len(keep) > 0 {
			m["names"] = keep
			kept = append(kept, m)
		}
	}
	rule := map[string]any{"names": names, "action": action}
	if errnoRet != nil {
		rule["errnoRet"] = *errnoRet
	}
	p["syscalls"] = append([]any{rule}, kept...)
	return p
}

func TestCustomProfileFileReal(t *testing.T) {
	eacces := uint(syscall.EACCES)
	path := writeProfile(t, customProfile("SCMP_ACT_ERRNO", &eacces, "mkdirat", "mkdir"))
	got := probe(t, mustCompile(t, path, Enforce), "mkdirat_custom", "getppid", "ptrace")
	if got["mkdirat_custom"] != syscall.EACCES || got["getppid"] != 0 || got["ptrace"] != syscall.EPERM {
		t.Fatalf("custom profile: %v; want mkdirat EACCES, getppid 0, ptrace EPERM", got)
	}
	// And a real tool sees it.
	res := runJailed(t, mustCompile(t, path, Enforce), []string{"/bin/mkdir", "d"})
	if res.code == 0 || !strings.Contains(res.stderr, "Permission denied") {
		t.Fatalf("mkdir under custom profile: exit %d, stderr %q; want Permission denied", res.code, res.stderr)
	}
}

// TestActionsReal runs /bin/uname (a single-threaded C program) under a
// profile giving uname(2) each action, and checks what the kernel did.
func TestActionsReal(t *testing.T) {
	sigsys := 128 + int(syscall.SIGSYS)
	nine := uint(99)
	for _, c := range []struct {
		action string
		errno  *uint
		code   int
		out    string
	}{
		{"SCMP_ACT_ALLOW", nil, 0, "Linux"},
		{"SCMP_ACT_LOG", nil, 0, "Linux"},
		{"SCMP_ACT_ERRNO", &nine, 1, ""},
		{"SCMP_ACT_KILL_PROCESS", nil, sigsys, ""},
		{"SCMP_ACT_KILL_THREAD", nil, sigsys, ""},
		{"SCMP_ACT_KILL", nil, sigsys, ""},
		{"SCMP_ACT_TRAP", nil, sigsys, ""},
	} {
		t.Run(c.action, func(t *testing.T) {
			path := writeProfile(t, customProfile(c.action, c.errno, "uname"))
			res := runJailed(t, mustCompile(t, path, Enforce), []string{"/bin/uname", "-s"})
			if res.code != c.code || !strings.Contains(res.stdout, c.out) {
				t.Fatalf("exit %d stdout %q stderr %q; want exit %d and %q", res.code, res.stdout, res.stderr, c.code, c.out)
			}
			if c.errno != nil && !strings.Contains(strings.ToLower(res.stderr), syscall.Errno(*c.errno).Error()) {
				t.Fatalf("stderr %q does not show errno %d (%v)", res.stderr, *c.errno, syscall.Errno(*c.errno))
			}
		})
	}
}
