package initproc

import (
	"context"
	"fmt"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agent"
)

// agentMain serves the agent protocol in a long-lived sandbox: exec, files
// and health, on the listening socket the host created in the sandbox's
// state directory. Every exec is confined exactly like the command of
// `ironclaw run` (see confineThread), on a fresh locked thread, and that
// thread's status is read back from the kernel before the fork.
func agentMain(cfg *Config, ll *landlockRules, c *Conn, hostGone <-chan struct{}) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !cfg.Persistent {
		go func() {
			<-hostGone
			cancel()
		}()
	}
	// SIGTERM is a request to stop; PID 1 ignores it unless handled.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		cancel()
	}()
	lf := os.NewFile(uintptr(cfg.Agent.ListenFD), "agent.sock")
	syscall.CloseOnExec(cfg.Agent.ListenFD)
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return 1
	}
	var owner *agent.FileOwner
	if cfg.User.UID != 0 || cfg.User.GID != 0 {
		// Files the host uploads belong to the sandbox's user, not to
		// the agent (the sandbox's root).
		owner = &agent.FileOwner{UID: cfg.User.UID, GID: cfg.User.GID}
	}
	launch, warm := confinedLauncher(cfg, ll)
	go warm()
	srv, err := agent.New(agent.Config{
		FileOwner:   owner,
		Token:       cfg.Agent.Token,
		FileRoot:    "/",
		MaxFileSize: cfg.Agent.MaxFileSize,
		Launch:      launch,
		Reaper:      agent.NewReaper(ctx),
		Shutdown:    cancel,
		Version:     "jail",
	})
	if err != nil {
		return 1
	}
	defer srv.Close()
	if err := srv.Serve(ctx, l); err != nil {
		return 1
	}
	return 0
}

// confinedLauncher returns the agent's Launch: it starts cmd, as the
// sandbox's user unless the exec asked for another, in a new session, from
// a launcher thread that carries the sandbox's confinement.
//
// Launcher threads are persistent: one for commands run as root inside the
// sandbox (its capabilities cleared) and one for every other user (it keeps
// the capabilities the child needs to switch to that user, and drops them
// in the switch). Each is confined once, verified once from another
// thread, and then forks every command of its kind: confining a fresh
// thread per exec cost about 1.3 ms of every exec's round trip.
func confinedLauncher(cfg *Config, ll *landlockRules) (launch func(context.Context, *exec.Cmd) error, warm func()) {
	var mu sync.Mutex
	launchers := map[bool]*launcherThread{}
	get := func(root bool) (*launcherThread, error) {
		mu.Lock()
		defer mu.Unlock()
		if lt := launchers[root]; lt != nil {
			return lt, nil
		}
		lt, err := startLauncherThread(cfg, ll, root)
		if err != nil {
			return nil, err
		}
		launchers[root] = lt
		return lt, nil
	}
	// warm starts the launcher of the sandbox's own user ahead of the
	// first exec (its move into the workload cgroup waits for an RCU
	// grace period on cgroup v1).
	warm = func() {
		if _, err := get(cfg.User.UID == 0 && cfg.User.GID == 0); err != nil {
			return // the first exec reports it
		}
	}
	launch = func(ctx context.Context, cmd *exec.Cmd) error {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		// A parent-death signal would fire when the launching thread
		// exits; the command dies with the sandbox's PID namespace.
		cmd.SysProcAttr.Pdeathsig = 0
		cmd.SysProcAttr.Setsid = true
		if cmd.SysProcAttr.Credential == nil {
			cmd.SysProcAttr.Credential = &syscall.Credential{Uid: cfg.User.UID, Gid: cfg.User.GID, Groups: []uint32{}}
		}
		u := *cmd.SysProcAttr.Credential
		root := u.Uid == 0 && u.Gid == 0
		if root {
			// Root keeps init's uid; its launcher has no capabilities
			// left, so setgroups would fail.
			cmd.SysProcAttr.Credential = nil
		}
		fds, err := stdioFDs(cmd)
		if err != nil {
			return err
		}
		lt, err := get(root)
		if err != nil {
			return err
		}
		pid, err := lt.forkExec(cmd.Path, cmd.Args, &syscall.ProcAttr{Dir: cmd.Dir, Env: cmd.Env, Files: fds, Sys: cmd.SysProcAttr})
		if err != nil {
			return err
		}
		p, err := os.FindProcess(pid)
		if err != nil {
			return fmt.Errorf("exec %s: %w", cmd.Path, err)
		}
		cmd.Process = p
		return nil
	}
	return launch, warm
}

