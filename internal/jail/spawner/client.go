package spawner

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"reflect"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Spec is a process to start: what exec.Cmd would be given.
type Spec struct {
	Path string
	Args []string
	Env  []string
	// Files become the child's descriptors 0, 1, 2, ... (stdio first);
	// none may be nil.
	Files []*os.File
	// NetNS, when set, is the network namespace the child is forked in.
	NetNS *os.File
	// Sys holds the clone flags, ID maps, credential, session and cgroup
	// descriptor. Pdeathsig and PidFD must not be set: the spawner is the
	// parent, and the child's pidfd is returned in Child.
	Sys *syscall.SysProcAttr
}

// Child is a process the spawner started.
type Child struct {
	// PID is its PID; PidFD names it (owned by the caller from Spawn on).
	PID   int
	PidFD int

	done   chan struct{}
	status syscall.WaitStatus
	known  bool
}

// Done is closed when the child has ended.
func (c *Child) Done() <-chan struct{} { return c.done }

// Status returns how the child ended, once Done is closed. It reports
// false when that is unknown: the spawner itself ended first (the child
// is then reparented, and Done closes when its pidfd polls readable).
func (c *Child) Status() (syscall.WaitStatus, bool) { return c.status, c.known }

// Client starts processes through a spawner. It is safe for concurrent
// use. A spawner that dies is started again at the next Spawn; the
// children of the old one are then watched through their pidfds.
type Client struct {
	exe string
	log *slog.Logger

	mu       sync.Mutex
	closed   bool
	cur      *proc
	seq      uint64
	children map[int]*Child // started, not yet reported ended
}

// proc is one running spawner.
type proc struct {
	cmd     *exec.Cmd
	conn    *net.UnixConn
	wmu     sync.Mutex
	pending map[uint64]chan result // under Client.mu
	dead    bool                   // under Client.mu
}

type result struct {
	child *Child
	err   error
}

// New returns a client that starts the spawner from exe (an init binary:
// ironclaw-agent, or one whose main calls jail.MaybeInit) when first
// needed.
func New(exe string, log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Client{exe: exe, log: log, children: make(map[int]*Child)}
}

// Spawn starts s and returns the child once it runs (or once exec
// failed, which Spawn reports as an error).
func (c *Client) Spawn(s Spec) (*Child, error) {
	req := request{
		Path: s.Path, Args: s.Args, Env: s.Env, Files: len(s.Files), NetNS: s.NetNS != nil,
	}
	if a := s.Sys; a != nil {
		req.Cloneflags, req.UidMappings, req.GidMappings = a.Cloneflags, a.UidMappings, a.GidMappings
		req.GidMappingsEnableSetgroups, req.Credential, req.Setsid = a.GidMappingsEnableSetgroups, a.Credential, a.Setsid
		req.CgroupFD = a.UseCgroupFD
		// Anything else set would be dropped on the way, and the child
		// would differ from one forked here: refuse it.
		rest := *a
		rest.Cloneflags, rest.UidMappings, rest.GidMappings, rest.GidMappingsEnableSetgroups = 0, nil, nil, false
		rest.Credential, rest.Setsid, rest.UseCgroupFD, rest.CgroupFD = nil, false, false, 0
		if !reflect.ValueOf(rest).IsZero() {
			return nil, fmt.Errorf("spawn: unsupported process attributes %+v (only clone flags, ID maps, credential, setsid and a cgroup)", rest)
		}
	}
	fds := make([]int, 0, req.fds())
	for i, f := range s.Files {
		if f == nil {
			return nil, fmt.Errorf("spawn: file %d is nil", i)
		}
		fds = append(fds, int(f.Fd()))
	}
	if s.NetNS != nil {
		fds = append(fds, int(s.NetNS.Fd()))
	}
	if req.CgroupFD {
		fds = append(fds, s.Sys.CgroupFD)
	}
	p, seq, ch, err := c.register()
	if err != nil {
		return nil, err
	}
	req.Seq = seq
	if err := req.validate(len(fds)); err != nil {
		c.unregister(p, seq)
		return nil, fmt.Errorf("spawn: %w", err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		c.unregister(p, seq)
		return nil, fmt.Errorf("spawn: %w", err)
	}
	p.wmu.Lock()
	_, _, err = p.conn.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
	p.wmu.Unlock()
	if err != nil {
		c.unregister(p, seq)
		return nil, fmt.Errorf("spawn: send request: %w", err)
	}
	select {
	case r := <-ch:
		return r.child, r.err
	case <-time.After(spawnTimeout):
		// A spawner that does not answer is replaced: killing it ends
		// its read loop, which fails every request still waiting.
		_ = p.cmd.Process.Kill()
		r := <-ch
		if r.err == nil {
			return r.child, nil // it answered just in time
		}
		return nil, fmt.Errorf("spawn: no answer from the spawner in %v (killed it): %w", spawnTimeout, r.err)
	}
}

// spawnTimeout bounds the wait for the spawner's answer to one request; a
// fork and exec take milliseconds.
const spawnTimeout = 30 * time.Second

// register returns the running spawner (starting one if needed), a
// request number and the channel its reply arrives on.
func (c *Client) register() (*proc, uint64, chan result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, 0, nil, errors.New("spawn: spawner closed")
	}
	if c.cur == nil || c.cur.dead {
		p, err := c.start()
		if err != nil {
			return nil, 0, nil, err
		}
		c.cur = p
	}
	c.seq++
	ch := make(chan result, 1)
	c.cur.pending[c.seq] = ch
	return c.cur, c.seq, ch, nil
}

