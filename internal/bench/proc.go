package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
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

// HostBusy returns the share of all CPUs' time (0 to 1) that was not idle
// (nor waiting for I/O) over window, from /proc/stat.
func HostBusy(window time.Duration) (float64, error) {
	idle0, total0, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	time.Sleep(window)
	idle1, total1, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	if total1 <= total0 {
		return 0, nil
	}
	return 1 - float64(idle1-idle0)/float64(total1-total0), nil
}

// cpuTimes reads the idle (idle + iowait) and total jiffies of all CPUs.
func cpuTimes() (idle, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		// user nice system idle iowait irq softirq steal (guest and
		// guest_nice are counted in user and nice already)
		if i >= 8 {
			break
		}
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total, nil
}

// WaitIdle waits until the host's CPUs were busy less than maxBusy (a
// share, 0 to 1) over one window: background work that an earlier run left
// (a pool maintainer, the kernel destroying a namespace) is over. It gives
// up with an error after timeout.
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
			return fmt.Errorf("the host did not go idle in %s (last %.0f%% busy over %s)", timeout, busy*100, window)
		}
	}
}
