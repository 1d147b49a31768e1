package daemon

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// Exec is a process running in a sandbox.
type Exec struct {
	// ID names the exec inside its sandbox; PID is its PID there.
	ID  string
	PID int

	m        *Manager
	b        *box
	p        *agentapi.Process
	o        ExecOptions
	cancel   context.CancelFunc
	timer    *time.Timer
	timedOut atomic.Bool
	t0       time.Time
	oomFrom  uint64
	sb       instance
	done     chan struct{}
	status   ExitStatus
}

// Exec starts o in the running sandbox id with stdio streamed both ways
// (see agentapi.ExecIO; a nil Stdin is empty input). Cancelling ctx kills
// the process and every process of its session. Several execs may run in
// one sandbox at once.
func (m *Manager) Exec(ctx context.Context, id string, o ExecOptions, stdio agentapi.ExecIO) (*Exec, error) {
	t0 := time.Now()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	b, sb, err := m.running(id)
	if err != nil {
		return nil, err
	}
	c, err := b.agent(ctx)
	if err != nil {
		return nil, err
	}
	b.begin(true)
	b.mu.Lock()
	spec := b.opts.Spec
	b.mu.Unlock()
	es := agentapi.ExecSpec{Argv: o.Argv, Env: execEnv(spec, sandbox.Hostname(b.backendID), o), Dir: o.Dir,
		TTY: o.TTY, Rows: o.Rows, Cols: o.Cols}
	if es.Dir == "" {
		es.Dir = sandbox.Workspace
	}
	if o.User != "" {
		u, _ := sandbox.ParseUser(o.User) // validated
		es.User = strconv.FormatUint(uint64(u.UID), 10) + ":" + strconv.FormatUint(uint64(u.GID), 10)
	} else if b.opts.Backend == BackendVM {
		// A jail's agent runs execs as the sandbox's user by default; a
		// VM's agent (the guest's PID 1, root) is told.
		es.User = strconv.FormatUint(uint64(spec.User.UID), 10) + ":" + strconv.FormatUint(uint64(spec.User.GID), 10)
	}
	oomFrom, _ := sb.Group().OOMKills()
	ectx, cancel := context.WithCancel(ctx)
	e := &Exec{m: m, b: b, o: o, cancel: cancel, t0: t0, oomFrom: oomFrom, sb: sb, done: make(chan struct{})}
	if o.Timeout > 0 {
		e.timer = time.AfterFunc(o.Timeout, func() {
			e.timedOut.Store(true)
			cancel() // the agent kills the whole session when the stream ends
		})
	}
	p, err := c.Start(ectx, es, stdio)
	if err != nil {
		e.stop()
		b.end(true)
		if o.DestroyAfter {
			m.destroyLater(b, "exec ended")
		}
		return nil, classifyExecErr(o.Argv[0], err)
	}
	m.met.execStart.Observe(time.Since(t0).Seconds())
	e.p, e.ID, e.PID = p, p.ID, p.PID
	m.bus.emit(id, EventExecStarted, Detail{ExecID: p.ID, Argv: append([]string(nil), o.Argv...)})
	go e.wait(id)
	return e, nil
}

func (e *Exec) stop() {
	if e.timer != nil {
		e.timer.Stop()
	}
	e.cancel()
}

func (e *Exec) wait(id string) {
	st, err := e.p.Wait()
	e.stop()
	var s ExitStatus
	switch {
	case e.timedOut.Load():
		s = ExitStatus{ExitCode: 128 + int(syscall.SIGKILL), Signal: int(syscall.SIGKILL), TimedOut: true}
	case err != nil:
		s = ExitStatus{ExitCode: -1, Error: err.Error()}
		// A stream that broke because the sandbox's init died says so.
		select {
		case <-e.sb.Done():
			s.Error = "the sandbox's init exited during the exec (" + err.Error() + ")"
		case <-time.After(200 * time.Millisecond):
		}
	case st.Signal != 0:
		s = ExitStatus{ExitCode: 128 + st.Signal, Signal: st.Signal}
	default:
		s = ExitStatus{ExitCode: st.Code}
	}
	if s.Signal == int(syscall.SIGKILL) && !s.TimedOut {
		if n, err := e.sb.Group().OOMKills(); err == nil && n > e.oomFrom {
			s.OOMKilled = true
		}
	}
	e.status = s
	e.b.end(true)
	code := s.ExitCode
	e.m.bus.emit(id, EventExecExited, Detail{ExecID: e.ID, ExitCode: &code, Signal: s.Signal, OOMKilled: s.OOMKilled,
		TimedOut: s.TimedOut, Error: s.Error, Duration: time.Since(e.t0).Round(time.Microsecond).String()})
	e.m.met.execTime.Observe(time.Since(e.t0).Seconds())
	close(e.done)
	if e.o.DestroyAfter {
		e.m.destroyLater(e.b, "exec ended")
	}
}

