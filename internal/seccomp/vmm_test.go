package seccomp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil"
	"golang.org/x/sys/unix"
)

// sharedFirecracker is the project's reference copy of Firecracker's data.
const sharedFirecracker = "../../../shared/firecracker"

func TestFirecrackerRulesMatchShared(t *testing.T) {
	dir, err := filepath.Abs(sharedFirecracker)
	if err != nil {
		t.Fatal(err)
	}
	// The worktree may sit elsewhere; fall back to the machine's path.
	if _, err := os.Stat(dir); err != nil {
		dir = "/work/shared/firecracker"
	}
	_, err = os.Stat(dir)
	testutil.Require(t, err == nil, "needs the shared Firecracker reference data")
	for _, f := range []string{"seccomp-x86_64-v1.16.1.json", "seccomp-aarch64-v1.16.1.json", "LICENSE", "NOTICE"} {
		want, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("firecracker", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("firecracker/%s differs from %s", f, dir)
		}
	}
}

// satisfying returns arguments under which all conds hold, or false.
func satisfying(conds []Cond) ([6]uint64, bool) {
	var args [6]uint64
	for _, c := range conds {
		v := c.Value
		switch c.Op {
		case OpNE, OpGT:
			v++
		case OpLT:
			if v == 0 {
				return args, false
			}
			v--
		}
		args[c.Arg] = v
	}
	for _, c := range conds {
		if !refHolds(c, args[c.Arg]) {
			return args, false
		}
	}
	return args, true
}

