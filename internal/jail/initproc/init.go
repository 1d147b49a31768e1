package initproc

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/jail/spawner"
	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// Arg0 is the argv[0] the jail re-executes its binary with to run the
// sandbox's init. Every binary that starts jails (ironclaw, and the test
// binaries of packages that start jails) calls MaybeMain first thing in
// main or TestMain.
const Arg0 = "ironclaw-init"

// ctlFD is the control socket's descriptor number in init.
const ctlFD = 3

// MaybeMain runs the sandbox init and never returns when this process was
// started as one (argv[0] == Arg0), and likewise the spawner that forks
// the inits of a daemon's sandboxes (spawner.Arg0); otherwise it returns
// at once.
func MaybeMain() {
	spawner.MaybeMain()
	if len(os.Args) == 0 || os.Args[0] != Arg0 {
		return
	}
	os.Exit(initMain())
}

// initMain is PID 1 of a sandbox. It builds the root file system and
// confines a thread the way every command of the sandbox will be confined;
// the host verifies that thread. Then, for `ironclaw run`, it starts the
// command from that thread, forwards signals to it, reaps every orphan and
// reports how the command ended; when the command exits, init exits and the
// kernel kills whatever is left in the PID namespace. For a long-lived
// sandbox it serves the agent protocol instead (see agentMain).
func initMain() int {
	t0 := time.Now()
	var steps []string
	mark := func(step string) {
		steps = append(steps, step+"="+time.Since(t0).Round(time.Microsecond).String())
	}
	// Whatever descriptor init was started with beyond 0, 1 and 2 — its
	// own (the control socket, the lock, the binds), the runtime's, and
	// any the host process inherited without close-on-exec from its own
	// parent (a shell, a CI runner) — must not reach a command: a leaked
	// descriptor is a door out of every namespace. Init uses its own in
	// place; nothing is passed on across exec but stdio.
	cloexecErr := closeOnExecFrom(ctlFD)
	syscall.CloseOnExec(ctlFD)
	c, err := NewConn(os.NewFile(ctlFD, "ctl"))
	if err != nil {
		return 1
	}
	fail := func(step string, err error) int {
		_ = c.Send(InitMsg{Error: &StepError{Step: step, Message: err.Error(), Errno: errnoOf(err)}})
		return 1
	}
	if cloexecErr != nil {
		return fail("init", cloexecErr)
	}
	var msg HostMsg
	files, err := c.Recv(&msg)
	CloseAll(files)
	switch {
	case errors.Is(err, ErrProtocol):
		return fail("init", fmt.Errorf("%w: rebuild ironclaw and ironclaw-agent from the same source", err))
	case err != nil:
		return fail("configure init", err)
	case msg.Config == nil:
		return fail("configure init", errors.New("the first control message has no config"))
	}
	cfg := msg.Config
	if cfg.Epoch != 0 {
		steps = append(steps, "main="+t0.Sub(time.Unix(0, cfg.Epoch)).Round(time.Microsecond).String()+"-after-spawn")
	}
	mark("config")
	if cfg.ExeFD > 0 {
		unix.Close(cfg.ExeFD)
	}
	// The state directory's lock stays open in init (close-on-exec, so no
	// command inherits it) for as long as the sandbox lives.
	syscall.CloseOnExec(cfg.LockFD)

	// Signals are caught before anything can send one, and forwarded to
	// the command once it runs. PID 1 only receives signals it handles.
	sigs := make(chan os.Signal, 64)
	if cfg.Agent == nil {
		signal.Notify(sigs, forwarded...)
		signal.Notify(sigs, syscall.SIGCHLD)
	}

	if step, err := buildRoot(cfg); err != nil {
		return fail(step, err)
	}
	mark("root")
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fail("set hostname", err)
	}
	if cfg.Loopback {
		if err := loopbackUp(); err != nil {
			return fail("bring up loopback", err)
		}
	}
	path := ""
	if cfg.Agent == nil {
		if path, err = lookPath(cfg.Command[0], cfg.Env); err != nil {
			return fail("exec", err)
		}
	}
	for _, r := range cfg.Rlimits {
		if err := syscall.Setrlimit(r.Resource, &syscall.Rlimit{Cur: r.Cur, Max: r.Max}); err != nil {
			return fail("set Rlimit", fmt.Errorf("resource %d: %w", r.Resource, err))
		}
	}
	ll, err := newLandlock(cfg)
	if err != nil {
		return fail("landlock", err)
	}
	mark("landlock")

	// From here on the host drives: Placed and Go messages release the
	// launcher; EOF means the host is gone, and the sandbox goes with it
	// unless it is persistent.
	l := startLauncher(cfg, path, ll)
	// Threads for init's own later needs are made now, while the host
	// places init, not once the command may have used up the pids limit.
	spares := make(chan struct{})
	go func() {
		if cfg.Agent == nil {
			spareThreads(spareThreadCount)
		}
		close(spares)
	}()
	hostGone := make(chan struct{})
	go func() {
		for {
			var m HostMsg
			files, err := c.Recv(&m)
			CloseAll(files)
			if err != nil {
				close(hostGone)
				return
			}
			if m.Placed {
				l.place()
			}
			if m.Go {
				l.release()
			}
		}
	}()
	var tid int
	select {
	case <-hostGone:
		return 1
	case tid = <-l.ready:
	case err := <-l.failed:
		return fail(l.step, err)
	}
	<-spares
	mark("confined")
	if !cfg.Trace {
		steps = nil
	}
	var attach []*os.File
	if l.listener != nil {
		attach = append(attach, l.listener)
	}
	if err := c.Send(InitMsg{Ready: &ReadyMsg{TID: tid, Steps: steps}}, attach...); err != nil {
		return 1
	}
	CloseAll(attach) // the host's copy is what counts
	var pid int
	select {
	case <-hostGone:
		return 1
	case r := <-l.result:
		if r.err != nil {
			return fail("exec", r.err)
		}
		pid = r.pid
	}
	if err := c.Send(InitMsg{Started: &StartedMsg{PID: pid}}); err != nil {
		return 1
	}
	if cfg.Agent != nil {
		return agentMain(cfg, ll, c, hostGone)
	}

	for {
		select {
		case <-hostGone:
			return 1
		case s := <-sigs:
			if s != syscall.SIGCHLD {
				forward(pid, s.(syscall.Signal))
				continue
			}
			if st, done := reap(pid); done {
				// The command is gone: init exits, and the kernel
				// kills everything left in the PID namespace.
				_ = c.Send(InitMsg{Exited: &st})
				return 0
			}
		}
	}
}