func (c *Client) unregister(p *proc, seq uint64) {
	c.mu.Lock()
	delete(p.pending, seq)
	c.mu.Unlock()
}

// start starts a spawner process. With no user namespace to create,
// this fork is a vfork: it copies nothing of the caller.
func (c *Client) start() (*proc, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("start spawner: socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "spawner"), os.NewFile(uintptr(pair[1]), "spawner-peer")
	defer theirs.Close()
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("start spawner: %w", err)
	}
	conn := fc.(*net.UnixConn)
	cmd := &exec.Cmd{
		Path:       c.exe,
		Args:       []string{Arg0},
		Env:        []string{"GOMAXPROCS=1"},
		Stderr:     os.Stderr,
		ExtraFiles: []*os.File{theirs}, // fd 3 = sockFD
		// Its own process group: a terminal's Ctrl-C meant for a daemon
		// in the foreground must not end it first.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("start spawner: %w", err)
	}
	p := &proc{cmd: cmd, conn: conn, pending: make(map[uint64]chan result)}
	go c.readLoop(p)
	c.log.Debug("spawner started", "pid", cmd.Process.Pid)
	return p, nil
}

// readLoop dispatches p's replies and exit reports until p ends.
func (c *Client) readLoop(p *proc) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var err error
	for {
		var n, oobn int
		n, oobn, _, _, err = p.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			break
		}
		if n == 0 {
			err = errors.New("spawner closed its socket")
			break
		}
		files, perr := parseRights(oob[:oobn])
		var rep reply
		if perr == nil {
			perr = decode(buf[:n], &rep)
		}
		if perr != nil {
			for _, f := range files {
				f.Close()
			}
			err = perr
			break
		}
		c.dispatch(p, rep, files)
	}
	// No new request may pick this spawner from now on.
	c.mu.Lock()
	p.dead = true
	c.mu.Unlock()
	p.conn.Close()
	werr := p.cmd.Wait()
	c.log.Warn("spawner ended", "pid", p.cmd.Process.Pid, "read", err, "wait", werr)
	c.mu.Lock()
	for seq, ch := range p.pending {
		ch <- result{err: fmt.Errorf("spawn: spawner ended: %v", err)}
		delete(p.pending, seq)
	}
	// Its children are reparented; no exit report will come. Watch each
	// through its pidfd instead.
	var orphans []*Child
	for pid, ch := range c.children {
		orphans = append(orphans, ch)
		delete(c.children, pid)
	}
	c.mu.Unlock()
	for _, ch := range orphans {
		go watch(ch)
	}
}

