package seccomp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LauncherArg0 is the argv[0] under which the ironclaw binary (or a test
// binary) runs LauncherMain: the caller's re-exec dispatch checks for it
// before anything else.
const LauncherArg0 = "ironclaw-vmm-launch"

// VMMConfig describes a VMM process to start through the launcher.
type VMMConfig struct {
	Kind   VMMKind
	Binary string   // absolute path of the VMM
	Args   []string // VMM arguments (see FirecrackerArgs); QEMUSandboxArgs are appended for QEMU
	// Launcher is the binary that runs LauncherMain when started with
	// argv[0] = LauncherArg0; empty means this executable.
	Launcher   string
	Env        []string
	Dir        string
	Stdin      io.Reader
	Stdout     io.Writer
	Stderr     io.Writer
	ExtraFiles []*os.File    // become fds 3, 4, ... of the VMM
	Logger     *slog.Logger  // nil: discard
	Timeout    time.Duration // for the launcher to reach execve; 0 means 10s
	// SysProcAttr are the launcher's process attributes (a new process
	// group, a parent-death signal, CgroupFD on cgroup v2), which the VMM
	// keeps across execve; nil means none.
	SysProcAttr *syscall.SysProcAttr
	// Watchdog makes the VMM die with this process even after it has
	// changed its uid (QEMU's -runas clears a parent-death signal): a
	// root watchdog, started by the launcher, SIGKILLs it once this
	// process is gone (see startWatchdog). Without it a VMM that drops
	// privileges outlives its owner.
	Watchdog bool
	// Started, when set, is called with the launcher's PID as soon as it
	// runs, before waiting for it to exec the VMM (e.g. to move it into a
	// cgroup v1 group); an error kills it. With Watchdog it is called
	// again with the watchdog's PID once the VMM runs (the launcher may
	// have forked it before it was moved).
	Started func(pid int) error
}

// LaunchVMM starts the VMM through the launcher, which installs the outer
// filter (CompileVMM) on every thread and execs the VMM. It returns once
// the VMM runs and the kernel shows it filtered with no_new_privs (read
// from /proc/PID/status); otherwise it kills the process and returns an
// error. The caller owns the returned, started command and must Wait.
func LaunchVMM(ctx context.Context, cfg VMMConfig) (*exec.Cmd, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	arch, err := NativeArch()
	if err != nil {
		return nil, err
	}
	if _, err := CompileVMM(cfg.Kind, arch); err != nil {
		return nil, fmt.Errorf("launch %s: %w", cfg.Kind, err)
	}
	args, err := vmmArgs(cfg.Kind, cfg.Args)
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", cfg.Kind, err)
	}
	launcher := cfg.Launcher
	if launcher == "" {
		if launcher, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("launch %s: find launcher: %w", cfg.Kind, err)
		}
	}
	vmmInfo, err := os.Stat(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("launch %s: %w", cfg.Kind, err)
	}
	// The launcher reports failures before execve on this pipe; execve
	// closes it (close-on-exec), so EOF with no message means it exec'd.
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("launch %s: sync pipe: %w", cfg.Kind, err)
	}
	defer syncR.Close()
	syncFD := 3 + len(cfg.ExtraFiles)
	extra := append(slices.Clone(cfg.ExtraFiles), syncW)
	launchArgs := []string{LauncherArg0, "-kind", string(cfg.Kind), "-sync-fd", strconv.Itoa(syncFD)}
	// owner is the write end of the watchdog's pipe: only this process
	// holds it (close-on-exec), until the VMM has exited (keepOwner).
	var owner *os.File
	if cfg.Watchdog {
		ownerR, ownerW, err := os.Pipe()
		if err != nil {
			syncW.Close()
			return nil, fmt.Errorf("launch %s: watchdog pipe: %w", cfg.Kind, err)
		}
		defer ownerR.Close()
		owner = ownerW
		launchArgs = append(launchArgs, "-watchdog-fd", strconv.Itoa(3+len(extra)))
		extra = append(extra, ownerR)
	}
	cmd := exec.CommandContext(ctx, launcher)
	cmd.Args = append(append(launchArgs, "--", cfg.Binary), args...)
	cmd.Env, cmd.Dir = cfg.Env, cfg.Dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = cfg.Stdin, cfg.Stdout, cfg.Stderr
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = cfg.SysProcAttr
	err = cmd.Start()
	syncW.Close()
	if err != nil {
		if owner != nil {
			owner.Close()
		}
		return nil, fmt.Errorf("launch %s: start launcher: %w", cfg.Kind, err)
	}
	fail := func(err error) (*exec.Cmd, error) {
		cmd.Process.Kill()
		cmd.Wait()
		if owner != nil {
			owner.Close()
		}
		return nil, fmt.Errorf("launch %s: %w", cfg.Kind, err)
	}
	if cfg.Started != nil {
		if err := cfg.Started(cmd.Process.Pid); err != nil {
			return fail(err)
		}
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := syncR.SetReadDeadline(deadline); err != nil {
		return fail(fmt.Errorf("sync pipe deadline: %w", err))
	}
	msg, err := io.ReadAll(io.LimitReader(syncR, 4096))
	if err != nil {
		return fail(fmt.Errorf("wait for the launcher to exec: %w", err))
	}
	watchdog, msg, err := parseSync(msg)
	if err != nil {
		return fail(err)
	}
	if len(msg) > 0 {
		return fail(fmt.Errorf("launcher: %s", msg))
	}
	if cfg.Watchdog != (watchdog > 0) {
		return fail(fmt.Errorf("launcher: watchdog pid %d, want one only with VMMConfig.Watchdog (%t)", watchdog, cfg.Watchdog))
	}
	pid := cmd.Process.Pid
	exeInfo, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fail(fmt.Errorf("check the VMM executable: %w", err))
	}
	if !os.SameFile(exeInfo, vmmInfo) {
		return fail(fmt.Errorf("process %d does not run %s after exec", pid, cfg.Binary))
	}
	st, err := ReadStatus(pid, 0)
	if err != nil {
		return fail(err)
	}
	if err := st.RequireFiltered(); err != nil {
		return fail(fmt.Errorf("VMM pid %d: %w", pid, err))
	}
	if owner != nil {
		if err := watchdogOK(watchdog, pid); err != nil {
			return fail(err)
		}
		if cfg.Started != nil {
			if err := cfg.Started(watchdog); err != nil {
				return fail(fmt.Errorf("watchdog %d: %w", watchdog, err))
			}
		}
		if err := keepOwner(pid, owner); err != nil {
			return fail(err)
		}
	}
	log.Info("VMM started under seccomp", "kind", cfg.Kind, "pid", pid, "seccomp_filters", st.SeccompFilters, "watchdog", watchdog)
	return cmd, nil
}

