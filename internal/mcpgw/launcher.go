package mcpgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// ErrBackendUnavailable marks a sandbox backend this build cannot use yet.
// The gateway fails closed: such a server is not started at all.
var ErrBackendUnavailable = errors.New("sandbox backend not available")

// RunParams are the per-launch inputs of RunArgv.
type RunParams struct {
	// Binary is the ironclaw executable that provides `run`.
	Binary string
	// Root, when set, is passed as --root (the state directory).
	Root string
	// ID is the sandbox name (--name).
	ID string
	// EnvFile is the path `ironclaw run` reads the server's environment
	// from (--env-file); the launcher passes a pipe as /dev/fd/3 so that
	// secrets never appear on a command line (/proc/PID/cmdline is world-readable).
	EnvFile string
}

// RunArgv returns the argv that starts server s inside a jail:
//
//	ironclaw [--root R] run --name ID [--mount H:G:mode]... [--workdir D] [--allow R]...
//	  [--seccomp P] [--user U] [--rootfs D] [--memory M] [--pids N] [--cpus C]
//	  [--env-file F] -- COMMAND ARGS...
//
// It is pure: it validates and formats, and touches nothing.
func RunArgv(p RunParams, s *ServerConfig) ([]string, error) {
	if s.Transport != TransportStdio {
		return nil, fmt.Errorf("server %q: only stdio servers are launched", s.Name)
	}
	if p.Binary == "" || p.ID == "" {
		return nil, fmt.Errorf("server %q: launcher needs the ironclaw binary and a sandbox id", s.Name)
	}
	if err := sandbox.ValidateID(p.ID); err != nil {
		return nil, fmt.Errorf("server %q: %w", s.Name, err)
	}
	sb := s.Sandbox
	argv := []string{p.Binary}
	if p.Root != "" {
		argv = append(argv, "--root", p.Root)
	}
	argv = append(argv, "run", "--name", p.ID)
	for _, m := range sb.Mounts {
		argv = append(argv, "--mount", m.String())
	}
	if sb.Workdir != "" {
		argv = append(argv, "--workdir", sb.Workdir)
	}
	for _, a := range sb.Allow {
		argv = append(argv, "--allow", a)
	}
	if sb.Seccomp != "" {
		argv = append(argv, "--seccomp", sb.Seccomp)
	}
	if sb.User != "" {
		argv = append(argv, "--user", sb.User)
	}
	if sb.Rootfs != "" {
		argv = append(argv, "--rootfs", sb.Rootfs)
	}
	if sb.Memory != "" {
		argv = append(argv, "--memory", sb.Memory)
	}
	if sb.Pids != 0 {
		argv = append(argv, "--pids", strconv.FormatInt(sb.Pids, 10))
	}
	if sb.CPUs != 0 {
		argv = append(argv, "--cpus", strconv.FormatFloat(sb.CPUs, 'f', -1, 64))
	}
	if len(s.Env) > 0 {
		if p.EnvFile == "" {
			return nil, fmt.Errorf("server %q: has env but no env file to pass it through", s.Name)
		}
		argv = append(argv, "--env-file", p.EnvFile)
	}
	argv = append(argv, "--")
	argv = append(argv, s.Command)
	argv = append(argv, s.Args...)
	return argv, nil
}

// EnvLines formats env as sorted KEY=VALUE lines for --env-file.
func EnvLines(env map[string]string) []byte {
	keys := sortedKeys(env)
	var sb strings.Builder
	for _, k := range keys {
		sb.WriteString(k)
		sb.WriteByte('=')
		sb.WriteString(env[k])
		sb.WriteByte('\n')
	}
	return []byte(sb.String())
}

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
		l.Logger.Warn("MCP SERVER RUNS UNSANDBOXED: backend \"none\" gives it the gateway's full access to this host", "server", s.Name)
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
