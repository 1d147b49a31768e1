package cli

import (
	"fmt"
	"io"
	"path/filepath"
	"strconv"

	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/spf13/cobra"
)

// netConfig is the sandbox-network configuration of this host. It opens
// (and if needed creates) the state root first, with the permissions
// sandboxes need.
func netConfig(g *Globals) (network.Config, error) {
	if _, err := state.Open(g.root); err != nil {
		return network.Config{}, err
	}
	return network.Config{Root: g.root, Logger: g.logger}, nil
}

func newNetCmd(g *Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Inspect and maintain sandbox networks",
	}
	cmd.AddCommand(newNetShowCmd(g), newNetPoolCmd(g))
	return cmd
}

func newNetShowCmd(g *Globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Print a sandbox's live firewall rules and whether they verify",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := sandbox.ValidateID(id); err != nil {
				return err
			}
			dir := filepath.Join(g.root, "sandboxes", string(sandbox.KeyOf(id)))
			st, err := network.Inspect(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if !printNetStatus(cmd.OutOrStdout(), id, st) {
				return exitError{code: 1}
			}
			return nil
		},
	}
}

// printNetStatus prints st and reports whether the rules verified.
func printNetStatus(w io.Writer, id string, st *network.Status) bool {
	if !st.Networked {
		fmt.Fprintf(w, "sandbox %s: no network record (loopback only, or no such sandbox)\n", id)
		return true
	}
	fmt.Fprintf(w, "sandbox %s\n  namespace %s\n  link      %s (host side) <-> %s\n  address   %v, gateway %v\n",
		id, st.NetnsPath, st.Names.HostIf, network.SandboxIf, st.SandboxAddr, st.HostAddr)
	if st.Slot != "" {
		fmt.Fprintf(w, "  pool slot %s\n", st.Slot)
	}
	fmt.Fprintf(w, "  allow     %v\n", st.Allow)
	if st.Services.HTTPS != 0 {
		fmt.Fprintf(w, "  egress    DNS stub :%d, HTTP proxy :%d, HTTPS proxy :%d\n", st.Services.DNS, st.Services.HTTP, st.Services.HTTPS)
	}
	fmt.Fprintln(w, "\ninside the sandbox: table inet ironclaw")
	for _, c := range st.Report.Sandbox {
		fmt.Fprintf(w, "  %s\n", c.Describe())
		for _, r := range c.Rules {
			fmt.Fprintf(w, "    %s\n", r)
		}
	}
	fmt.Fprintln(w, "  set elements (the policy)")
	for _, e := range st.Report.SandboxElements {
		fmt.Fprintf(w, "    %s\n", e)
	}
	fmt.Fprintln(w, "\non the host: table inet ironclaw (fixed base chains, shared by all sandboxes)")
	for _, c := range st.Report.Host {
		fmt.Fprintf(w, "  %s\n", c.Describe())
		for _, r := range c.Rules {
			fmt.Fprintf(w, "    %s\n", r)
		}
	}
	fmt.Fprintf(w, "\non the host: this sandbox's set elements (keyed by %s)\n", st.Names.HostIf)
	for _, e := range st.Report.Elements {
		fmt.Fprintf(w, "  %s\n", e)
	}
	if st.Report.Err != nil {
		fmt.Fprintf(w, "\nverification FAILED: %v\n", st.Report.Err)
		return false
	}
	fmt.Fprintln(w, "\nverified: the kernel holds exactly the rules built from the policy")
	return true
}

func newNetPoolCmd(g *Globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Maintain the pool of prepared sandbox networks",
		Long: `Networked sandboxes (--allow) take a prepared network slot (namespace, veth
pair, address, firewall) from the pool under <root>/net/slots, and leave it
used when they end: a used slot is never reused. A slot is prepared either
with a firewall that lets nothing out or with the rules of one policy of
address rules (--allow); a sandbox with that policy takes such a slot first
and only verifies its rules. By default (--net-pool, IRONCLAW_NET_POOL) the
pool maintains itself: after a networked run a background 'net pool
maintain' destroys used slots and refills the pool with slots for that run's
rules, and the daemon does the same in the background (with slots that let
nothing out). Free slots count toward N whatever they were prepared with.
These commands do it by hand.`,
	}
	var fillAllow []string
	fill := &cobra.Command{
		Use:   "fill N",
		Short: "Destroy used slots and prepare free ones until N are free",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 0 || n > maxNetPool {
				return fmt.Errorf("%w: pool size %q: want a number from 0 to %d", sandbox.ErrInvalid, args[0], maxNetPool)
			}
			cfg, err := netConfig(g)
			if err != nil {
				return err
			}
			if cfg.Prepare, err = preparePolicy(fillAllow); err != nil {
				return err
			}
			destroyed, err := network.Maintain(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			made, err := network.Fill(cmd.Context(), cfg, n)
			fmt.Fprintf(cmd.OutOrStdout(), "destroyed %d used slots, prepared %d\n", destroyed, made)
			return err
		},
	}
	prepareFlag(fill.Flags(), &fillAllow)
	cmd.AddCommand(fill, &cobra.Command{
		Use:   "drain",
		Short: "Destroy every slot not in use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := netConfig(g)
			if err != nil {
				return err
			}
			return network.Drain(cmd.Context(), cfg)
		},
	}, newNetPoolMaintainCmd(g), newNetPoolStatusCmd(g))
	return cmd
}