// spareThreadCount is how many idle OS threads init keeps for itself
// before the command starts: enough for its blocking receive on the
// control socket, the signal loop and a thread to run goroutines while
// those block, with one to spare.
const spareThreadCount = 2

// spareThreads leaves n OS threads idle in the Go runtime, which keeps
// idle threads for reuse and never ends them. Init shares the sandbox's
// pids limit with the command; the launcher's thread ends once the
// command is started, and a fork bomb that has used up the limit would
// then make the runtime's next thread creation fail, which aborts init
// (the sandbox then dies with 137 instead of being reported as it ends).
// With spares made first, the runtime reuses them instead.
func spareThreads(n int) {
	locked := make(chan struct{})
	release := make(chan struct{})
	for range n {
		go func() {
			runtime.LockOSThread()
			locked <- struct{}{}
			<-release
			runtime.UnlockOSThread()
		}()
	}
	for range n {
		<-locked
	}
	close(release)
}

// forwarded are the signals init passes on to the command's process group.
var forwarded = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGCONT,
}

func forward(pid int, s syscall.Signal) {
	// The command leads its own session and process group; signal the
	// group as a terminal would, and the process itself if the group is gone.
	if err := syscall.Kill(-pid, s); err != nil {
		_ = syscall.Kill(pid, s)
	}
}

// reap collects every exited child. It reports the command's status once
// the command itself has been reaped.
func reap(pid int) (ExitStatus, bool) {
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err != nil || got <= 0 {
			return ExitStatus{}, false
		}
		if got != pid {
			continue
		}
		if ws.Signaled() {
			return ExitStatus{Code: 128 + int(ws.Signal()), Signal: int(ws.Signal())}, true
		}
		return ExitStatus{Code: ws.ExitStatus()}, true
	}
}

// launcher owns the one OS thread the command is started from. Everything
// that confines the command (cgroup namespace, capability bounding set,
// no_new_privs, Landlock, and the seccomp filter) is applied to that
// thread only, just before fork and execve, so the child inherits exactly
// that state while init's other threads are unaffected. The thread is
// never unlocked: the Go runtime destroys it when the goroutine ends.
type launcher struct {
	step     string
	listener *os.File // seccomp audit listener, sent to the host
	ready    chan int
	failed   chan error
	placed   chan struct{}
	goCh     chan struct{}
	result   chan launchResult
}

type launchResult struct {
	pid int
	err error
}

