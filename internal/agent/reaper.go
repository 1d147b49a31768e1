package agent

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reaper is the child reaper of a process that is an init (PID 1 of a VM or
// of a jail's PID namespace) or a subreaper: it waits for every child,
// including orphans re-parented to it, so no zombie accumulates. Processes
// started through Start get their wait status delivered; all others are
// reaped and forgotten.
//
// Only one Reaper may run in a process, and nothing else in that process may
// wait for children (os/exec's Wait would race it).
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
}

// NewReaper starts reaping children until ctx ends.
func NewReaper(ctx context.Context) *Reaper {
	r := &Reaper{waiters: map[int]chan unix.WaitStatus{}}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	go func() {
		defer signal.Stop(sig)
		for {
			r.reap()
			select {
			case <-ctx.Done():
				return
			case <-sig:
			}
		}
	}()
	return r
}

// Start runs start (which forks a child and returns its PID) with the reap
// loop held off, so the child cannot be reaped before it is registered, and
// returns a channel that receives the child's wait status.
func (r *Reaper) Start(start func() (int, error)) (<-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	return ch, nil
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			ch <- ws
			delete(r.waiters, pid)
		}
	}
}
