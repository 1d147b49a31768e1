package seccomp

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Call is one syscall with the arguments a caller passes, for checking a
// program's decision on it.
type Call struct {
	Name string
	Args [6]uint64
	Why  string
}

// ptr stands for any user-space pointer argument.
const ptr = 0x7f0000001000

// LaunchPath returns the syscalls the jail's init makes after InstallThread
// on the filtered thread, and the forked child makes before execve, with the
// arguments Go 1.26 passes (src/syscall/exec_linux.go, exec_unix.go, and the
// runtime's own calls on a locked thread). A profile must allow all of them,
// or the workload could never start.
func LaunchPath() []Call {
	const (
		vforkFlags = unix.CLONE_VM | unix.CLONE_VFORK | uint64(unix.SIGCHLD)
		sigSetmask = 2 // SIG_SETMASK
		nofile     = unix.RLIMIT_NOFILE
		// FUTEX_WAIT_PRIVATE, FUTEX_WAKE_PRIVATE (include/uapi/linux/futex.h).
		futexWaitPrivate = 0 | 128
		futexWakePrivate = 1 | 128
	)
	return []Call{
		// syscall.forkExec in the parent (the filtered thread).
		{Name: "pipe2", Args: [6]uint64{ptr, unix.O_CLOEXEC}, Why: "forkExecPipe"},
		{Name: "rt_sigprocmask", Args: [6]uint64{sigSetmask, ptr, ptr, 8}, Why: "runtime_BeforeFork/AfterFork"},
		{Name: "clone", Args: [6]uint64{vforkFlags, 0, ptr}, Why: "forkAndExecInChild1 vfork"},
		{Name: "clone", Args: [6]uint64{vforkFlags | unix.CLONE_PIDFD, 0, ptr}, Why: "forkAndExecInChild1 vfork with SysProcAttr.PidFD"},
		{Name: "read", Args: [6]uint64{5, ptr, 8}, Why: "read exec status from the pipe"},
		{Name: "close", Args: [6]uint64{5}, Why: "close the exec pipe"},
		{Name: "wait4", Args: [6]uint64{1234, ptr, 0, 0}, Why: "reap a child whose exec failed"},
		// The Go runtime on the locked, filtered thread until it exits.
		{Name: "futex", Args: [6]uint64{ptr, futexWaitPrivate, 0, ptr}, Why: "runtime: park the thread"},
		{Name: "futex", Args: [6]uint64{ptr, futexWakePrivate, 1}, Why: "runtime: wake a thread"},
		{Name: "mmap", Args: [6]uint64{0, 1 << 20, unix.PROT_READ | unix.PROT_WRITE, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS, 1<<64 - 1, 0}, Why: "runtime: heap growth"},
		{Name: "munmap", Args: [6]uint64{ptr, 1 << 20}, Why: "runtime: free memory"},
		{Name: "madvise", Args: [6]uint64{ptr, 1 << 20, unix.MADV_DONTNEED}, Why: "runtime: scavenger"},
		{Name: "sched_yield", Why: "runtime: osyield"},
		{Name: "nanosleep", Args: [6]uint64{ptr, 0}, Why: "runtime: usleep"},
		{Name: "rt_sigreturn", Why: "runtime: return from a signal handler (preemption)"},
		{Name: "sigaltstack", Args: [6]uint64{0, ptr}, Why: "runtime: signal stack"},
		{Name: "gettid", Why: "runtime"},
		{Name: "getpid", Why: "runtime; child with Pdeathsig"},
		{Name: "tgkill", Args: [6]uint64{1, 2, uint64(unix.SIGURG)}, Why: "runtime: preempt a goroutine"},
		{Name: "exit", Args: [6]uint64{0}, Why: "runtime: the locked thread exits with its goroutine; child exit(253) after a failed exec"},
		// forkAndExecInChild1 in the child, before execve.
		{Name: "rt_sigaction", Args: [6]uint64{uint64(unix.SIGURG), ptr, 0, 8}, Why: "child: clearSignalHandlers"},
		{Name: "setsid", Why: "child: SysProcAttr.Setsid"},
		{Name: "ioctl", Args: [6]uint64{0, unix.TIOCSCTTY, 1}, Why: "child: SysProcAttr.Setctty"},
		{Name: "setgroups", Args: [6]uint64{0, 0}, Why: "child: SysProcAttr.Credential"},
		{Name: "setgid", Args: [6]uint64{65534}, Why: "child: SysProcAttr.Credential"},
		{Name: "setuid", Args: [6]uint64{65534}, Why: "child: SysProcAttr.Credential"},
		{Name: "prctl", Args: [6]uint64{unix.PR_SET_PDEATHSIG, uint64(unix.SIGKILL)}, Why: "child: SysProcAttr.Pdeathsig"},
		{Name: "getppid", Why: "child: Pdeathsig parent check"},
		{Name: "dup3", Args: [6]uint64{5, 10, unix.O_CLOEXEC}, Why: "child: move the exec pipe"},
		{Name: "dup3", Args: [6]uint64{10, 1, 0}, Why: "child: install ProcAttr.Files"},
		{Name: "fcntl", Args: [6]uint64{1, unix.F_SETFD, 0}, Why: "child: clear close-on-exec"},
		{Name: "chdir", Args: [6]uint64{ptr}, Why: "child: ProcAttr.Dir"},
		{Name: "prlimit64", Args: [6]uint64{0, nofile, 0, ptr}, Why: "child: restore RLIMIT_NOFILE"},
		{Name: "prlimit64", Args: [6]uint64{0, nofile, ptr, 0}, Why: "child: restore RLIMIT_NOFILE"},
		{Name: "execve", Args: [6]uint64{ptr, ptr, ptr}, Why: "child: start the workload"},
		{Name: "write", Args: [6]uint64{10, ptr, 8}, Why: "child: report a failed exec"},
	}
}