func startLauncher(cfg *Config, path string, ll *landlockRules) *launcher {
	l := &launcher{
		ready:  make(chan int, 1),
		failed: make(chan error, 1),
		placed: make(chan struct{}),
		goCh:   make(chan struct{}),
		result: make(chan launchResult, 1),
	}
	go func() {
		runtime.LockOSThread() // never unlocked
		step, listener, err := confineThread(cfg, ll, l.placed)
		if err != nil {
			l.step = step
			l.failed <- err
			return
		}
		l.listener = listener
		l.ready <- unix.Gettid()
		<-l.goCh
		if cfg.Agent != nil {
			// A long-lived sandbox has no command of its own: this thread
			// only proved the confinement every exec will get.
			l.result <- launchResult{}
			return
		}
		pid, err := syscall.ForkExec(path, cfg.Command, &syscall.ProcAttr{
			Dir:   cfg.Cwd,
			Env:   cfg.Env,
			Files: []uintptr{0, 1, 2},
			Sys:   commandAttr(cfg),
		})
		l.result <- launchResult{pid, err}
	}()
	return l
}

func (l *launcher) place() { closeOnce(l.placed) }

func (l *launcher) release() { closeOnce(l.goCh) }

// closeOnce closes ch unless it is closed; only the control reader calls it.
func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// closeOnExecFrom marks every descriptor from first on close-on-exec.
func closeOnExecFrom(first int) error {
	err := unix.CloseRange(uint(first), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if err != unix.ENOSYS && err != unix.EINVAL {
		return fmt.Errorf("mark descriptors close-on-exec: %w", err)
	}
	// Before Linux 5.11: one fcntl per open descriptor.
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("mark descriptors close-on-exec: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("mark descriptors close-on-exec: %w", err)
	}
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || fd < first {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return fmt.Errorf("mark descriptor %d close-on-exec: %w", fd, err)
		}
	}
	return nil
}

func commandAttr(cfg *Config) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setsid: true}
	if cfg.TTY {
		attr.Setctty = true
		attr.Ctty = 0
	}
	if cfg.User.UID != 0 || cfg.User.GID != 0 {
		// setresuid away from 0 clears every capability of the child.
		attr.Credential = &syscall.Credential{Uid: cfg.User.UID, Gid: cfg.User.GID, Groups: []uint32{}}
	}
	return attr
}

// confineThread applies, to the calling (locked) thread, everything the
// command inherits. It returns the step that failed.
func confineThread(cfg *Config, ll *landlockRules, placed <-chan struct{}) (string, *os.File, error) {
	last, err := lastCap()
	if err != nil {
		return "drop capabilities", nil, err
	}
	for c := 0; c <= last; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return "drop capabilities", nil, fmt.Errorf("drop %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return "drop capabilities", nil, fmt.Errorf("clear ambient set: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return "no_new_privs", nil, err
	}
	if err := ll.restrictThread(); err != nil {
		return "landlock", nil, err
	}
	// A cgroup namespace rooted at the sandbox's cgroup. The host moves
	// init there while init builds its root (on cgroup v1 a move waits for
	// an RCU grace period, several milliseconds, so it runs in parallel).
	<-placed
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return "cgroup namespace", nil, err
	}
	if cfg.User.UID == 0 && cfg.User.GID == 0 {
		// Root inside keeps its uid, so clear its capabilities here: the
		// child starts with none.
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return "drop capabilities", nil, fmt.Errorf("capset: %w", err)
		}
	}
	// The seccomp filter is installed here, last, on this thread only: it
	// is the final step before fork and execve, and everything this thread
	// does until then is on the profile's launch path (see package seccomp).
	listener, err := seccomp.InstallThread(cfg.Seccomp)
	if err != nil {
		return "seccomp", nil, err
	}
	return "", listener, nil
}

// lastCap reads the highest capability number the kernel knows. (Raw
// calls: os.ReadFile costs five more syscalls, for the poller.)
func lastCap() (int, error) {
	fd, err := unix.Open("/proc/sys/kernel/cap_last_cap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	var buf [16]byte
	n, err := unix.Read(fd, buf[:])
	unix.Close(fd)
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(buf[:max(n, 0)])))
	if err != nil || v < 0 || v > 63 {
		return 0, fmt.Errorf("parse cap_last_cap %q: want 0..63", buf[:max(n, 0)])
	}
	return v, nil
}

// ErrCommandNotFound is reported when the command is not on the sandbox's PATH.
var ErrCommandNotFound = errors.New("command not found")

// lookPath resolves name against the PATH of env, inside the sandbox.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if _, err := os.Stat(name); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return "", fmt.Errorf("%s: %w", name, ErrCommandNotFound)
			}
			return "", fmt.Errorf("%s: %w", name, err)
		}
		return name, nil
	}
	pathEnv := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, ErrCommandNotFound)
}

// loopbackUp brings up lo in the sandbox's own network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
