// Command ironclaw runs commands and MCP tool servers in disposable sandboxes.
//
// This package only parses flags and wires the internal packages together;
// each subcommand lives in its own file and is registered in newRootCmd.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/store"
)

// exitError carries a process exit status out of a subcommand without
// printing anything more: the subcommand has already said what happened.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the settings every subcommand shares.
type globals struct {
	root    string // state directory
	dataDir string // data directory flag; "" resolves from root (see dataDirectory)
	logger  *slog.Logger
	debug   bool
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "ironclaw",
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
	root.PersistentFlags().StringVar(&g.root, "root", envOr("IRONCLAW_ROOT", defaultRoot), "runtime state directory: sandboxes, sockets, locks; need not outlive a reboot (env IRONCLAW_ROOT)")
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", os.Getenv("IRONCLAW_DATA_DIR"),
		"durable data directory: the store with the audit log and the daemon's records (env IRONCLAW_DATA_DIR; default "+datadir.DefaultDir+" with the default --root, else the --root directory)")
	root.PersistentFlags().BoolVar(&g.debug, "debug", false, "log debug messages to stderr")
	for _, sub := range subcommands {
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

// subcommands lists the constructors of every subcommand, one file each.
var subcommands = []func(*globals) *cobra.Command{
	newRunCmd, newGCCmd, newDoctorCmd, newSeccompCmd, newNetCmd, newMCPCmd, newApprovalsCmd, newAuditCmd, newImageCmd,
	newServeCmd, newSandboxCmd,
}

const defaultRoot = state.DefaultRoot

// dataDirectory returns the data directory the store lives in: --data-dir,
// or datadir.DirFor(--root) — or the root itself while a store an earlier
// IronClaw left there has not been moved (logged with how to move it).
func (g *globals) dataDirectory() (string, error) {
	d, kept, err := datadir.ResolveDir(g.dataDir, g.root)
	if err != nil {
		return "", fmt.Errorf("--data-dir: %w", err)
	}
	if kept != nil {
		g.logger.Warn("using the store in the state root until it is moved", "why", kept.Error())
	}
	return d, nil
}

// openStore opens the store at path (a --store flag) or, when path is
// empty, in the data directory, which it creates (0700) if missing. With
// refuseStranded, a store an earlier IronClaw left in the state root fails
// the open (the daemon: its records of live sandboxes may be in it);
// otherwise it is logged as a warning.
func (g *globals) openStore(ctx context.Context, path string, refuseStranded bool) (*store.Store, error) {
	if path == "" {
		dir, err := g.dataDirectory()
		if err != nil {
			return nil, err
		}
		se, err := datadir.Stranded(filepath.Clean(g.root), dir)
		if err != nil {
			return nil, err
		}
		if se != nil && refuseStranded {
			return nil, se
		}
		if se != nil {
			g.logger.Warn(se.Error())
		}
		if err := datadir.MakeDir(dir); err != nil {
			return nil, err
		}
		path = datadir.Path(dir)
	}
	return store.Open(ctx, path)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	if reexec() {
		return
	}
	if err := cloexecInherited(); err != nil {
		fmt.Fprintln(os.Stderr, "ironclaw:", err)
		os.Exit(125)
	}
	g := &globals{logger: slog.Default()}
	err := newRootCmd(g).ExecuteContext(context.Background())
	var ee exitError
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "ironclaw:", err)
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