func TestFirecrackerOuterFilterVM(t *testing.T) {
	for _, a := range arches {
		threads, err := FirecrackerRules(a)
		if err != nil {
			t.Fatal(err)
		}
		outer, err := CompileVMM(Firecracker, a)
		if err != nil {
			t.Fatal(err)
		}
		checked := 0
		for _, name := range threadNames(threads) {
			f := threads[name]
			own, err := f.Policy(a)
			if err != nil {
				t.Fatal(err)
			}
			ownProg, err := compileChecked("fc-"+name, own, Enforce, a, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range own.Rules {
				args, ok := satisfying(r.Conds)
				if !ok {
					continue
				}
				n := nr(t, a, r.Syscall)
				if got := eval(t, ownProg, n, args); got != unix.SECCOMP_RET_ALLOW {
					t.Fatalf("%s/%s: own rules deny %s%#x (%#x): the test's argument choice is wrong", a, name, r.Syscall, args, got)
				}
				if got := eval(t, outer, n, args); got != unix.SECCOMP_RET_ALLOW {
					t.Errorf("%s: outer filter denies %s%#x that thread %s may make", a, r.Syscall, args, name)
				}
				checked++
			}
		}
		if checked < 100 {
			t.Fatalf("%s: only %d rules checked", a, checked)
		}
		eperm := unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
		for _, c := range []Call{
			{Name: "ptrace"}, {Name: "mount"}, {Name: "bpf"}, {Name: "unshare"}, {Name: "setns"}, {Name: "keyctl"},
			{Name: "process_vm_readv"}, {Name: "kexec_load"}, {Name: "perf_event_open"}, {Name: "userfaultfd"},
			{Name: "socket", Args: [6]uint64{unix.AF_INET, unix.SOCK_STREAM | unix.SOCK_CLOEXEC}},
			{Name: "socket", Args: [6]uint64{unix.AF_VSOCK, unix.SOCK_STREAM | unix.SOCK_CLOEXEC}},
			{Name: "clone", Args: [6]uint64{unix.CLONE_NEWUSER}},
		} {
			if got := eval(t, outer, nr(t, a, c.Name), c.Args); got != eperm {
				t.Errorf("%s: outer filter: %s%#x = %#x, want ERRNO(EPERM)", a, c.Name, c.Args, got)
			}
		}
		// Deterministic.
		again, _ := CompileVMM(Firecracker, a)
		if again.Digest() != outer.Digest() {
			t.Fatalf("%s: outer filter not deterministic", a)
		}
	}
}

func TestFirecrackerArgs(t *testing.T) {
	got, err := FirecrackerArgs("/run/x/api.sock", "vm1", "", "--level", "Info")
	if err != nil || strings.Join(got, " ") != "--api-sock /run/x/api.sock --id vm1 --level Info" {
		t.Fatalf("args %q, %v", got, err)
	}
	got, err = FirecrackerArgs("/s", "", "/etc/fc.bpf")
	if err != nil || strings.Join(got, " ") != "--api-sock /s --seccomp-filter /etc/fc.bpf" {
		t.Fatalf("args with filter %q, %v", got, err)
	}
	for _, bad := range []string{"--no-seccomp", "-no-seccomp", "--no-seccomp=true", "--seccomp-filter=/x"} {
		if _, err := FirecrackerArgs("/s", "", "", bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	if _, err := LaunchVMM(context.Background(), VMMConfig{Kind: Firecracker, Binary: "/bin/true", Args: []string{"--no-seccomp"}}); err == nil {
		t.Fatal("LaunchVMM passed --no-seccomp")
	}
	if _, err := LaunchVMM(context.Background(), VMMConfig{Kind: QEMU, Binary: "/bin/true", Args: []string{"-sandbox", "off"}}); err == nil {
		t.Fatal("LaunchVMM let the caller replace QEMU's -sandbox")
	}
	if _, err := LaunchVMM(context.Background(), VMMConfig{Kind: QEMU, Binary: "/bin/true", Args: []string{"-runas", "0:0"}}); err == nil {
		t.Fatal("LaunchVMM let the caller choose QEMU's -runas")
	}
}

// standinOutput mirrors testdata/standin-vmm's Output.
type standinOutput struct {
	StandIn    string   `json:"standin"`
	Args       []string `json:"args"`
	Seccomp    string   `json:"seccomp"`
	NoNewPrivs string   `json:"no_new_privs"`
	Calls      []struct {
		Role  string    `json:"role"`
		Name  string    `json:"name"`
		Args  [6]uint64 `json:"args"`
		Errno int       `json:"errno"`
	} `json:"calls"`
}

// TestLaunchVMMStandin starts the Firecracker STAND-IN through the launcher
// (the test binary re-executed as LauncherArg0), checks the kernel's view
// of it, and pins the stand-in's calls to Firecracker's own rules.
func TestLaunchVMMStandin(t *testing.T) {
	arch := nativeArch(t)
	bin := standinBinary(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	args, err := FirecrackerArgs(sock, "standin-1", "")
	if err != nil {
		t.Fatal(err)
	}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdinW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd, err := LaunchVMM(ctx, VMMConfig{Kind: Firecracker, Binary: bin, Args: args, Launcher: os.Args[0], Stdin: stdinR, Stdout: outW, Stderr: &stderr})
	stdinR.Close()
	outW.Close()
	if err != nil {
		t.Fatalf("LaunchVMM: %v (stderr %s)", err, stderr.String())
	}
	line, err := bufio.NewReader(outR).ReadBytes('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("read stand-in output: %v (stderr %s)", err, stderr.String())
	}
	// While it runs: the kernel's view of the VMM process.
	st, err := ReadStatus(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RequireFiltered(); err != nil || st.SeccompFilters != 1 {
		t.Errorf("VMM status %+v: %v; want Seccomp 2, NoNewPrivs, one filter", st, err)
	}
	// Every thread carries the filter (TSYNC, inherited over execve).
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "task"))
	if err != nil || len(tasks) < 2 {
		t.Errorf("VMM threads: %d, %v", len(tasks), err)
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if ts, err := ReadStatus(cmd.Process.Pid, tid); err == nil && ts.Seccomp != 2 {
			t.Errorf("thread %d: Seccomp %d", tid, ts.Seccomp)
		}
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Errorf("the stand-in's API socket %s is not listening: %v", sock, err)
	} else {
		c.Close()
	}
	stdinW.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stand-in exit: %v (stderr %s)", err, stderr.String())
	}
	var out standinOutput
	if err := json.Unmarshal(line, &out); err != nil {
		t.Fatalf("decode %q: %v", line, err)
	}
	if out.StandIn != "firecracker" || out.Seccomp != "2" || out.NoNewPrivs != "1" || strings.Join(out.Args, " ") != strings.Join(args, " ") {
		t.Fatalf("stand-in saw %+v", out)
	}
	// Contract: "work" calls are allowed by Firecracker's own rules (some
	// thread) and succeeded under the outer filter; "blocked" calls are
	// allowed by no thread and failed with EPERM.
	threads, err := FirecrackerRules(arch)
	if err != nil {
		t.Fatal(err)
	}
	var work, blocked int
	for _, c := range out.Calls {
		allowedBy := ""
		for _, name := range threadNames(threads) {
			pol, _ := threads[name].Policy(arch)
			p, err := compileChecked("fc-"+name, pol, Enforce, arch, nil)
			if err != nil {
				t.Fatal(err)
			}
			if eval(t, p, nr(t, arch, c.Name), c.Args) == unix.SECCOMP_RET_ALLOW {
				allowedBy = name
			}
		}
		switch c.Role {
		case "work":
			work++
			if allowedBy == "" {
				t.Errorf("stand-in work call %s%#x is not allowed by any Firecracker thread's rules", c.Name, c.Args)
			}
			if c.Errno != 0 {
				t.Errorf("work call %s failed under the outer filter: %v", c.Name, syscall.Errno(c.Errno))
			}
		case "blocked":
			blocked++
			if allowedBy != "" {
				t.Errorf("stand-in blocked call %s%#x is allowed by Firecracker thread %s", c.Name, c.Args, allowedBy)
			}
			if syscall.Errno(c.Errno) != syscall.EPERM {
				t.Errorf("blocked call %s: %v under the outer filter, want EPERM", c.Name, syscall.Errno(c.Errno))
			}
		default:
			t.Errorf("call with role %q", c.Role)
		}
	}
	if work < 10 || blocked < 8 {
		t.Fatalf("stand-in made %d work and %d blocked calls", work, blocked)
	}
}

// TestLaunchVMMQEMU starts the real qemu-system-x86_64 through the
// launcher with QEMU's own sandbox, talks QMP to it and stops it.
func TestLaunchVMMQEMU(t *testing.T) {
	qemu := testutil.RequireCommand(t, "qemu-system-x86_64")
	dir := t.TempDir()
	qmp := filepath.Join(dir, "qmp.sock")
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd, err := LaunchVMM(ctx, VMMConfig{
		Kind: QEMU, Binary: qemu, Launcher: os.Args[0], Stderr: &stderr,
		Args: []string{"-machine", "none", "-S", "-nodefaults", "-display", "none", "-qmp", "unix:" + qmp + ",server=on,wait=off"},
	})
	if err != nil {
		t.Fatalf("LaunchVMM: %v (stderr %s)", err, stderr.String())
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var conn net.Conn
	for i := 0; i < 100; i++ {
		if conn, err = net.Dial("unix", qmp); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("QMP: %v (stderr %s)", err, stderr.String())
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	rd := bufio.NewReader(conn)
	read := func() map[string]any {
		for {
			line, err := rd.ReadBytes('\n')
			if err != nil {
				t.Fatalf("QMP read: %v (stderr %s)", err, stderr.String())
			}
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("QMP %q: %v", line, err)
			}
			if _, ev := m["event"]; !ev {
				return m
			}
		}
	}
	send := func(cmd string) map[string]any {
		data, _ := json.Marshal(map[string]string{"execute": cmd})
		if _, err := conn.Write(append(data, '\n')); err != nil {
			t.Fatal(err)
		}
		return read()
	}
	if _, ok := read()["QMP"]; !ok {
		t.Fatal("no QMP greeting")
	}
	send("qmp_capabilities")
	// QEMU's own -sandbox filter sits on top of the launcher's: two.
	st, err := ReadStatus(cmd.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RequireFiltered(); err != nil || st.SeccompFilters < 2 {
		t.Fatalf("QEMU status %+v: %v; want Seccomp 2 with at least 2 filters (outer + -sandbox)", st, err)
	}
	// The launcher added -runas: QEMU serves QMP as the uid of its own.
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.Itoa(VMMUID(cmd.Process.Pid))
	if want := "\nUid:\t" + id + "\t" + id + "\t" + id + "\t" + id + "\n"; !strings.Contains(string(data), want) || st.CapEff != 0 {
		t.Errorf("QEMU status lacks %q or has capabilities (%x):\n%s", want, st.CapEff, data)
	}
	status := send("query-status")
	ret, _ := status["return"].(map[string]any)
	if ret["status"] != "prelaunch" && ret["status"] != "paused" {
		t.Fatalf("query-status: %v", status)
	}
	send("quit")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("QEMU exit: %v (stderr %s)", err, stderr.String())
	}
}

func FuzzParseSeccompiler(f *testing.F) {
	for _, a := range arches {
		data, err := firecrackerRules.ReadFile("firecracker/seccomp-" + string(a) + "-v1.16.1.json")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"t":{"default_action":{"errno":1},"filter_action":"allow","filter":[{"syscall":"read","args":[{"index":0,"type":"qword","op":{"masked_eq":7},"val":1}]}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseSeccompiler(data)
		if err != nil {
			return
		}
		for _, name := range threadNames(m) {
			for _, a := range arches {
				pol, err := m[name].Policy(a)
				if err != nil {
					continue
				}
				if p, err := compileChecked("fuzz", pol, Enforce, a, nil); err == nil {
					if _, err := p.Evaluate(0, 1, [6]uint64{}); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	})
}
