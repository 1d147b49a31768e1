package config

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ironclaw/ironclaw/internal/sandbox"
)

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
	keys := SortedKeys(env)
	var sb strings.Builder
	for _, k := range keys {
		sb.WriteString(k)
		sb.WriteByte('=')
		sb.WriteString(env[k])
		sb.WriteByte('\n')
	}
	return []byte(sb.String())
}
