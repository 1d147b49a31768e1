package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
)

func newGCCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Reclaim what sandboxes of dead ironclaw processes left behind",
		Long: `Reclaim the processes, cgroups, network namespaces, links, firewall tables
and files of sandboxes whose ironclaw process died (even by SIGKILL). Only
objects named in IronClaw's own records under --root are touched. Every
start runs the same collection first.`,
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
// directory: a micro-VM's process first, then the jail's processes and
// cgroups, then the network (jail.Reclaim does both).
func (g *globals) reclaim(dir string) error {
	return errors.Join(qemu.Reclaim(dir), jail.Reclaim(dir))
}
