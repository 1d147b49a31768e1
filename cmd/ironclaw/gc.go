package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/daemon"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
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
the same collection of sandboxes first. Records of the reclaimed sandboxes in
the daemon's store (in --data-dir) go too, unless a daemon serves the root or
the data directory (it drops them).
When no sandbox of the root is left, the root's empty parent cgroups go too
(named "ironclaw" for the default root, "ironclaw-<hash>" for others, at the
top of each cgroup hierarchy); the next start makes them again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dataDir, err := g.dataDirectory()
			if err != nil {
				return err
			}
			root, err := state.Open(g.root)
			if err != nil {
				return err
			}
			var keys []sandbox.Key
			n, err := root.Collect(func(dir string) error {
				if err := g.reclaim(dir); err != nil {
					return err
				}
				keys = append(keys, sandbox.Key(filepath.Base(dir)))
				return nil
			})
			fmt.Printf("reclaimed %d sandbox(es)\n", n)
			rows, ferr := daemon.ForgetReclaimed(cmd.Context(), root.Dir(), dataDir, keys)
			if rows > 0 {
				fmt.Printf("removed %d daemon record(s) of reclaimed sandboxes\n", rows)
			}
			err = errors.Join(err, ferr)
			cfg, cerr := netConfig(g)
			if cerr != nil {
				return errors.Join(err, cerr)
			}
			slots, serr := network.Maintain(cmd.Context(), cfg)
			if slots > 0 {
				fmt.Printf("destroyed %d used network pool slot(s)\n", slots)
			}
			gone, herr := network.SweepHost()
			if len(gone) > 0 {
				fmt.Printf("removed host firewall elements of %d link(s) that no longer exist: %s\n", len(gone), strings.Join(gone, ", "))
			}
			return errors.Join(err, serr, herr, removeParents(root))
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

// removeParents removes the root's empty parent cgroups (one per hierarchy,
// named root.Name()) when the root holds no sandbox directory. Only empty
// groups of that name go: the kernel refuses to remove one that holds a
// group or a process, and a sandbox starting meanwhile makes its parent
// again if it went (cgroup.Host.Create).
func removeParents(root *state.Root) error {
	n, err := root.Sandboxes()
	if err != nil || n > 0 {
		return err
	}
	h, err := cgroup.Detect()
	if errors.Is(err, sandbox.ErrUnsupported) {
		return nil // no cgroup file system: no parents
	} else if err != nil {
		return err
	}
	removed, inUse, err := h.RemoveParents(root.Name())
	if len(removed) > 0 {
		fmt.Printf("removed %d empty cgroup parent(s) %s\n", len(removed), root.Name())
	}
	if len(inUse) > 0 {
		fmt.Printf("kept %d cgroup parent(s) %s: a group or process is in them\n", len(inUse), root.Name())
	}
	return err
}
