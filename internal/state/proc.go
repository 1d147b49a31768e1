package state

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrProcessGone is returned by ProcStart for a process that no longer
// runs (it does not exist, or it is a zombie).
var ErrProcessGone = errors.New("process gone")

// ProcStart returns the start time of process pid in clock ticks since boot
// (field 22 of /proc/PID/stat). A record keeps it beside the PID: together
// they name one process, where a PID alone may have been reused.
func ProcStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("process %d: %w", pid, ErrProcessGone)
	}
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after the last ')' are plain.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	if f[0] == "Z" {
		return 0, fmt.Errorf("process %d is a zombie: %w", pid, ErrProcessGone)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// KillStarted SIGKILLs process pid if it is the process that started at
// start (a ProcStart value kept in a record), and waits up to wait for it
// to have exited. It opens a pidfd first and checks the start time while
// the pidfd pins the process, then signals through the pidfd: a PID reused
// between the check and the kill is never signalled. A process that is
// gone, or another process now holding the PID, is no error.
func KillStarted(pid int, start uint64, wait time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kill %d: open pidfd: %w", pid, err)
	}
	defer unix.Close(fd)
	st, err := ProcStart(pid)
	if errors.Is(err, ErrProcessGone) || err == nil && st != start {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && err != unix.ESRCH {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	// A pidfd polls readable once its process has exited.
	deadline := time.Now().Add(wait)
	for {
		left := time.Until(deadline)
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(max(left.Milliseconds(), 0)))
		switch {
		case n > 0:
			return nil
		case err == unix.EINTR && left > 0:
			continue
		case err != nil:
			return fmt.Errorf("kill %d: wait: %w", pid, err)
		default:
			return fmt.Errorf("kill %d: still alive %v after SIGKILL", pid, wait)
		}
	}
}
