package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// drainGrace is how long output pipes are read after the process exited
// without new bytes arriving before the exec is declared finished. Bytes
// already buffered in a pipe are always read; the grace only bounds the wait
// for a background child that inherited the pipe and keeps it open.
const drainGrace = 100 * time.Millisecond

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// execProc is a running exec.
type execProc struct {
	id   string
	pid  int
	proc *os.Process
	tty  *os.File // pty master, nil without a TTY

	mu     sync.Mutex
	exited bool // set once the wait status arrived: the pid may be reused
}

// kill sends SIGKILL to the process's whole process group (every exec gets
// its own session), then to the process in case it left the group. It does
// nothing once the process has been reaped, so a recycled pid is never hit.
func (p *execProc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return
	}
	_ = unix.Kill(-p.pid, unix.SIGKILL)
	_ = p.proc.Signal(unix.SIGKILL)
}

func (p *execProc) markExited() {
	p.mu.Lock()
	p.exited = true
	p.mu.Unlock()
}

// signal delivers sig through the process's pidfd (os.Process), which fails
// rather than hitting another process once this one is gone.
func (p *execProc) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return os.ErrProcessDone
	}
	return p.proc.Signal(sig)
}

// frameWriter serialises frames from several goroutines onto one stream.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (fw *frameWriter) frame(t agentapi.FrameType, p []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return agentapi.WriteFrame(fw.w, t, p)
}

func (s *Server) handleExec(ctx context.Context, st *yamux.Stream, spec agentapi.ExecSpec) {
	cmd, err := s.buildCmd(spec)
	if err != nil {
		s.reply(st, errResponse(agentapi.CodeInvalid, err))
		return
	}
	// Reserve a slot before starting anything, so concurrent execs
	// cannot together pass the limit.
	s.mu.Lock()
	full := s.reserved >= s.cfg.MaxExecs
	if !full {
		s.reserved++
	}
	s.mu.Unlock()
	if full {
		s.reply(st, errResponse(agentapi.CodeInvalid, fmt.Errorf("exec: %d execs already running, the limit", s.cfg.MaxExecs)))
		return
	}
	defer func() {
		s.mu.Lock()
		s.reserved--
		s.mu.Unlock()
	}()

	var (
		stdinW, stdoutR, stderrR *os.File // our ends
		childFiles               []*os.File
		master                   *os.File
	)
	closeAll := func(fs ...*os.File) {
		for _, f := range fs {
			if f != nil {
				_ = f.Close()
			}
		}
	}
	if spec.TTY {
		m, slave, err := openPTY(spec.Rows, spec.Cols)
		if err != nil {
			s.reply(st, errResponse(agentapi.CodeInternal, fmt.Errorf("exec: %w", err)))
			return
		}
		master = m
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		childFiles = []*os.File{slave}
	} else {
		inR, inW, err1 := os.Pipe()
		outR, outW, err2 := os.Pipe()
		errR, errW, err3 := os.Pipe()
		if err := errors.Join(err1, err2, err3); err != nil {
			closeAll(inR, inW, outR, outW, errR, errW)
			s.reply(st, errResponse(agentapi.CodeInternal, fmt.Errorf("exec: pipes: %w", err)))
			return
		}
		stdinW, stdoutR, stderrR = inW, outR, errR
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		cmd.SysProcAttr.Setsid = true
		childFiles = []*os.File{inR, outW, errW}
	}

	var waitCh <-chan unix.WaitStatus
	start := func() (int, error) {
		if err := cloexecInherited(); err != nil {
			return 0, err
		}
		if err := s.cfg.Launch(ctx, cmd); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	}
	if s.cfg.Reaper != nil {
		waitCh, err = s.cfg.Reaper.Start(start)
	} else {
		_, err = start()
		if err == nil {
			ch := make(chan unix.WaitStatus, 1)
			proc := cmd.Process
			go func() {
				ps, werr := proc.Wait()
				if werr != nil {
					ch <- unix.WaitStatus(0xff << 8) // exit code 255: status unknown
					return
				}
				ch <- unix.WaitStatus(ps.Sys().(syscall.WaitStatus))
			}()
			waitCh = ch
		}
	}
	closeAll(childFiles...)
	if err != nil {
		closeAll(stdinW, stdoutR, stderrR, master)
		s.reply(st, errResponse(agentapi.CodeInvalid, fmt.Errorf("exec %s: %w", spec.Argv[0], err)))
		return
	}

	p := &execProc{id: newExecID(), pid: cmd.Process.Pid, proc: cmd.Process, tty: master}
	s.mu.Lock()
	s.execs[p.id] = p
	s.mu.Unlock()
	unregister := sync.OnceFunc(func() {
		s.mu.Lock()
		delete(s.execs, p.id)
		s.mu.Unlock()
	})
	defer unregister()
	s.log.Debug("exec started", "exec", p.id, "pid", p.pid, "argv0", spec.Argv[0])

	fw := &frameWriter{w: st}
	if err := fw.frame(agentapi.FrameResponse, mustJSON(agentapi.Response{ExecID: p.id, PID: p.pid})); err != nil {
		p.kill()
	}

	// Input: frames from the host to the process's stdin (or the pty).
	stdinDst := stdinW
	if master != nil {
		stdinDst = master
	}
	inputDone := make(chan struct{})
	go func() {
		defer close(inputDone)
		s.pumpInput(st, stdinDst, master == nil, p)
	}()

	// Output: process → frames. With a TTY one pump reads the master.
	var exited atomic.Bool
	var outWG sync.WaitGroup
	var outputs []*os.File
	if master != nil {
		outputs = []*os.File{master}
		outWG.Add(1)
		go func() { defer outWG.Done(); pumpOutput(master, fw, agentapi.FrameStdout, &exited, p) }()
	} else {
		outputs = []*os.File{stdoutR, stderrR}
		outWG.Add(2)
		go func() { defer outWG.Done(); pumpOutput(stdoutR, fw, agentapi.FrameStdout, &exited, p) }()
		go func() { defer outWG.Done(); pumpOutput(stderrR, fw, agentapi.FrameStderr, &exited, p) }()
	}

	var ws unix.WaitStatus
	select {
	case ws = <-waitCh:
	case <-ctx.Done():
		p.kill()
		ws = <-waitCh
	}
	p.markExited()
	unregister()
	exited.Store(true)
	for _, f := range outputs {
		_ = f.SetReadDeadline(time.Now().Add(drainGrace))
	}
	outWG.Wait()
	status := agentapi.ExitStatus{Code: ws.ExitStatus()}
	if ws.Signaled() {
		status = agentapi.ExitStatus{Code: -1, Signal: int(ws.Signal())}
	}
	if err := fw.frame(agentapi.FrameExit, mustJSON(status)); err != nil {
		s.log.Debug("exec: write exit status", "exec", p.id, "err", err)
	}
	closeAll(stdoutR, stderrR)
	// The input pump may be blocked writing to a stdin nobody reads.
	if master == nil {
		closeAll(stdinW)
	} else {
		_ = master.SetWriteDeadline(time.Now())
	}
	_ = st.SetReadDeadline(time.Now().Add(drainGrace))
	<-inputDone
	closeAll(master)
	s.log.Debug("exec finished", "exec", p.id, "code", status.Code, "signal", status.Signal)
}

