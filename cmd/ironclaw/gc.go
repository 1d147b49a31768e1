package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/vm"
)

func newGCCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Reclaim what sandboxes of dead ironclaw processes left behind",
		Long: `Reclaim the processes, cgroups, network namespaces, links, firewall tables
and files of sandboxes whose ironclaw process died (even by SIGKILL). Only
objects named in IronClaw's own records under --root are touched, and, in
IronClaw's own host table (inet ironclaw), the verdict maps and "ic-" chains
of an earlier firewall layout that nothing uses any more. Every start runs
the same collection of sandboxes first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := state.Open(g.root)
			if err != nil {
				return err
			}
			n, err := root.Collect(g.reclaim)
			fmt.Printf("reclaimed %d sandbox(es)\n", n)
			cfg, cerr := netConfig(g)
			if cerr != nil {
				return errors.Join(err, cerr)
			}
			slots, serr := network.Maintain(cmd.Context(), cfg)
			if slots > 0 {
				fmt.Printf("destroyed %d used network pool slot(s)\n", slots)
			}
			return errors.Join(err, serr)
		},
	}
}

// reclaim removes the kernel objects recorded in a dead sandbox's state
// directory: a micro-VM's VMM, cgroups and network (vm.Reclaim), then the
// jail's processes, cgroups and network (jail.Reclaim). Each touches only
// what its own records name.
func (g *globals) reclaim(dir string) error {
	return errors.Join(vm.Reclaim(dir), jail.Reclaim(dir))
}
