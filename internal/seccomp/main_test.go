package seccomp

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helper modes of the test binary, selected by helperEnv. The test binary
// re-executes itself exactly as the jail re-executes ironclaw.
const (
	helperEnv  = "IRONCLAW_SECCOMP_TEST_MODE"
	programEnv = "IRONCLAW_SECCOMP_TEST_PROGRAM" // path of a Program JSON
	reportEnv  = "IRONCLAW_SECCOMP_TEST_REPORT"  // path to write an audit Report to
	capEnv     = "IRONCLAW_SECCOMP_TEST_CAPACITY"
	// childModeEnv is the helper mode of the jailed child (e.g. "probe").
	childModeEnv = "IRONCLAW_SECCOMP_TEST_CHILD_MODE"
	// threadsEnv makes the jail helper report its threads' seccomp state.
	threadsEnv = "IRONCLAW_SECCOMP_TEST_THREADS"
	// holdEnv makes the jail helper hand its listener to the test process.
	holdEnv = "IRONCLAW_SECCOMP_TEST_HOLD"
)

func TestMain(m *testing.M) {
	if os.Args[0] == LauncherArg0 {
		os.Exit(LauncherMain(os.Args[1:], os.Stderr))
	}
	switch os.Getenv(helperEnv) {
	case "jail":
		os.Exit(helperJail(os.Args[1:]))
	case "probe":
		os.Exit(helperProbe(os.Args[1:]))
	case "vmm-owner":
		os.Exit(helperVMMOwner(os.Args[1:]))
	}
	code := m.Run()
	if dir, err := standinDir(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// helperJail is the jail's init pattern: lock the thread, set
// no_new_privs, InstallThread, ForkExec the target from the same thread,
// wait for it and exit with its status (128+signal if it was killed).
func helperJail(argv []string) int {
	runtime.LockOSThread() // never unlocked: the filter stays on this thread
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "helper: "+format+"\n", a...)
		return 120
	}
	data, err := os.ReadFile(os.Getenv(programEnv))
	if err != nil {
		return fail("read program: %v", err)
	}
	var p Program
	if err := json.Unmarshal(data, &p); err != nil {
		return fail("decode program: %v", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fail("no_new_privs: %v", err)
	}
	listener, err := InstallThread(&p)
	if err != nil {
		return fail("%v", err)
	}
	var (
		aud  *Auditor
		done = make(chan error, 1)
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if listener != nil && os.Getenv(holdEnv) != "" {
		// The host takes the listener (pidfd_getfd) and serves it; wait
		// for its go-ahead before starting the workload.
		fmt.Printf("listener %d\n", listener.Fd())
		var line string
		fmt.Scanln(&line)
	} else if listener != nil {
		capacity := 64
		fmt.Sscan(os.Getenv(capEnv), &capacity)
		aud = NewAuditor(listener, capacity, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		// The Auditor runs on other (unfiltered) threads of this process.
		go func() { done <- aud.Run(ctx) }()
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IRONCLAW_SECCOMP_TEST_") {
			env = append(env, kv)
		}
	}
	if m := os.Getenv(childModeEnv); m != "" {
		env = append(env, helperEnv+"="+m)
	}
	pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		return fail("forkexec %s: %v", argv[0], err)
	}
	var ws syscall.WaitStatus
	for {
		_, err = syscall.Wait4(pid, &ws, 0, nil)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return fail("wait4: %v", err)
	}
	if aud != nil {
		cancel()
		if err := <-done; err != nil {
			return fail("auditor: %v", err)
		}
		out, err := json.Marshal(aud.Report())
		if err != nil {
			return fail("encode report: %v", err)
		}
		if err := os.WriteFile(os.Getenv(reportEnv), out, 0o600); err != nil {
			return fail("write report: %v", err)
		}
	}
	if os.Getenv(threadsEnv) != "" {
		// Report each thread's seccomp mode: only this one is filtered.
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fail("list threads: %v", err)
		}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			st, err := ReadStatus(os.Getpid(), tid)
			if err != nil {
				return fail("%v", err)
			}
			fmt.Fprintf(os.Stderr, "thread %d self=%t seccomp=%d nnp=%t\n", tid, tid == unix.Gettid(), st.Seccomp, st.NoNewPrivs)
		}
	}
	if ws.Signaled() {
		fmt.Fprintf(os.Stderr, "helper: target killed by signal %d\n", int(ws.Signal()))
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// helperProbe makes each named probe syscall and prints a JSON object
// mapping the probe's name to the errno it got (0 for success).
func helperProbe(names []string) int {
	res := map[string]int{}
	for _, n := range names {
		pr, ok := probes()[n]
		if !ok {
			fmt.Fprintf(os.Stderr, "probe: unknown probe %q\n", n)
			return 121
		}
		res[n] = int(pr())
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 122
	}
	return 0
}

func raw(nr uintptr, args ...uintptr) syscall.Errno {
	var a [6]uintptr
	copy(a[:], args)
	r, _, e := syscall.Syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5])
	if e == 0 && nr == unix.SYS_SOCKET {
		syscall.Close(int(r))
	}
	return e
}

