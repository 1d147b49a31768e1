package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/vm"
)

// Forget removes from the daemon's store in the data directory dataDir the
// records of the sandboxes gc reclaimed from the state root root (by their
// keys) and returns how many it removed: daemon.ForgetReclaimed.
type Forget func(ctx context.Context, root, dataDir string, keys []sandbox.Key) (int, error)

// newLeanGCCmd is the lean binary's gc. Main forwards it to ironclawd when
// ironclawd is found (ironclawd's gc forgets the daemon's records too);
// without ironclawd it reclaims everything else and, when a daemon store
// holds records of what it reclaimed, says that they stay (the daemon drops
// them at its next start) and how to forget them now.
func newLeanGCCmd(g *Globals) *cobra.Command {
	cmd := NewGCCmd(g, nil)
	cmd.Annotations = map[string]string{ForwardAnnotation: ForwardIfFound}
	cmd.Long += `

ironclaw runs ironclawd gc when ironclawd is found (next to ironclaw or in
$PATH): the daemon's store is in ironclawd. Without it, gc reclaims all the
rest and says so when records of reclaimed sandboxes stay in the store.`
	return cmd
}

// NewGCCmd returns gc; forget removes the daemon's records of the reclaimed
// sandboxes (nil: the lean binary, which links no store; see newLeanGCCmd).
func NewGCCmd(g *Globals, forget Forget) *cobra.Command {
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
			dataDir, err := g.DataDirectory()
			if err != nil {
				return err
			}
			root, err := state.Open(g.root)
			if err != nil {
				return err
			}
			var keys []sandbox.Key
			n, err := root.Collect(func(dir string) error {
				if err := Reclaim(dir); err != nil {
					return err
				}
				keys = append(keys, sandbox.Key(filepath.Base(dir)))
				return nil
			})
			fmt.Printf("reclaimed %d sandbox(es)\n", n)
			if forget != nil {
				rows, ferr := forget(cmd.Context(), root.Dir(), dataDir, keys)
				if rows > 0 {
					fmt.Printf("removed %d daemon record(s) of reclaimed sandboxes\n", rows)
				}
				err = errors.Join(err, ferr)
			} else {
				err = errors.Join(err, keptRecords(os.Stderr, dataDir, keys))
			}
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

// keptRecords tells w (stderr) that the daemon's records of the reclaimed
// sandboxes keys stay in the store in dataDir, if there is one: the lean
// gc does not link the store, and ironclawd was not found.
func keptRecords(w io.Writer, dataDir string, keys []sandbox.Key) error {
	if len(keys) == 0 {
		return nil
	}
	path := datadir.Path(dataDir)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("look for the daemon store: %w", err)
	}
	_, why := FindDaemonBinary()
	fmt.Fprintf(w, "ironclaw: gc: kept the daemon's records (if any) of the %d reclaimed sandbox(es) in %s: forgetting them needs %s (%v). "+
		"The daemon drops them at its next start; to drop them now, run %s gc.\n", len(keys), path, DaemonBinary, why, DaemonBinary)
	return nil
}

// Reclaim removes the kernel objects recorded in a dead sandbox's state
// directory: a micro-VM's VMM, cgroups and network (vm.Reclaim), then the
// jail's processes, cgroups and network (jail.Reclaim). Each touches only
// what its own records name.
func Reclaim(dir string) error {
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