func (c *Client) dispatch(p *proc, rep reply, files []*os.File) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rep.Exit != nil {
		for _, f := range files {
			f.Close()
		}
		if ch, ok := c.children[rep.Exit.PID]; ok {
			delete(c.children, rep.Exit.PID)
			ch.status, ch.known = syscall.WaitStatus(rep.Exit.Status), true
			close(ch.done)
		}
		return
	}
	wait, ok := p.pending[rep.Seq]
	if !ok {
		for _, f := range files {
			f.Close()
		}
		// Some request will never get its answer: replace the spawner,
		// which fails every request still waiting.
		c.log.Error("spawner reply to no request; killing it", "seq", rep.Seq, "err", rep.Err)
		_ = p.cmd.Process.Kill()
		return
	}
	delete(p.pending, rep.Seq)
	switch {
	case rep.Err != "":
		for _, f := range files {
			f.Close()
		}
		wait <- result{err: errors.New(rep.Err)}
	case len(files) != 1 || rep.PID <= 0:
		for _, f := range files {
			f.Close()
		}
		wait <- result{err: fmt.Errorf("spawn: malformed reply (pid %d, %d descriptors)", rep.PID, len(files))}
	default:
		// The pidfd is handed over as a bare descriptor: the caller
		// owns and closes it.
		fd, err := unix.FcntlInt(files[0].Fd(), unix.F_DUPFD_CLOEXEC, 0)
		files[0].Close()
		if err != nil {
			wait <- result{err: fmt.Errorf("spawn: keep pidfd: %w", err)}
			return
		}
		// Registered before the caller hears of it, so the exit report
		// (always sent after this reply) finds it.
		ch := &Child{PID: rep.PID, PidFD: fd, done: make(chan struct{})}
		c.children[rep.PID] = ch
		wait <- result{child: ch}
	}
}

// watch closes ch.done once its process has ended, as its pidfd tells.
// When the spawner died, its children were reparented: to this process
// if it is their subreaper (or PID 1), which must then reap them.
func watch(ch *Child) {
	waitReadable(ch.PidFD)
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, ch.PidFD, &info, unix.WEXITED|unix.WNOHANG, nil); err == nil {
		ch.status, ch.known = siginfoStatus(&info)
	}
	close(ch.done)
}

// waitReadable returns once pidfd polls readable (its process ended),
// waiting in the runtime's netpoller, so that the orphans of a dead spawner
// do not hold an OS thread each. The wait uses a non-blocking duplicate;
// the flag is shared with pidfd, which is only ever used for signals and
// for waitid with WNOHANG, where it changes nothing. If that cannot be set
// up it falls back to a blocking poll.
func waitReadable(pidfd int) {
	if fd, err := unix.FcntlInt(uintptr(pidfd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
		} else {
			f := os.NewFile(uintptr(fd), "pidfd")
			defer f.Close()
			if rc, err := f.SyscallConn(); err == nil {
				if err := rc.Read(func(fd uintptr) bool {
					n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
					return n > 0 || (err != nil && err != unix.EINTR)
				}); err == nil {
					return
				}
			}
		}
	}
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != unix.EINTR {
			return
		}
	}
}

// siginfoStatus converts a waitid result into a wait status.
func siginfoStatus(info *unix.Siginfo) (syscall.WaitStatus, bool) {
	// The siginfo of a reaped child: si_code, then si_pid, si_uid and
	// si_status (the exit code or the signal).
	const (
		cldExited = 1 // CLD_EXITED
		cldKilled = 2 // CLD_KILLED
		cldDumped = 3 // CLD_DUMPED
	)
	b := (*[unsafe.Sizeof(*info)]byte)(unsafe.Pointer(info))
	status := int32(binary.NativeEndian.Uint32(b[24:]))
	switch info.Code {
	case cldExited:
		return syscall.WaitStatus(uint32(status&0xff) << 8), true
	case cldKilled, cldDumped:
		return syscall.WaitStatus(uint32(status & 0x7f)), true
	}
	return 0, false
}

// Close stops the spawner: it exits once it reads the end of its
// socket. Children it started live on, and their Done channels still
// close when they end.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	p := c.cur
	dead := p != nil && p.dead
	c.mu.Unlock()
	if p == nil || dead {
		return nil
	}
	if err := p.conn.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close spawner: %w", err)
	}
	return nil
}
