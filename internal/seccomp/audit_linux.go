package seccomp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultAuditCapacity is the event ring's capacity when NewAuditor is
// given none.
const DefaultAuditCapacity = 1024

// ReportVersion is the version of the Report JSON format.
const ReportVersion = 1

// seccompNotif is struct seccomp_notif (include/uapi/linux/seccomp.h).
type seccompNotif struct {
	ID    uint64
	PID   uint32
	Flags uint32
	Nr    int32
	Arch  uint32
	IP    uint64
	Args  [6]uint64
}

// seccompNotifResp is struct seccomp_notif_resp.
type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// The ioctl numbers encode these sizes; a mismatch would not compile.
var (
	_ [unsafe.Sizeof(seccompNotif{}) - 80]struct{}
	_ [80 - unsafe.Sizeof(seccompNotif{})]struct{}
	_ [unsafe.Sizeof(seccompNotifResp{}) - 24]struct{}
	_ [24 - unsafe.Sizeof(seccompNotifResp{})]struct{}
)

// Event is one syscall the profile would have stopped.
type Event struct {
	Time time.Time `json:"time"`
	PID  uint32    `json:"pid"`
	Arch Arch      `json:"arch,omitempty"`
	Nr   uint32    `json:"nr"`
	Name string    `json:"name,omitempty"`
	Args [6]uint64 `json:"args"`
}

// SyscallCount is how often one syscall was reported.
type SyscallCount struct {
	Name  string `json:"name"`
	Arch  Arch   `json:"arch"`
	Nr    uint32 `json:"nr"`
	Count uint64 `json:"count"`
}

// Report is an audit-mode summary: exact per-syscall counts, and the most
// recent events in a ring of fixed capacity.
type Report struct {
	Version int `json:"version"`
	// Profile is the profile that was audited; the Auditor does not know
	// it, the caller that writes the report fills it in.
	Profile  string         `json:"profile,omitempty"`
	Total    uint64         `json:"total"`    // notifications received
	Unknown  uint64         `json:"unknown"`  // of which the syscall number or arch was not in IronClaw's tables
	Dropped  uint64         `json:"dropped"`  // events that no longer fit the ring
	Capacity int            `json:"capacity"` // ring capacity
	Syscalls []SyscallCount `json:"syscalls"` // by count, descending, then name
	Events   []Event        `json:"events"`   // oldest first
}

type countKey struct {
	arch Arch
	nr   uint32
}

// Auditor serves a seccomp user-notification listener: it records each
// notification and lets the syscall proceed
// (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Memory is bounded: counts exist only
// for syscall numbers in IronClaw's tables (anything else goes to one
// counter), and events live in a ring of fixed capacity.
type Auditor struct {
	listener *os.File
	log      *slog.Logger

	mu      sync.Mutex
	counts  map[countKey]uint64
	unknown uint64
	total   uint64
	ring    []Event
	next    int // ring write position
	dropped uint64
}

// NewAuditor returns an Auditor for listener, which it owns and closes when
// Run returns. capacity <= 0 means DefaultAuditCapacity.
func NewAuditor(listener *os.File, capacity int, log *slog.Logger) *Auditor {
	if capacity <= 0 {
		capacity = DefaultAuditCapacity
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Auditor{
		listener: listener,
		log:      log,
		counts:   map[countKey]uint64{},
		ring:     make([]Event, 0, capacity),
	}
}

// Run receives notifications until ctx is done or no task uses the filter
// any more (the listener hangs up), then closes the listener and returns
// nil; any other failure is returned.
func (a *Auditor) Run(ctx context.Context) (err error) {
	defer func() {
		if cerr := a.listener.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close seccomp listener: %w", cerr)
		}
	}()
	// A pipe wakes poll when ctx is done.
	var wake [2]int
	if err := unix.Pipe2(wake[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("audit: pipe: %w", err)
	}
	defer unix.Close(wake[0])
	stop := context.AfterFunc(ctx, func() { unix.Write(wake[1], []byte{0}) })
	defer func() {
		stop()
		unix.Close(wake[1])
	}()
	rc, err := a.listener.SyscallConn()
	if err != nil {
		return fmt.Errorf("audit: listener: %w", err)
	}
	var runErr error
	ctlErr := rc.Control(func(fd uintptr) { runErr = a.serve(ctx, int(fd), wake[0]) })
	if ctlErr != nil {
		return fmt.Errorf("audit: listener: %w", ctlErr)
	}
	return runErr
}

func (a *Auditor) serve(ctx context.Context, fd, wake int) error {
	for {
		if ctx.Err() != nil {
			return nil
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("audit: poll: %w", err)
		}
		if pfd[1].Revents != 0 {
			return nil
		}
		if pfd[0].Revents&unix.POLLIN == 0 {
			if pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
				return nil
			}
			continue
		}
		var n seccompNotif // RECV requires a zeroed struct
		if err := ioctl(fd, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&n)); err != nil {
			// ENOENT: the task died or was interrupted before we got it.
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("audit: receive notification: %w", err)
		}
		a.record(&n)
		resp := seccompNotifResp{ID: n.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
		if err := ioctl(fd, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp)); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("audit: answer notification: %w", err)
		}
	}
}

func ioctl(fd int, req uint, arg unsafe.Pointer) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

func archOfAudit(v uint32) Arch {
	for a, in := range archInfos {
		if in().audit == v {
			return a
		}
	}
	return ""
}

func (a *Auditor) record(n *seccompNotif) {
	arch := archOfAudit(n.Arch)
	ev := Event{Time: time.Now().UTC(), PID: n.PID, Arch: arch, Nr: uint32(n.Nr), Args: n.Args}
	if arch != "" {
		ev.Name = arch.SyscallName(ev.Nr)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total++
	if ev.Name == "" {
		a.unknown++
	} else {
		k := countKey{arch, ev.Nr}
		if a.counts[k] == 0 {
			a.log.Info("seccomp audit: the profile would stop this syscall", "syscall", ev.Name, "arch", arch, "pid", ev.PID)
		}
		a.counts[k]++
	}
	if len(a.ring) < cap(a.ring) {
		a.ring = append(a.ring, ev)
		return
	}
	a.ring[a.next] = ev
	a.next = (a.next + 1) % len(a.ring)
	a.dropped++
}

// Report returns a summary of what was recorded so far.
func (a *Auditor) Report() Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := Report{
		Version:  ReportVersion,
		Total:    a.total,
		Unknown:  a.unknown,
		Dropped:  a.dropped,
		Capacity: cap(a.ring),
		Syscalls: []SyscallCount{},
		Events:   make([]Event, 0, len(a.ring)),
	}
	for k, c := range a.counts {
		r.Syscalls = append(r.Syscalls, SyscallCount{Name: k.arch.SyscallName(k.nr), Arch: k.arch, Nr: k.nr, Count: c})
	}
	sort.Slice(r.Syscalls, func(i, j int) bool {
		x, y := r.Syscalls[i], r.Syscalls[j]
		if x.Count != y.Count {
			return x.Count > y.Count
		}
		if x.Name != y.Name {
			return x.Name < y.Name
		}
		return x.Arch < y.Arch
	})
	r.Events = append(r.Events, a.ring[a.next:]...)
	r.Events = append(r.Events, a.ring[:a.next]...)
	return r
}
