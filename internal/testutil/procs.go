package testutil

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/bench"
)

// ChildrenRunning returns the PIDs of the live children of process pid
// whose argv[0] is arg0.
func ChildrenRunning(pid int, arg0 string) []int {
	var pids []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, f := range strings.Fields(string(b)) {
			child, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child)); err == nil && strings.HasPrefix(string(cmdline), arg0+"\x00") {
				pids = append(pids, child)
			}
		}
	}
	return pids
}

// ProcStatus returns the value of field key in /proc/PID/status (trimmed),
// failing t if the process or the field is not there.
func ProcStatus(t testing.TB, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

// RequireGone fails t unless every process in pids has ended (and been
// reaped) within timeout. A zombie counts as not gone.
func RequireGone(t testing.TB, pids []int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for _, pid := range pids {
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				t.Errorf("process %d (%q) is still there after %v", pid, cmdline, timeout)
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// Maintainers returns the PIDs of `ironclaw --root root net pool maintain`
// processes (the network pool's detached maintainers).
func Maintainers(root string) []int { return bench.Maintainers(root) }

// WaitMaintainers waits up to timeout for every network pool maintainer
// of root to end and reports whether none is left.
func WaitMaintainers(root string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); len(Maintainers(root)) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// CgroupsHoldProcesses reports whether any of the cgroup directories
// lists a process (a sandbox's groups, read from its record).
func CgroupsHoldProcesses(cgroups []string) bool {
	for _, cg := range cgroups {
		b, err := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			return true
		}
	}
	return false
}
