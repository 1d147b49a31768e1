package seccomp

import (
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// SyscallLoop makes n syscalls of the given kind ("getppid", or "read" of
// one byte from /dev/zero) on a fresh OS thread, with p installed on that
// thread only (nil: no filter), and returns the elapsed time. The thread
// exits afterwards, taking its filter with it, so the calling process is
// left as it was. It is the measurement behind the seccomp benchmarks.
func SyscallLoop(p *Program, kind string, n int) (time.Duration, error) {
	type result struct {
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the thread (and its filter) dies with this goroutine.
		runtime.LockOSThread()
		if p != nil {
			if _, err := InstallThread(p); err != nil {
				done <- result{err: err}
				return
			}
		}
		fd := -1
		if kind == "read" {
			var err error
			if fd, err = unix.Open("/dev/zero", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
				done <- result{err: fmt.Errorf("open /dev/zero: %w", err)}
				return
			}
			defer unix.Close(fd)
		} else if kind != "getppid" {
			done <- result{err: fmt.Errorf("syscall loop kind %q (want getppid or read)", kind)}
			return
		}
		var b [1]byte
		start := time.Now()
		for i := 0; i < n; i++ {
			if fd >= 0 {
				unix.Read(fd, b[:])
			} else {
				unix.Getppid()
			}
		}
		done <- result{d: time.Since(start)}
	}()
	r := <-done
	return r.d, r.err
}