// vmmArgs checks a VMM's arguments and adds what IronClaw requires.
func vmmArgs(kind VMMKind, args []string) ([]string, error) {
	switch kind {
	case Firecracker:
		for _, a := range args {
			if flagIs(a, "no-seccomp") {
				return nil, fmt.Errorf("argument %s: Firecracker must keep its seccomp filters", a)
			}
		}
		return slices.Clone(args), nil
	case QEMU:
		for _, a := range args {
			if flagIs(a, "sandbox") {
				return nil, fmt.Errorf("argument %s: IronClaw sets QEMU's -sandbox itself", a)
			}
			if flagIs(a, "runas") {
				return nil, fmt.Errorf("argument %s: IronClaw sets QEMU's -runas itself", a)
			}
		}
		return append(slices.Clone(args), QEMUSandboxArgs()...), nil
	}
	return nil, fmt.Errorf("VMM kind %q: %w", kind, ErrUnsupported)
}

// LauncherMain is the launcher: it installs the outer VMM filter on every
// thread (TSYNC) and execs the VMM; it returns only on failure, with the
// exit status to use. args are the arguments after argv[0]:
//
//	-kind KIND -sync-fd N [-watchdog-fd N] -- /path/to/vmm ARGS...
//
// With -watchdog-fd it starts the watchdog before the exec (startWatchdog);
// the watchdog itself runs as -watchdog -owner-fd N -vmm-fd N.
func LauncherMain(args []string, stderr io.Writer) int {
	runtime.LockOSThread()
	fs := flag.NewFlagSet(LauncherArg0, flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("kind", "", "VMM kind")
	syncFD := fs.Int("sync-fd", -1, "fd to report pre-exec failures on")
	watchFD := fs.Int("watchdog-fd", -1, "read end of the owner's pipe: start a watchdog that kills the VMM at its EOF")
	watchdog := fs.Bool("watchdog", false, "run as the watchdog")
	ownerFD := fs.Int("owner-fd", -1, "watchdog: read end of the owner's pipe")
	vmmFD := fs.Int("vmm-fd", -1, "watchdog: pidfd of the VMM")
	if err := fs.Parse(args); err != nil {
		return 125
	}
	if *watchdog {
		return watchdogMain(*ownerFD, *vmmFD, stderr)
	}
	if *watchFD != -1 && *watchFD < 3 {
		fmt.Fprintf(stderr, "%s: -watchdog-fd %d: want a descriptor >= 3\n", LauncherArg0, *watchFD)
		return 125
	}
	var sync io.Writer = io.Discard
	if *syncFD >= 3 {
		unix.CloseOnExec(*syncFD)
		sync = os.NewFile(uintptr(*syncFD), "sync")
	}
	fail := func(err error) int {
		msg := LauncherArg0 + ": " + err.Error()
		fmt.Fprintln(stderr, msg)
		io.WriteString(sync, msg)
		return 126
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return fail(errors.New("no VMM binary given"))
	}
	// Check the arguments again: the launcher may be run by hand.
	if _, err := vmmArgs(VMMKind(*kind), nil); err != nil {
		return fail(err)
	}
	for _, a := range rest[1:] {
		if VMMKind(*kind) == Firecracker && flagIs(a, "no-seccomp") {
			return fail(fmt.Errorf("argument %s: Firecracker must keep its seccomp filters", a))
		}
		if VMMKind(*kind) == QEMU && flagIs(a, "runas") {
			return fail(fmt.Errorf("argument %s: IronClaw sets QEMU's -runas itself", a))
		}
	}
	if VMMKind(*kind) == QEMU {
		// QEMU keeps this PID across exec: its uid is its own.
		id := strconv.Itoa(VMMUID(os.Getpid()))
		rest = append(slices.Clone(rest), "-runas", id+":"+id)
	}
	arch, err := NativeArch()
	if err != nil {
		return fail(err)
	}
	prog, err := CompileVMM(VMMKind(*kind), arch)
	if err != nil {
		return fail(err)
	}
	if _, err := InstallProcess(prog); err != nil {
		return fail(err)
	}
	if *watchFD >= 0 {
		// Started under the outer filter, which it keeps.
		pid, err := startWatchdog(*watchFD, stderr)
		if err != nil {
			return fail(err)
		}
		if _, err := fmt.Fprintf(sync, "%s%d\n", watchdogMsg, pid); err != nil {
			return fail(fmt.Errorf("report the watchdog: %w", err))
		}
	}
	err = unix.Exec(rest[0], rest, os.Environ())
	return fail(fmt.Errorf("exec %s: %w", rest[0], err))
}
