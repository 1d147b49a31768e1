package seccomp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The watchdog keeps a VMM that drops its privileges dying with the process
// that started it. A parent-death signal cannot: the kernel clears it when
// the process's uid changes (prctl(2)), which QEMU's -runas does. So, when
// VMMConfig.Watchdog is set:
//
//   - LaunchVMM makes a pipe whose write end only it holds (close-on-exec)
//     and passes the read end to the launcher (-watchdog-fd);
//   - the launcher, filtered already and just before it execs the VMM,
//     fork-execs this binary again as the watchdog (argv: LauncherArg0
//     -watchdog), handing it the read end and a pidfd of itself (the VMM
//     after the exec: it keeps its PID); the watchdog stays root, so the
//     unprivileged VMM cannot signal it, and it runs under the same outer
//     filter with no_new_privs;
//   - the watchdog blocks in poll on both: EOF on the pipe (the owner
//     process is gone, however it died) makes it SIGKILL the VMM through
//     the pidfd (no PID reuse race) and exit; the VMM's exit makes it exit.
//     Its parent-death signal (its parent is the VMM) ends it too.
//
// LaunchVMM closes its write end once the VMM has exited, and reads the
// watchdog back from /proc before it returns (watchdogOK).

// watchdogMsg starts the launcher's report, on the sync pipe, of the
// watchdog it started: "watchdog PID\n". Anything else is an error.
const watchdogMsg = "watchdog "

// startWatchdog is the launcher's half: it starts the watchdog for this
// process (the VMM-to-be) with the owner pipe's read end ownerFD, and
// returns its PID. ownerFD is closed in this process at the exec.
func startWatchdog(ownerFD int, stderr io.Writer) (int, error) {
	unix.CloseOnExec(ownerFD)
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0) // close-on-exec
	if err != nil {
		return 0, fmt.Errorf("watchdog: pidfd of the VMM: %w", err)
	}
	vmm := os.NewFile(uintptr(pidfd), "vmm-pidfd")
	defer vmm.Close()
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("watchdog: find this executable: %w", err)
	}
	owner := os.NewFile(uintptr(ownerFD), "owner")
	cmd := exec.Command(exe, "-watchdog", "-owner-fd", "3", "-vmm-fd", "4")
	cmd.Args[0] = LauncherArg0
	cmd.Env = []string{}
	if f, ok := stderr.(*os.File); ok {
		cmd.Stderr = f // not a pipe with a copying goroutine: that dies at the exec
	}
	cmd.ExtraFiles = []*os.File{owner, vmm}
	// The watchdog's parent is this thread, which becomes the VMM's
	// (LauncherMain is locked to it and execs from it). A process group
	// of its own: as a member of the VMM's, it (or its zombie, until
	// init reaps it) would keep the VMM's PID in use after the VMM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("watchdog: start: %w", err)
	}
	// Not waited for: it outlives this process image, as the VMM's child.
	pid := cmd.Process.Pid
	if err := cmd.Process.Release(); err != nil {
		return 0, fmt.Errorf("watchdog: %w", err)
	}
	return pid, nil
}

// watchdogMain is the watchdog: it returns once the VMM (vmmFD, a pidfd)
// has exited, or after it has SIGKILLed the VMM because the owner's pipe
// (ownerFD) reported EOF, or anything else. Every failure kills the VMM:
// a VMM nobody guards must not run on.
func watchdogMain(ownerFD, vmmFD int, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintf(stderr, "%s watchdog: %v\n", LauncherArg0, err)
		if err := unix.PidfdSendSignal(vmmFD, unix.SIGKILL, nil, 0); err != nil && err != unix.ESRCH {
			fmt.Fprintf(stderr, "%s watchdog: kill the VMM: %v\n", LauncherArg0, err)
		}
		return 1
	}
	if ownerFD < 3 || vmmFD < 3 {
		return fail(fmt.Errorf("-owner-fd %d, -vmm-fd %d: want both >= 3", ownerFD, vmmFD))
	}
	for {
		fds := []unix.PollFd{{Fd: int32(ownerFD), Events: unix.POLLIN}, {Fd: int32(vmmFD), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("poll: %w", err))
		}
		if fds[1].Revents&unix.POLLNVAL != 0 || fds[0].Revents&unix.POLLNVAL != 0 {
			return fail(errors.New("poll: a descriptor is not open"))
		}
		if fds[1].Revents != 0 {
			return 0 // the VMM has exited
		}
		if fds[0].Revents != 0 {
			if err := unix.PidfdSendSignal(vmmFD, unix.SIGKILL, nil, 0); err != nil && err != unix.ESRCH {
				fmt.Fprintf(stderr, "%s watchdog: the owner is gone; kill the VMM: %v\n", LauncherArg0, err)
				return 1
			}
			return 0
		}
	}
}

