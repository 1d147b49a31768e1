package initproc

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
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
	srv, err := agent.New(agent.Config{
		FileOwner:   owner,
		Token:       cfg.Agent.Token,
		FileRoot:    "/",
		MaxFileSize: cfg.Agent.MaxFileSize,
		Launch:      confinedLauncher(cfg, ll),
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

// confinedLauncher returns the agent's Launch: it starts cmd from a fresh
// locked thread that carries the sandbox's confinement, as the sandbox's
// user unless the exec asked for another, in a new session.
func confinedLauncher(cfg *Config, ll *landlockRules) func(context.Context, *exec.Cmd) error {
	placed := make(chan struct{})
	close(placed) // the sandbox is in its cgroup for good
	return func(ctx context.Context, cmd *exec.Cmd) error {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		// The launching thread dies right after the fork, so a
		// parent-death signal would kill the command at once; the
		// command dies with the sandbox's PID namespace instead.
		cmd.SysProcAttr.Pdeathsig = 0
		cmd.SysProcAttr.Setsid = true
		if cmd.SysProcAttr.Credential == nil {
			cmd.SysProcAttr.Credential = &syscall.Credential{Uid: cfg.User.UID, Gid: cfg.User.GID, Groups: []uint32{}}
		}
		u := *cmd.SysProcAttr.Credential
		if u.Uid == 0 && u.Gid == 0 {
			// Root keeps init's uid; confineThread clears its
			// capabilities, after which setgroups would fail.
			cmd.SysProcAttr.Credential = nil
		}
		fds, err := stdioFDs(cmd)
		if err != nil {
			return err
		}
		attr := &syscall.ProcAttr{Dir: cmd.Dir, Env: cmd.Env, Files: fds, Sys: cmd.SysProcAttr}
		// The confined thread does only what the seccomp launch path
		// allows (channel waits, then fork and exec); this goroutine,
		// on an unconfined thread, reads its status back from the kernel
		// before letting it fork, as the host does for ironclaw run.
		ready := make(chan int, 1)
		proceed := make(chan bool, 1)
		res := make(chan launchResult, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread is confined
			c := *cfg
			c.User.UID, c.User.GID = u.Uid, u.Gid
			step, listener, err := confineThread(&c, ll, placed)
			if err != nil {
				res <- launchResult{err: fmt.Errorf("%s: %w", step, err)}
				return
			}
			if listener != nil {
				listener.Close() // audit mode is refused for agents at Start
			}
			ready <- unix.Gettid()
			if !<-proceed {
				return
			}
			pid, err := syscall.ForkExec(cmd.Path, cmd.Args, attr)
			res <- launchResult{pid: pid, err: err}
		}()
		select {
		case r := <-res:
			return r.err
		case tid := <-ready:
			if err := verifyThread(tid); err != nil {
				proceed <- false
				return fmt.Errorf("verify confinement: %w", err)
			}
			proceed <- true
		}
		r := <-res
		if r.err != nil {
			return r.err
		}
		p, err := os.FindProcess(r.pid)
		if err != nil {
			return fmt.Errorf("exec %s: %w", cmd.Path, err)
		}
		cmd.Process = p
		return nil
	}
}

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