// pumpInput copies stdin frames from the host to dst. A stream that ends
// without a stdin-EOF frame means the host went away: the process is killed.
func (s *Server) pumpInput(st io.Reader, dst *os.File, closeOnEOF bool, p *execProc) {
	broken := false
	for {
		f, err := agentapi.ReadFrame(st, agentapi.MaxFrame)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				p.kill()
			}
			return
		}
		switch f.Type {
		case agentapi.FrameStdin:
			if broken {
				continue
			}
			if _, err := dst.Write(f.Payload); err != nil {
				// The process closed its stdin or exited: drop
				// further input, as a shell pipeline would.
				broken = true
			}
		case agentapi.FrameStdinEOF:
			if closeOnEOF {
				_ = dst.Close()
			}
			return
		default:
			s.log.Debug("exec: unexpected frame on input", "type", f.Type)
			p.kill()
			return
		}
	}
}

// pumpOutput copies src to frames of type t until EOF; after the process
// exited it keeps reading while bytes keep arriving within drainGrace.
func pumpOutput(src *os.File, fw *frameWriter, t agentapi.FrameType, exited *atomic.Bool, p *execProc) {
	buf := make([]byte, agentapi.DataChunk)
	for {
		if exited.Load() {
			_ = src.SetReadDeadline(time.Now().Add(drainGrace))
		}
		n, err := src.Read(buf)
		if n > 0 {
			if werr := fw.frame(t, buf[:n]); werr != nil {
				p.kill()
				return
			}
		}
		if err != nil {
			return // EOF, EIO from a pty whose slave closed, or the drain deadline
		}
	}
}

func (s *Server) signal(sp *agentapi.SignalSpec) agentapi.Response {
	if sp == nil {
		return invalid("signal: missing signal spec")
	}
	if sp.Signal <= 0 || sp.Signal > 64 {
		return invalid(fmt.Sprintf("signal: signal %d out of range 1..64", sp.Signal))
	}
	p := s.lookup(sp.ExecID)
	if p == nil {
		return errResponse(agentapi.CodeNotFound, fmt.Errorf("signal: no running exec %q", sp.ExecID))
	}
	if err := p.signal(unix.Signal(sp.Signal)); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return errResponse(agentapi.CodeNotFound, fmt.Errorf("signal exec %s: %w", sp.ExecID, err))
		}
		return errResponse(agentapi.CodeInternal, fmt.Errorf("signal exec %s: %w", sp.ExecID, err))
	}
	return agentapi.Response{}
}

func (s *Server) resize(rs *agentapi.ResizeSpec) agentapi.Response {
	if rs == nil {
		return invalid("resize: missing resize spec")
	}
	p := s.lookup(rs.ExecID)
	if p == nil {
		return errResponse(agentapi.CodeNotFound, fmt.Errorf("resize: no running exec %q", rs.ExecID))
	}
	if p.tty == nil {
		return invalid(fmt.Sprintf("resize: exec %s has no tty", rs.ExecID))
	}
	if err := setWinsize(p.tty, rs.Rows, rs.Cols); err != nil {
		return errResponse(agentapi.CodeInternal, fmt.Errorf("resize exec %s: %w", rs.ExecID, err))
	}
	return agentapi.Response{}
}