// parseSync splits the launcher's sync-pipe message into the watchdog's
// PID (0 when none was reported) and the error message that follows.
func parseSync(msg []byte) (int, []byte, error) {
	rest, ok := bytes.CutPrefix(msg, []byte(watchdogMsg))
	if !ok {
		return 0, msg, nil
	}
	line, rest, ok := bytes.Cut(rest, []byte("\n"))
	pid, err := strconv.Atoi(string(line))
	if !ok || err != nil || pid <= 0 {
		return 0, nil, fmt.Errorf("launcher: malformed watchdog report %q", msg)
	}
	return pid, rest, nil
}

// watchdogOK reads the watchdog (pid) back from /proc: a child of the VMM
// (vmmPID) running as root with no_new_privs under a seccomp filter, with
// the watchdog's command line.
func watchdogOK(pid, vmmPID int) error {
	fields, err := statFields(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return fmt.Errorf("watchdog %d: %w", pid, err)
	}
	if len(fields) < 3 {
		return fmt.Errorf("watchdog %d: /proc stat has %d fields after the command", pid, len(fields))
	}
	if ppid, err := strconv.Atoi(fields[1]); err != nil || ppid != vmmPID {
		return fmt.Errorf("watchdog %d: parent %s, want the VMM %d", pid, fields[1], vmmPID)
	}
	if pgid, err := strconv.Atoi(fields[2]); err != nil || pgid != pid {
		return fmt.Errorf("watchdog %d: process group %s, want its own", pid, fields[2])
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("watchdog %d: %w", pid, err)
	}
	if !bytes.HasPrefix(cmdline, []byte(LauncherArg0+"\x00-watchdog\x00")) {
		return fmt.Errorf("watchdog %d: command line %q", pid, cmdline)
	}
	st, err := ReadStatus(pid, 0)
	if err != nil {
		return fmt.Errorf("watchdog %d: %w", pid, err)
	}
	if err := st.RequireFiltered(); err != nil {
		return fmt.Errorf("watchdog %d: %w", pid, err)
	}
	var s unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d", pid), &s); err != nil {
		return fmt.Errorf("watchdog %d: %w", pid, err)
	}
	if int(s.Uid) != os.Geteuid() {
		return fmt.Errorf("watchdog %d: uid %d, want %d (the VMM must not be able to signal it)", pid, s.Uid, os.Geteuid())
	}
	return nil
}

// keepOwner holds owner (the write end of the watchdog's pipe) until the
// VMM (pid, a child not yet waited for) has exited, then closes it. The
// wait is on a pidfd in the runtime's poller: no thread blocks.
func keepOwner(pid int, owner *os.File) error {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("watchdog: pidfd of the VMM: %w", err)
	}
	pf := os.NewFile(uintptr(fd), "vmm-pidfd")
	rc, err := pf.SyscallConn()
	if err != nil {
		pf.Close()
		return fmt.Errorf("watchdog: pidfd of the VMM: %w", err)
	}
	go func() {
		defer owner.Close()
		defer pf.Close()
		var perr error
		if err := rc.Read(func(fd uintptr) bool {
			n, err := pollIn(int(fd), 0)
			perr = err
			return err != nil || n
		}); err != nil || perr != nil {
			// Not in the poller after all: block a thread instead.
			// Closing owner early would kill a running VMM.
			for {
				if done, err := pollIn(fd, -1); done || err != nil {
					return
				}
			}
		}
	}()
	return nil
}

// pollIn polls fd for POLLIN for at most timeout ms (-1: no limit),
// retrying on EINTR.
func pollIn(fd, timeout int) (bool, error) {
	for {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(p, timeout)
		if err == unix.EINTR {
			continue
		}
		return n > 0, err
	}
}

// FindWatchdog returns the PID of the watchdog of the VMM vmmPID (its
// child with the watchdog's command line), or 0 when it has none, from a
// scan of /proc.
func FindWatchdog(vmmPID int) (int, error) {
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return 0, fmt.Errorf("find the watchdog of %d: %w", vmmPID, err)
	}
	for _, p := range stats {
		f, err := statFields(p)
		if err != nil {
			continue // gone meanwhile
		}
		if len(f) < 2 || f[1] != strconv.Itoa(vmmPID) || f[0] == "Z" {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		if err != nil || !bytes.HasPrefix(cmdline, []byte(LauncherArg0+"\x00-watchdog\x00")) {
			continue
		}
		return strconv.Atoi(filepath.Base(filepath.Dir(p)))
	}
	return 0, nil
}

// statFields reads a /proc/PID/stat file and returns its fields after the
// command name (state, ppid, pgrp, ...): the name may hold spaces and
// parentheses, so they start after the last ')'.
func statFields(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed %s: no ')'", path)
	}
	return strings.Fields(string(b[i+1:])), nil
}
