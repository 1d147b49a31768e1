// Command gofloor is the lower bound of any Go implementation of
// `ironclaw run`, measured by `ironclaw-bench jail` beside the real thing
// and bwrap. It is a minimal static Go program, with no dependencies and
// no package initialisation of its own, that does only the steps no Go
// jail can skip:
//
//	gofloor                    a Go process starting and exiting
//	gofloor jail PROG [ARGS]   clone into new user (mapped to an
//	                           unprivileged uid range), PID, mount, IPC,
//	                           UTS, network and cgroup namespaces, exec
//	                           PROG, wait for it
//	gofloor init PROG [ARGS]   fork/exec PROG and wait for it, as an init
//
// `gofloor jail /proc/self/exe init /bin/true` (via the program's own
// path) is therefore a Go host process plus a Go init in fresh namespaces
// running /bin/true, with no root file system, mounts, cgroup, Landlock or
// seccomp: what remains when every step IronClaw adds costs nothing.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// uidBase is the host uid that root in the floor's user namespace maps to.
const uidBase = 200000

func main() {
	if len(os.Args) < 2 {
		return
	}
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gofloor [jail|init PROG [ARGS...]]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[2], os.Args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	switch os.Args[1] {
	case "jail":
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS |
				syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET | syscall.CLONE_NEWCGROUP,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: uidBase, Size: 65536}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: uidBase, Size: 65536}},
			// As IronClaw's init: uid 0 of the new namespace.
			GidMappingsEnableSetgroups: true,
			Credential:                 &syscall.Credential{Uid: 0, Gid: 0},
			Pdeathsig:                  syscall.SIGKILL,
			Setsid:                     true,
		}
	case "init":
	default:
		fmt.Fprintf(os.Stderr, "gofloor: unknown mode %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "gofloor:", err)
		os.Exit(1)
	}
}