// destroyLater destroys b in the background. Once the manager is
// closing, it leaves b to the next daemon (its recovery, and b's idle
// timeout).
func (m *Manager) destroyLater(b *box, reason string) {
	m.spawn(func() { _ = m.destroy(b, reason) })
}

// Wait returns how the exec ended, once it has and its output was delivered.
func (e *Exec) Wait() ExitStatus {
	<-e.done
	return e.status
}

// Done is closed when Wait would return.
func (e *Exec) Done() <-chan struct{} { return e.done }

// Signal sends sig to the process.
func (e *Exec) Signal(ctx context.Context, sig syscall.Signal) error {
	if sig <= 0 || sig > 64 {
		return fmt.Errorf("%w: signal: %d is not a signal number 1..64", sandbox.ErrInvalid, sig)
	}
	return e.p.Signal(ctx, sig)
}

// Resize sets the terminal size of a TTY exec.
func (e *Exec) Resize(ctx context.Context, rows, cols uint16) error {
	if rows == 0 || cols == 0 {
		return fmt.Errorf("%w: resize: rows and cols must be positive", sandbox.ErrInvalid)
	}
	return e.p.Resize(ctx, rows, cols)
}

// Kill kills the process and its session.
func (e *Exec) Kill() { e.cancel() }

// classifyExecErr turns the agent's refusal to start a program into the
// manager's errors.
func classifyExecErr(argv0 string, err error) error {
	var re *agentapi.RemoteError
	if !errors.As(err, &re) || re.Code != agentapi.CodeInvalid {
		return err
	}
	switch msg := re.Msg; {
	case strings.Contains(msg, "not found in PATH"),
		strings.Contains(msg, "fork/exec") && strings.Contains(msg, "no such file or directory"):
		return fmt.Errorf("%s: %w", argv0, ErrCommandNotFound)
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "exec format error"),
		strings.Contains(msg, "is a directory"):
		return fmt.Errorf("%s: %w (%s)", argv0, ErrNotExecutable, msg)
	default:
		return fmt.Errorf("%w: %s", sandbox.ErrInvalid, msg)
	}
}

// execEnv is the environment of an exec: what `ironclaw run` gives its
// command (jail's base environment), then the spec's env, then the exec's.
func execEnv(spec sandbox.Spec, hostname string, o ExecOptions) []string {
	u := spec.User
	if o.User != "" {
		u, _ = sandbox.ParseUser(o.User)
	}
	name := sandbox.UserName(u.UID)
	base := []string{
		"PATH=" + jail.DefaultPath,
		"HOME=" + sandbox.Workspace,
		"USER=" + name,
		"LOGNAME=" + name,
		"HOSTNAME=" + hostname,
		"LANG=C.UTF-8",
	}
	if o.TTY {
		base = append(base, "TERM=xterm-256color")
	}
	return sandbox.MergeEnv(base, append(append([]string(nil), spec.Env...), o.Env...)...)
}

// begin and end bracket an operation: a sandbox with one running is not
// idle.
func (b *box) begin(exec bool) {
	b.mu.Lock()
	b.busy++
	if exec {
		b.execs++
	}
	b.lastActive = time.Now().UTC()
	b.mu.Unlock()
}

func (b *box) end(exec bool) {
	b.mu.Lock()
	b.busy--
	if exec {
		b.execs--
	}
	b.lastActive = time.Now().UTC()
	b.mu.Unlock()
}
