// Package cli is IronClaw's command line: the global flags, the
// subcommands of the sandbox path (run, gc, doctor, seccomp, net, image and
// the sandbox client commands, which talk to the daemon over its API) and
// Main, which both binaries run.
//
// The lean ironclaw binary (cmd/ironclaw) links only this package and what
// the sandbox path needs; the daemon-side commands (serve, mcp, approvals,
// audit, and the store part of gc) live in internal/cli/daemoncli, which
// links the daemon, its SQLite store, Prometheus and the MCP SDK, and are
// in the complete ironclawd binary (cmd/ironclawd). In ironclaw those
// commands are listed with their short text and forward to ironclawd by
// exec (see forward.go): Go initialises every linked package before main,
// and every `ironclaw run` would pay for the daemon's.
//
// Each subcommand lives in its own file; Commands lists them.
package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/state"
)

// exitError carries a process exit status out of a subcommand without
// printing anything more: the subcommand has already said what happened.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Globals are the settings every subcommand shares: the global flags and
// the logger they configure.
type Globals struct {
	root    string // state directory
	dataDir string // data directory flag; "" resolves from root (see DataDirectory)
	logger  *slog.Logger
	debug   bool
}

// Root returns the state directory (--root).
func (g *Globals) Root() string { return g.root }

// Debug reports whether --debug asks for debug messages.
func (g *Globals) Debug() bool { return g.debug }

// Logger returns the logger the global flags configured.
func (g *Globals) Logger() *slog.Logger { return g.logger }

// Command constructs one subcommand on the shared globals.
type Command func(*Globals) *cobra.Command

// Commands returns the constructors of the subcommands of the sandbox path
// that both binaries have: run, doctor, seccomp, net, image and sandbox. gc
// is NewGCCmd (the lean one is in LeanCommands); the daemon-side commands
// are in internal/cli/daemoncli.
func Commands() []Command {
	return []Command{newRunCmd, newDoctorCmd, newSeccompCmd, newNetCmd, newImageCmd, newSandboxCmd}
}

// LeanCommands returns the subcommands of the lean ironclaw binary:
// Commands, gc without the daemon's store (see newLeanGCCmd), and the
// daemon-side commands as forwarders to ironclawd (see forward).
func LeanCommands() []Command {
	return append(append(Commands(), newLeanGCCmd), forwardedCommands()...)
}

func newRootCmd(name string, g *Globals, cmds []Command) *cobra.Command {
	root := &cobra.Command{
		Use:           name,
		Short:         "Run untrusted agent code and MCP servers in disposable sandboxes",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildVersion(),
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			level := slog.LevelWarn
			if g.debug {
				level = slog.LevelDebug
			}
			g.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
		},
	}
	root.PersistentFlags().StringVar(&g.root, "root", EnvOr("IRONCLAW_ROOT", defaultRoot), "runtime state directory: sandboxes, sockets, locks; need not outlive a reboot (env IRONCLAW_ROOT)")
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", os.Getenv("IRONCLAW_DATA_DIR"),
		"durable data directory: the store with the audit log and the daemon's records (env IRONCLAW_DATA_DIR; default "+datadir.DefaultDir+" with the default --root, else the --root directory)")
	root.PersistentFlags().BoolVar(&g.debug, "debug", false, "log debug messages to stderr")
	for _, sub := range cmds {
		root.AddCommand(sub(g))
	}
	return root
}

// buildVersion describes the running binary from the build information the
// Go toolchain embeds: the module version, and the VCS revision when built
// from a checkout.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+modified"
			}
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		v += " (" + rev + dirty + ")"
	}
	return v + " " + bi.GoVersion
}

const defaultRoot = state.DefaultRoot

// DataDirectory returns the data directory the store lives in: --data-dir,
// or datadir.DirFor(--root) — or the root itself while a store an earlier
// IronClaw left there has not been moved (logged with how to move it).
func (g *Globals) DataDirectory() (string, error) {
	d, kept, err := datadir.ResolveDir(g.dataDir, g.root)
	if err != nil {
		return "", fmt.Errorf("--data-dir: %w", err)
	}
	if kept != nil {
		g.logger.Warn("using the store in the state root until it is moved", "why", kept.Error())
	}
	return d, nil
}

// EnvOr returns the environment variable k, or def when it is empty.
func EnvOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Main runs the binary name (ironclaw or ironclawd) with the subcommands
// cmds and exits with the command's status: 125 when the command could not
// start, or the status an exitError carries. A helper stage re-executed
// from this binary (a sandbox's init, the VMM launcher) runs first and
// never returns; a command of Forwarded execs ironclawd before anything
// else (see forward).
func Main(name string, cmds []Command) {
	if reexec() {
		return
	}
	// Set only for the ironclawd an ironclaw executed; no command, sandbox
	// or server this process starts sees it.
	forwarded := os.Getenv(forwardedEnv) != ""
	if err := os.Unsetenv(forwardedEnv); err != nil {
		fmt.Fprintf(os.Stderr, "%s: unset %s: %v\n", name, forwardedEnv, err)
		os.Exit(125)
	}
	g := &Globals{logger: slog.Default()}
	root := newRootCmd(name, g, cmds)
	if err := forward(root, os.Args[1:], forwarded); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(125)
	}
	if err := cloexecInherited(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(125)
	}
	err := root.ExecuteContext(context.Background())
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(125)
	}
}

// cloexecInherited marks every descriptor above stdio that this process
// inherited close-on-exec, so that none reaches a sandbox, its init, the
// spawner or a VMM: whoever starts ironclaw may leave descriptors open (a
// shell's exec 200>file, an MCP client, a CI runner), and a host file open
// inside a sandbox is a way out of it. This process may still use them (an
// --env-file /dev/fd/3 is opened by path); children get what is passed to
// them explicitly. The helper stages re-executed from this binary (init,
// spawner, VMM launcher) return from reexec first: they hand on the
// descriptors they were given on purpose.
func cloexecInherited() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd) // the directory's own descriptor is closed by now: harmless
		}
	}
	return nil
}

// reexec runs the in-sandbox side of IronClaw when this binary was
// re-executed as a sandbox's init (or another helper stage); those never
// return. It runs before any flag parsing.
func reexec() bool {
	jail.MaybeInit()
	return seccompReexec()
}

// cmdContext is the context commands run under.
func cmdContext() context.Context { return context.Background() }
