package qemu

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"syscall"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// Starter starts QEMU with argv (its command line from Argv, without
// -sandbox: the Starter adds QEMU's own filter) writing to stdout and
// stderr, and returns the started process. The driver calls it on an OS
// thread inside the sandbox's network namespace, and the Starter must fork
// from that thread (exec.Cmd.Start does), so that QEMU is born there. The
// process must outlive ctx, which bounds only the start.
type Starter func(ctx context.Context, argv []string, stdout, stderr *os.File) (*exec.Cmd, error)

// Launch configures SeccompStarter.
type Launch struct {
	// Launcher is the binary that runs seccomp.LauncherMain when started
	// as seccomp.LauncherArg0; "" means this executable (the ironclaw
	// binary, or a test binary whose TestMain dispatches it).
	Launcher string
	// Cgroup, when set, holds QEMU: on cgroup v2 the launcher is cloned
	// into it (CLONE_INTO_CGROUP), on v1 it is moved there before it
	// execs QEMU.
	Cgroup *cgroup.Group
	// Files are inherited by QEMU as fds 3, 4, ... (e.g. the sandbox
	// directory's lock, which then stays held for as long as QEMU runs).
	Files []*os.File
	// Detached lets QEMU outlive the process that started it: no
	// parent-death signal, no watchdog. Without it QEMU gets SIGKILL
	// when this process goes, so a killed owner takes its VMs along:
	// from a root watchdog (seccomp.VMMConfig.Watchdog) that sees the
	// owner's pipe close, since QEMU's -runas clears the parent-death
	// signal (which still covers the launcher before the exec).
	Detached bool
	Logger   *slog.Logger
}

// SeccompStarter starts QEMU through seccomp.LaunchVMM: the launcher
// installs the outer filter for QEMU (seccomp.CompileVMM) on every thread,
// sets no_new_privs and execs QEMU with -sandbox on; LaunchVMM then reads
// /proc/PID/status back and kills QEMU unless it shows Seccomp 2 and
// NoNewPrivs 1. QEMU gets a process group of its own (a terminal's ^C is
// for ironclaw, not for the VMM) and SIGKILL when its owner dies (unless
// Detached): from its watchdog, since it runs as an unprivileged uid of
// its own (-runas seccomp.VMMUID, which clears a parent-death signal).
func SeccompStarter(l Launch) Starter {
	return func(ctx context.Context, argv []string, stdout, stderr *os.File) (*exec.Cmd, error) {
		attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if l.Detached {
			attr.Pdeathsig = 0
		}
		cfg := seccomp.VMMConfig{
			Kind: seccomp.QEMU, Binary: argv[0], Args: argv[1:], Launcher: l.Launcher,
			Stdout: stdout, Stderr: stderr, ExtraFiles: l.Files, Logger: l.Logger, SysProcAttr: attr,
			Watchdog: !l.Detached,
		}
		if l.Cgroup != nil {
			fd, err := l.Cgroup.Open()
			if err != nil {
				return nil, err
			}
			if fd != nil {
				defer fd.Close()
				attr.UseCgroupFD, attr.CgroupFD = true, int(fd.Fd())
			} else {
				cfg.Started = l.Cgroup.AddProc
			}
		}
		// The process lives as long as the VM, not as long as ctx.
		return seccomp.LaunchVMM(context.WithoutCancel(ctx), cfg)
	}
}