// CheckLaunchPath runs p on every LaunchPath call and returns an error
// wrapping ErrLaunchPath that names each call p does not let proceed.
func CheckLaunchPath(p *Program) error { return checkCalls(p, LaunchPath()) }

func checkCalls(p *Program, calls []Call) error {
	var bad []string
	ev, err := p.evaluator()
	if err != nil {
		return err
	}
	for _, c := range calls {
		nr, ok := p.Arch.SyscallNumber(c.Name)
		if !ok {
			return fmt.Errorf("launch path: syscall %s unknown on %s", c.Name, p.Arch)
		}
		ret, err := ev(0, nr, c.Args)
		if err != nil {
			return fmt.Errorf("launch path: %s: %w", c.Name, err)
		}
		if a := decodeRet(ret); !a.proceeds() {
			bad = append(bad, fmt.Sprintf("%s (%s: %s)", c.Name, c.Why, a))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrLaunchPath, strings.Join(bad, ", "))
	}
	return nil
}

// decodeRet turns a SECCOMP_RET_* value back into an Action.
func decodeRet(ret uint32) Action {
	data := uint16(ret & unix.SECCOMP_RET_DATA)
	switch ret & unix.SECCOMP_RET_ACTION_FULL {
	case unix.SECCOMP_RET_KILL_PROCESS:
		return Action{Kind: ActKillProcess}
	case unix.SECCOMP_RET_KILL_THREAD:
		return Action{Kind: ActKillThread}
	case unix.SECCOMP_RET_TRAP:
		return Action{Kind: ActTrap, Data: data}
	case unix.SECCOMP_RET_ERRNO:
		return Action{Kind: ActErrno, Data: data}
	case unix.SECCOMP_RET_USER_NOTIF:
		return Action{Kind: ActNotify}
	case unix.SECCOMP_RET_TRACE:
		return Action{Kind: ActTrace, Data: data}
	case unix.SECCOMP_RET_LOG:
		return Action{Kind: ActLog}
	case unix.SECCOMP_RET_ALLOW:
		return Action{Kind: ActAllow}
	}
	return Action{Kind: ActKillProcess}
}

// Decide returns the action p takes on call c (p's architecture).
func (p *Program) Decide(c Call) (Action, error) {
	nr, ok := p.Arch.SyscallNumber(c.Name)
	if !ok {
		return Action{}, fmt.Errorf("syscall %s unknown on %s", c.Name, p.Arch)
	}
	ret, err := p.Evaluate(0, nr, c.Args)
	if err != nil {
		return Action{}, err
	}
	return decodeRet(ret), nil
}
