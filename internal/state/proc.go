package state

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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
