package daemoncli

import (
	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/ironclaw/ironclaw/internal/daemon"
)

// newGCCmd is ironclawd's gc: cli's, which also forgets the daemon's
// records of the sandboxes it reclaimed.
func newGCCmd(g *cli.Globals) *cobra.Command { return cli.NewGCCmd(g, daemon.ForgetReclaimed) }
