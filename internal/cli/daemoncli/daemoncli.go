// Package daemoncli is the command line of ironclawd's daemon-side
// commands: serve (the daemon and its API server), mcp (the MCP gateway),
// approvals, audit, and gc's part that forgets the daemon's records. They
// link the daemon, its SQLite store, Prometheus and the MCP SDK, which the
// lean ironclaw binary leaves out (see internal/cli); ironclaw forwards
// these commands to ironclawd.
package daemoncli

import (
	"context"
	"path/filepath"

	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/store"
)

// Commands returns the constructors of every subcommand of ironclawd: those
// of the sandbox path (cli.Commands), gc with the daemon's store, and the
// daemon-side ones.
func Commands() []cli.Command {
	return append(cli.Commands(), newGCCmd, newServeCmd, newMCPCmd, newApprovalsCmd, newAuditCmd)
}

// openStore opens the store at path (a --store flag) or, when path is
// empty, in the data directory, which it creates (0700) if missing. With
// refuseStranded, a store an earlier IronClaw left in the state root fails
// the open (the daemon: its records of live sandboxes may be in it);
// otherwise it is logged as a warning.
func openStore(ctx context.Context, g *cli.Globals, path string, refuseStranded bool) (*store.Store, error) {
	if path == "" {
		dir, err := g.DataDirectory()
		if err != nil {
			return nil, err
		}
		se, err := datadir.Stranded(filepath.Clean(g.Root()), dir)
		if err != nil {
			return nil, err
		}
		if se != nil && refuseStranded {
			return nil, se
		}
		if se != nil {
			g.Logger().Warn(se.Error())
		}
		if err := datadir.MakeDir(dir); err != nil {
			return nil, err
		}
		path = datadir.Path(dir)
	}
	return store.Open(ctx, path)
}
