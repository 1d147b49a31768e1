package mcpgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"syscall"

	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// ErrBackendUnavailable marks a sandbox backend this build cannot use yet.
// The gateway fails closed: such a server is not started at all.
var ErrBackendUnavailable = errors.New("sandbox backend not available")

// hostEnv are the variables an unsandboxed server inherits from the gateway.
var hostEnv = []string{"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"}

// Launcher makes the commands that start stdio servers.
type Launcher struct {
	// Binary is the ironclaw executable whose `run` makes the jail.
	Binary string
	// Root is the state directory passed to `ironclaw run` (--root).
	Root   string
	Logger *slog.Logger
}

// Command returns the command that starts s, not yet started, and a
// cleanup func to call once it has started (or failed to). The command
// dies with the gateway (SIGTERM via Pdeathsig).
func (l *Launcher) Command(ctx context.Context, s *ServerConfig, id string) (*exec.Cmd, func(), error) {
	nop := func() {}
	switch s.Sandbox.Backend {
	case BackendNone:
		l.Logger.Warn("MCP SERVER RUNS UNSANDBOXED: backend \"none\" runs it as the gateway's own uid with the gateway's full access to this host. "+
			"It can reach the approvals socket and approve held calls (its own and every other server's), and rewrite the audit log: "+
			"the Approval Cliff does not contain it", "server", s.Name, "uid", os.Getuid())
		cmd := exec.Command(s.Command, s.Args...)
		env := make([]string, 0, len(hostEnv)+len(s.Env))
		for _, k := range hostEnv {
			if v, ok := os.LookupEnv(k); ok {
				env = append(env, k+"="+v)
			}
		}
		keys := sortedKeys(s.Env)
		for _, k := range keys {
			env = append(env, k+"="+s.Env[k])
		}
		cmd.Env = sandbox.MergeEnv(nil, env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		return cmd, nop, nil
	case BackendVM:
		return nil, nop, fmt.Errorf("server %q: backend vm: %w (the micro-VM backend has not landed; use jail)", s.Name, ErrBackendUnavailable)
	case BackendJail:
	default:
		return nil, nop, fmt.Errorf("server %q: backend %q: %w", s.Name, s.Sandbox.Backend, ErrBackendUnavailable)
	}
	p := RunParams{Binary: l.Binary, Root: l.Root, ID: id}
	var r, w *os.File
	if len(s.Env) > 0 {
		var err error
		r, w, err = os.Pipe()
		if err != nil {
			return nil, nop, fmt.Errorf("server %q: env pipe: %w", s.Name, err)
		}
		// The env is small; it fits the pipe buffer, so write it all now.
		data := EnvLines(s.Env)
		if len(data) > 60<<10 {
			r.Close()
			w.Close()
			return nil, nop, fmt.Errorf("server %q: env is %d bytes, over the 60KiB limit", s.Name, len(data))
		}
		if _, err := w.Write(data); err != nil {
			r.Close()
			w.Close()
			return nil, nop, fmt.Errorf("server %q: write env pipe: %w", s.Name, err)
		}
		w.Close()
		p.EnvFile = "/dev/fd/3"
	}
	argv, err := RunArgv(p, s)
	if err != nil {
		if r != nil {
			r.Close()
		}
		return nil, nop, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{} // `ironclaw run` builds the sandbox's env itself
	if path, ok := os.LookupEnv("PATH"); ok {
		cmd.Env = []string{"PATH=" + path}
	}
	if r != nil {
		cmd.ExtraFiles = []*os.File{r}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	cleanup := func() {
		if r != nil {
			r.Close()
		}
	}
	return cmd, cleanup, nil
}
