package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ironclaw/ironclaw/internal/state"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// ErrGone marks an Attach to a QEMU that no longer runs (or whose PID now
// names another process).
var ErrGone = errors.New("the recorded QEMU is not running")

// Attach takes over the running QEMU recorded in cfg.Dir (qemu.json) that
// a process which has since exited started with Launch.Detached (a daemon
// before its restart). It pins the process with a pidfd, checks that it is
// the recorded one (PID and start time) and connects QMP. The agent is not
// connected yet: Reconnect with the sandbox's token does that. The VM's
// exit is observed through the pidfd; Destroy ends it like a VM this
// process started. Only cfg.Dir, cfg.Logger and cfg.BootTimeout (bounding
// the QMP connect; 0 means 10 s) are used. On error nothing is changed:
// the QEMU, if it runs, is left for the caller to reclaim.
func Attach(ctx context.Context, cfg Config) (_ *VM, err error) {
	if cfg.Dir == "" {
		return nil, errors.New("qemu attach: dir: required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 10 * time.Second
	}
	b, err := os.ReadFile(filepath.Join(cfg.Dir, RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("qemu attach: no record: %w", ErrGone)
	}
	if err != nil {
		return nil, fmt.Errorf("qemu attach: %w", err)
	}
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("qemu attach: record %s: %w", cfg.Dir, err)
	}
	if rec.PID <= 0 {
		return nil, fmt.Errorf("qemu attach: the record names no process (QEMU never started): %w", ErrGone)
	}
	pidfd, err := unix.PidfdOpen(rec.PID, 0)
	if err != nil {
		return nil, fmt.Errorf("qemu attach: pid %d: %w (%w)", rec.PID, ErrGone, err)
	}
	// The pidfd pins the process; now check it is the recorded QEMU.
	if st, err := state.ProcStart(rec.PID); err != nil || st != rec.StartTime {
		unix.Close(pidfd)
		return nil, fmt.Errorf("qemu attach: pid %d is not the recorded QEMU any more: %w", rec.PID, ErrGone)
	}
	defer func() {
		if err != nil {
			unix.Close(pidfd) // the process, if it runs, is left alone
		}
	}()
	qctx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	q, err := dialRetry(qctx, func(c context.Context) (*QMP, error) {
		if pidfdExited(pidfd) {
			cancel()
			return nil, ErrGone
		}
		return DialQMP(c, filepath.Join(cfg.Dir, qmpSocket))
	})
	if err != nil {
		if pidfdExited(pidfd) {
			return nil, fmt.Errorf("qemu attach: %w (it exited)", ErrGone)
		}
		return nil, fmt.Errorf("qemu attach: connect QMP: %w", err)
	}
	v := &VM{cfg: cfg, log: log, exited: make(chan struct{}), pidfd: pidfd, pid: rec.PID, QMP: q, started: time.Now()}
	go func() {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		close(v.exited)
	}()
	log.Debug("attached to QEMU", "pid", rec.PID)
	return v, nil
}

// pidfdExited reports whether the process of pidfd has exited.
func pidfdExited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}