func (s *Server) lookup(id string) *execProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.execs[id]
}

// buildCmd turns spec into a command with everything but stdio set.
func (s *Server) buildCmd(spec agentapi.ExecSpec) (*exec.Cmd, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, errors.New("exec: argv: must not be empty")
	}
	for i, a := range spec.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, fmt.Errorf("exec: argv[%d]: contains NUL", i)
		}
	}
	env := spec.Env
	for i, e := range env {
		if !strings.Contains(e, "=") || strings.IndexByte(e, 0) >= 0 {
			return nil, fmt.Errorf("exec: env[%d]: want KEY=VALUE without NUL", i)
		}
	}
	if len(env) == 0 {
		env = []string{"PATH=" + defaultPath, "HOME=/root"}
		if spec.TTY {
			env = append(env, "TERM=xterm-256color")
		}
	}
	pathEnv := defaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	bin, err := lookPath(spec.Argv[0], pathEnv)
	if err != nil {
		return nil, fmt.Errorf("exec: argv[0]: %w", err)
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	cmd := &exec.Cmd{Path: bin, Args: spec.Argv, Env: env, Dir: dir, SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}}
	if spec.User != "" {
		cred, err := resolveUser(spec.User)
		if err != nil {
			return nil, fmt.Errorf("exec: user: %w", err)
		}
		cmd.SysProcAttr.Credential = cred
	}
	return cmd, nil
}

func lookPath(name, pathEnv string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %s", name, pathEnv)
}

// resolveUser parses "uid[:gid]" or looks a name up in /etc/passwd.
func resolveUser(u string) (*syscall.Credential, error) {
	name, group, hasGroup := strings.Cut(u, ":")
	if uid, err := strconv.ParseUint(name, 10, 32); err == nil {
		gid := uid
		if hasGroup {
			g, err := strconv.ParseUint(group, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%q: gid %q is not a number", u, group)
			}
			gid = g
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	if hasGroup {
		return nil, fmt.Errorf("%q: use uid:gid numbers, or a user name alone", u)
	}
	pw, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", u, err)
	}
	uid, err1 := strconv.ParseUint(pw.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(pw.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("%q: bad passwd entry: %w", u, err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	if gids, err := pw.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	return cred, nil
}

func newExecID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux 3.17+
	return hex.EncodeToString(b[:])
}

// openPTY opens a pseudo-terminal pair: the master non-blocking (so reads
// honour deadlines) and the slave through TIOCGPTPEER, which needs no path
// lookup in /dev/pts.
func openPTY(rows, cols uint16) (master, slave *os.File, err error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		_ = unix.Close(mfd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	// TIOCGPTPEER takes the slave's open flags as its argument.
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(mfd), uintptr(unix.TIOCGPTPEER), uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		_ = unix.Close(mfd)
		return nil, nil, fmt.Errorf("open pty peer: %w", errno)
	}
	sfd := int(r)
	master = os.NewFile(uintptr(mfd), "/dev/ptmx")
	slave = os.NewFile(uintptr(sfd), "pty-slave")
	if rows > 0 && cols > 0 {
		if err := setWinsize(master, rows, cols); err != nil {
			_ = master.Close()
			_ = slave.Close()
			return nil, nil, err
		}
	}
	return master, slave, nil
}

func setWinsize(f *os.File, rows, cols uint16) error {
	if rows == 0 || cols == 0 {
		return fmt.Errorf("set window size: rows and cols must be positive, got %dx%d", rows, cols)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("set window size: %w", err)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return fmt.Errorf("set window size: %w", err)
	}
	if ierr != nil {
		return fmt.Errorf("set window size: %w", ierr)
	}
	return nil
}

// cloexecInherited marks every descriptor above stdio close-on-exec, so a
// process the agent execs gets its stdio (and what its Cmd passes, which
// exec dup2s into place) and nothing else. Go opens its own descriptors
// close-on-exec; the others were handed to the agent: a jail's init holds
// the host-opened file through which threads join the workloads' pids
// cgroup (the kernel checks a write against the opener, the host, so a
// workload holding it could move the agent's threads into its own group),
// and whatever the daemon inherited. It runs before every exec: such
// descriptors may arrive at any time.
func cloexecInherited() error {
	err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// Kernels before 5.11: mark them one by one.
	ents, rerr := os.ReadDir("/proc/self/fd")
	if rerr != nil {
		return fmt.Errorf("exec: mark inherited descriptors close-on-exec: %w (close_range: %v)", rerr, err)
	}
	for _, e := range ents {
		fd, aerr := strconv.Atoi(e.Name())
		if aerr != nil || fd < 3 {
			continue
		}
		if _, ferr := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); ferr != nil && ferr != unix.EBADF {
			return fmt.Errorf("exec: mark descriptor %d close-on-exec: %w", fd, ferr)
		}
	}
	return nil
}