// probes are syscalls with arguments chosen so that, if seccomp lets them
// through, the kernel fails them with an errno other than EPERM (or they
// succeed harmlessly); EPERM therefore means seccomp denied them. The
// unconfined run in TestDefaultDeniesReal proves that.
func probes() map[string]func() syscall.Errno {
	const bad = ^uintptr(0)
	pid := uintptr(os.Getpid())
	return map[string]func() syscall.Errno{
		"io_uring_setup":    func() syscall.Errno { return raw(unix.SYS_IO_URING_SETUP, 0, 0) },
		"io_uring_enter":    func() syscall.Errno { return raw(unix.SYS_IO_URING_ENTER, bad, 0, 0, 0, 0, 0) },
		"io_uring_register": func() syscall.Errno { return raw(unix.SYS_IO_URING_REGISTER, bad, 0, 0, 0) },
		"ptrace":            func() syscall.Errno { return raw(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, pid, 0, 0) },
		"process_vm_readv":  func() syscall.Errno { return raw(unix.SYS_PROCESS_VM_READV, pid, 0, 0, 0, 0, 0) },
		"process_vm_writev": func() syscall.Errno { return raw(unix.SYS_PROCESS_VM_WRITEV, pid, 0, 0, 0, 0, 0) },
		"bpf":               func() syscall.Errno { return raw(unix.SYS_BPF, 0xffff, 0, 0) },
		"perf_event_open":   func() syscall.Errno { return raw(unix.SYS_PERF_EVENT_OPEN, 0, 0, bad, bad, 0) },
		"userfaultfd":       func() syscall.Errno { return raw(unix.SYS_USERFAULTFD, 0xffff) },
		"kexec_load":        func() syscall.Errno { return raw(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0xdead0000) },
		"kexec_file_load":   func() syscall.Errno { return raw(unix.SYS_KEXEC_FILE_LOAD, bad, bad, 0, 0, 0xffff) },
		"keyctl":            func() syscall.Errno { return raw(unix.SYS_KEYCTL, 99999, 0, 0, 0, 0) },
		"add_key":           func() syscall.Errno { return raw(unix.SYS_ADD_KEY, 0, 0, 0, 0, 0) },
		"request_key":       func() syscall.Errno { return raw(unix.SYS_REQUEST_KEY, 0, 0, 0, 0) },
		"mount":             func() syscall.Errno { return raw(unix.SYS_MOUNT, 0, 0, 0, 0, 0) },
		"umount2":           func() syscall.Errno { return raw(unix.SYS_UMOUNT2, 0, 0xffffffff) },
		"pivot_root":        func() syscall.Errno { return raw(unix.SYS_PIVOT_ROOT, 0, 0) },
		"move_mount":        func() syscall.Errno { return raw(unix.SYS_MOVE_MOUNT, bad, 0, bad, 0, 0xffffffff) },
		"open_tree":         func() syscall.Errno { return raw(unix.SYS_OPEN_TREE, bad, 0, 0xffffffff) },
		"fsopen":            func() syscall.Errno { return raw(unix.SYS_FSOPEN, 0, 0xffffffff) },
		"fsconfig":          func() syscall.Errno { return raw(unix.SYS_FSCONFIG, bad, 0xffff, 0, 0, 0) },
		"fsmount":           func() syscall.Errno { return raw(unix.SYS_FSMOUNT, bad, 0xffffffff, 0) },
		"fspick":            func() syscall.Errno { return raw(unix.SYS_FSPICK, bad, 0, 0xffffffff) },
		"mount_setattr":     func() syscall.Errno { return raw(unix.SYS_MOUNT_SETATTR, bad, 0, 0xffffffff, 0, 0) },
		"unshare":           func() syscall.Errno { return raw(unix.SYS_UNSHARE, 0xffffffff) },
		"setns":             func() syscall.Errno { return raw(unix.SYS_SETNS, bad, 0) },
		// CLONE_THREAD without CLONE_SIGHAND is EINVAL whatever else is set.
		"clone_newuser": func() syscall.Errno { return raw(unix.SYS_CLONE, unix.CLONE_NEWUSER|unix.CLONE_THREAD, 0, 0, 0, 0) },
		"clone_newnet":  func() syscall.Errno { return raw(unix.SYS_CLONE, unix.CLONE_NEWNET|unix.CLONE_THREAD, 0, 0, 0, 0) },
		"clone_plain":   func() syscall.Errno { return raw(unix.SYS_CLONE, unix.CLONE_THREAD, 0, 0, 0, 0) },
		"clone3":        func() syscall.Errno { return raw(unix.SYS_CLONE3, 0, 0) },
		"open_by_handle_at": func() syscall.Errno {
			return raw(unix.SYS_OPEN_BY_HANDLE_AT, bad, 0, 0)
		},
		"personality_query":    func() syscall.Errno { return raw(unix.SYS_PERSONALITY, 0xffffffff) },
		"personality_norandom": func() syscall.Errno { return raw(unix.SYS_PERSONALITY, 0x0040000) }, // ADDR_NO_RANDOMIZE
		"socket_vsock":         func() syscall.Errno { return raw(unix.SYS_SOCKET, unix.AF_VSOCK, unix.SOCK_STREAM, 0) },
		"socket_unix":          func() syscall.Errno { return raw(unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM, 0) },
		"socket_inet":          func() syscall.Errno { return raw(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0) },
		"socketpair":           func() syscall.Errno { return raw(unix.SYS_SOCKETPAIR, unix.AF_UNIX, unix.SOCK_STREAM, 0, 0) },
		"getppid":              func() syscall.Errno { return raw(unix.SYS_GETPPID) },
		"mkdirat_custom":       func() syscall.Errno { return raw(unix.SYS_MKDIRAT, bad, 0, 0) },
		"x32_getpid":           func() syscall.Errno { return raw(x32SyscallBit | unix.SYS_GETPID) },
		"sleep":                func() syscall.Errno { time.Sleep(10 * time.Millisecond); return 0 },
		// storm: many denied calls, half of them to numbers no table knows.
		"storm": func() syscall.Errno {
			for i := range 5000 {
				raw(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, pid, 0, 0)
				raw(uintptr(1000 + i))
			}
			return 0
		},
	}
}