// launcherThread is a locked OS thread, confined like every command of the
// sandbox, that forks and executes commands on request.
type launcherThread struct {
	reqs chan launchReq
}

type launchReq struct {
	path string
	argv []string
	attr *syscall.ProcAttr
	res  chan launchResult
}

// startLauncherThread confines a new locked thread and verifies its
// /proc status from this (unconfined) one before it accepts any request.
// The confined thread does only what the seccomp launch path allows:
// channel waits, fork and exec.
func startLauncherThread(cfg *Config, ll *landlockRules, root bool) (*launcherThread, error) {
	placed := make(chan struct{})
	close(placed) // the sandbox is in its cgroup for good
	lt := &launcherThread{reqs: make(chan launchReq)}
	ready := make(chan int, 1)
	failed := make(chan error, 1)
	proceed := make(chan bool, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is confined
		if a := cfg.Agent; a != nil && a.WorkTasksFD > 0 {
			// Into the workloads' pids group (single threads move on
			// cgroup v1, and within a threaded subtree on v2): every
			// command this thread forks starts there.
			if _, err := unix.Write(a.WorkTasksFD, []byte(strconv.Itoa(unix.Gettid()))); err != nil {
				failed <- fmt.Errorf("move the launcher into the workload cgroup: %w", err)
				return
			}
		}
		c := *cfg
		if root {
			c.User = sandboxRoot
		} else if c.User == sandboxRoot {
			c.User = nonRoot // keep the capabilities the child's setresuid needs
		}
		step, listener, err := confineThread(&c, ll, placed)
		if err != nil {
			failed <- fmt.Errorf("%s: %w", step, err)
			return
		}
		if listener != nil {
			listener.Close() // audit mode is refused for agents at Start
		}
		ready <- unix.Gettid()
		if !<-proceed {
			return
		}
		for r := range lt.reqs {
			pid, err := syscall.ForkExec(r.path, r.argv, r.attr)
			r.res <- launchResult{pid: pid, err: err}
		}
	}()
	select {
	case err := <-failed:
		return nil, err
	case tid := <-ready:
		if err := verifyThread(tid); err != nil {
			proceed <- false
			return nil, fmt.Errorf("verify confinement: %w", err)
		}
		proceed <- true
	}
	return lt, nil
}

// forkExec runs one fork and exec on the launcher thread.
func (lt *launcherThread) forkExec(path string, argv []string, attr *syscall.ProcAttr) (int, error) {
	res := make(chan launchResult, 1)
	lt.reqs <- launchReq{path: path, argv: argv, attr: attr, res: res}
	r := <-res
	return r.pid, r.err
}

var (
	sandboxRoot = sandbox.User{}
	nonRoot     = sandbox.User{UID: 65534, GID: 65534}
)

// stdioFDs returns cmd's standard streams as descriptors; the agent wires
// them as files.
func stdioFDs(cmd *exec.Cmd) ([]uintptr, error) {
	fds := make([]uintptr, 0, 3+len(cmd.ExtraFiles))
	for i, v := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		f, ok := v.(*os.File)
		if !ok || f == nil {
			return nil, fmt.Errorf("exec %s: stdio %d is %T, want *os.File", cmd.Path, i, v)
		}
		fds = append(fds, f.Fd())
	}
	for _, f := range cmd.ExtraFiles {
		fds = append(fds, f.Fd())
	}
	return fds, nil
}

// verifyThread reads the status of thread tid of this process back from
// the kernel and requires what every command must inherit.
func verifyThread(tid int) error {
	st, err := ReadStatus(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		return err
	}
	return CheckConfined(st)
}
