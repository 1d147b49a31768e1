package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ProcTimes is what a process has used so far.
type ProcTimes struct {
	CPU    time.Duration // user + system
	MinFlt uint64        // minor page faults
}

// ProcStat reads the CPU time and minor faults of process pid (all its
// threads, not its children) from /proc/PID/stat.
func ProcStat(pid int) (ProcTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcTimes{}, err
	}
	return parseStat(string(b))
}

// ProcStatWith is ProcStat of pid plus that of each of its children
// whose argv[0] is arg0 (a daemon and its spawner, whose forks it does).
func ProcStatWith(pid int, arg0 string) (ProcTimes, error) {
	t, err := ProcStat(pid)
	if err != nil {
		return t, err
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return t, err
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		for _, f := range strings.Fields(string(b)) {
			child, err := strconv.Atoi(f)
			if err != nil {
				return t, fmt.Errorf("parse children of %d: %w", pid, err)
			}
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child))
			if err != nil || !strings.HasPrefix(string(cmdline), arg0+"\x00") {
				continue
			}
			ct, err := ProcStat(child)
			if err != nil {
				continue // it ended
			}
			t.CPU += ct.CPU
			t.MinFlt += ct.MinFlt
		}
	}
	return t, nil
}

func parseStat(s string) (ProcTimes, error) {
	// The command name is in parentheses and may hold spaces and
	// parentheses: the fields start after the last ')'. Counted from
	// there: state is 0, minflt 7, utime 11, stime 12.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ProcTimes{}, errors.New("parse proc stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return ProcTimes{}, fmt.Errorf("parse proc stat: %d fields after the name, want 13 or more", len(f))
	}
	minflt, err1 := strconv.ParseUint(f[7], 10, 64)
	ut, err2 := strconv.ParseUint(f[11], 10, 64)
	st, err3 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return ProcTimes{}, fmt.Errorf("parse proc stat: %w", err)
	}
	const hz = 100 // USER_HZ, fixed on Linux
	return ProcTimes{CPU: time.Duration(ut+st) * time.Second / hz, MinFlt: minflt}, nil
}

// MountTmpfs mounts a fresh tmpfs of mode 0711 on dir and returns its
// unmount.
func MountTmpfs(dir string) (unmount func() error, err error) {
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0711"); err != nil {
		return nil, fmt.Errorf("mount a tmpfs on %s: %w", dir, err)
	}
	return func() error {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		return nil
	}, nil
}

// HostBusy returns the share of all CPUs' time (0 to 1) that tasks ran
// over window. It reads the root cgroup's CPU usage (cgroup v2 cpu.stat, or
// v1 cpuacct.usage: every task's, kernel threads' included, in µs or ns);
// /proc/stat, whose ticks of 10 ms are too coarse for a short window, only
// where neither exists.
func HostBusy(window time.Duration) (float64, error) {
	u0, err := cpuUsage()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	time.Sleep(window)
	u1, err := cpuUsage()
	if err != nil {
		return 0, err
	}
	elapsed := time.Since(t0) * time.Duration(runtime.NumCPU())
	return float64(u1-u0) / float64(elapsed), nil
}

// cpuUsage returns the CPU time every task has used since boot.
func cpuUsage() (time.Duration, error) {
	for _, f := range []string{"/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/unified/cpu.stat"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				us, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return 0, fmt.Errorf("%s: %w", f, err)
				}
				return time.Duration(us) * time.Microsecond, nil
			}
		}
	}
	for _, f := range []string{"/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		ns, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", f, err)
		}
		return time.Duration(ns), nil
	}
	return procStatUsage()
}

// procStatUsage is the CPU time of /proc/stat's first line: user, nice,
// system, irq and softirq (guest time is in user and nice already; idle,
// iowait and steal are not the host's work).
func procStatUsage() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil // USER_HZ is 100
}

// ErrNotIdle is WaitIdle's error when the host did not go idle in time.
var ErrNotIdle = errors.New("the host did not go idle")

// WaitIdle waits until the host's CPUs were busy less than maxBusy (a
// share, 0 to 1) over one window: background work that an earlier run left
// (a pool maintainer, a kernel worker destroying a namespace) is over. After
// timeout it returns an error wrapping ErrNotIdle.
func WaitIdle(ctx context.Context, window time.Duration, maxBusy float64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		busy, err := HostBusy(window)
		if err != nil {
			return err
		}
		if busy < maxBusy {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w in %s: the last %s was %.0f%% busy", ErrNotIdle, timeout, window, busy*100)
		}
	}
}

// Maintainers returns the PIDs of the running `ironclaw net pool
// maintain` processes of state root root, found by their command lines.
// A process that is exiting has no command line left and is not listed.
func Maintainers(root string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue // it ended
		}
		c := string(b)
		if strings.Contains(c, "\x00--root\x00"+root+"\x00") && strings.Contains(c, "\x00pool\x00maintain\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}
