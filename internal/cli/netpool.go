package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// defaultNetPool is how many free network slots networked sandboxes keep
// prepared when neither --net-pool nor IRONCLAW_NET_POOL says otherwise.
const defaultNetPool = 2

// maxNetPool bounds --net-pool and `net pool fill`.
const maxNetPool = 1024

// maintainDelay is how long the maintainer a run starts waits before its
// first pass: its namespace and nftables work (rtnl lock, commits whose
// transactions the kernel destroys an RCU grace period later) would
// otherwise run beside the run's own exit, which closes nftables sockets
// (see docs/performance.md). The daemon's pools wait after a claim for
// the same reason.
const maintainDelay = 50 * time.Millisecond

// maintainTimeout bounds one detached maintainer.
const maintainTimeout = 5 * time.Minute

// maintainLogLimit is the size past which a run truncates the detached
// maintainers' log before it appends to it.
const maintainLogLimit = 1 << 20

// NetPoolFlag registers --net-pool on fl, defaulting to IRONCLAW_NET_POOL
// (read when the flag is checked, see NetPoolSize).
func NetPoolFlag(fl *pflag.FlagSet, p *string) {
	fl.StringVar(p, "net-pool", os.Getenv("IRONCLAW_NET_POOL"),
		fmt.Sprintf("free network slots to keep prepared for --allow sandboxes, refilled in the background after each one (env IRONCLAW_NET_POOL; default %d; 0 turns it off)", defaultNetPool))
}

// NetPoolSize parses the value of --net-pool ("" means the default).
func NetPoolSize(v string) (int, error) {
	if v == "" {
		return defaultNetPool, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxNetPool {
		return 0, fmt.Errorf("%w: --net-pool (or IRONCLAW_NET_POOL) %q: want a number from 0 to %d", sandbox.ErrInvalid, v, maxNetPool)
	}
	return n, nil
}

// prepareFlag registers --allow on fl: the rules new slots are prepared
// with.
func prepareFlag(fl *pflag.FlagSet, p *[]string) {
	fl.StringArrayVar(p, "allow", nil, "prepare new slots with these address rules (CIDR[:PORT[-PORT]][/tcp|/udp], repeatable), so that sandboxes with exactly these rules only verify them; without it, or with a domain rule, new slots let nothing out")
}

// preparePolicy parses the --allow rules of the pool commands.
func preparePolicy(allow []string) (firewall.Policy, error) {
	p, err := firewall.ParsePolicy(allow)
	if err != nil {
		return p, fmt.Errorf("--allow: %w", err)
	}
	return p, nil
}

// spawnMaintainer starts `ironclaw net pool maintain --free free` for this
// root as a detached process: a new session, stdin and stdout on
// /dev/null, stderr appended to <root>/net/maintain.log, not waited for.
// It starts after the sandbox ended and begins its work maintainDelay
// later, so that none of it (making and removing namespaces holds the
// kernel's rtnl lock for milliseconds) competes with the run's own setup,
// teardown or exit. It prepares the new slots
// for allow, the run's rules, when they are address rules only (see
// network.Config.Prepare): the next run with the same rules then makes no
// nftables commit. Any failure is logged: the run's outcome never depends
// on it.
func spawnMaintainer(g *Globals, free int, allow []string) {
	dir := filepath.Join(g.root, "net")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		g.logger.Warn("start network pool maintainer", "err", err)
		return
	}
	logf, err := os.OpenFile(filepath.Join(dir, "maintain.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		g.logger.Warn("start network pool maintainer", "err", err)
		return
	}
	defer logf.Close()
	if st, err := logf.Stat(); err == nil && st.Size() > maintainLogLimit {
		_ = logf.Truncate(0)
	}
	// Descriptors this run inherited without close-on-exec (a harness's
	// pipe, a jobserver) are close-on-exec since main: the maintainer does
	// not hold them open after the run has exited.
	cmd := exec.Command("/proc/self/exe", "--root", g.root, "net", "pool", "maintain", "--free", strconv.Itoa(free), "--delay", maintainDelay.String())
	if p, err := firewall.ParsePolicy(allow); err == nil && len(p.Domains) == 0 {
		for _, r := range allow {
			cmd.Args = append(cmd.Args, "--allow", r)
		}
	}
	cmd.Args[0] = os.Args[0]
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		g.logger.Warn("start network pool maintainer", "err", err)
		return
	}
	g.logger.Debug("started network pool maintainer", "pid", cmd.Process.Pid, "free", free)
	_ = cmd.Process.Release()
}

func newNetPoolMaintainCmd(g *Globals) *cobra.Command {
	var free string
	var allow []string
	var delay time.Duration
	cmd := &cobra.Command{
		Use:   "maintain",
		Short: "Destroy used slots and prepare free ones, once, unless another maintainer is at work",
		Long: `Destroy used network pool slots (and slots of dead sandboxes), then prepare
slots until --free are free, pass after pass until nothing is left to do; then
exit. Only one maintainer per --root works at a time (a flock on
<root>/net/maintain.lock): a second one exits at once. A networked
'ironclaw run' starts this in the background after its sandbox ends (see
--net-pool), logging to <root>/net/maintain.log; it never touches a slot a
sandbox holds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := NetPoolSize(free)
			if err != nil {
				return err
			}
			if delay < 0 || delay > time.Minute {
				return fmt.Errorf("%w: --delay %s: want 0 to 1m", sandbox.ErrInvalid, delay)
			}
			time.Sleep(delay)
			cfg, err := netConfig(g)
			if err != nil {
				return err
			}
			if cfg.Prepare, err = preparePolicy(allow); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), maintainTimeout)
			defer cancel()
			kept, err := network.KeepPool(ctx, cfg, n)
			if kept.Busy {
				fmt.Fprintln(cmd.OutOrStdout(), "another maintainer is at work on this root; nothing done")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "destroyed %d used slots, prepared %d\n", kept.Destroyed, kept.Made)
			if err != nil {
				g.logger.Error("network pool maintenance", "root", g.root, "err", err)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&free, "free", os.Getenv("IRONCLAW_NET_POOL"), fmt.Sprintf("free slots to prepare (env IRONCLAW_NET_POOL; default %d)", defaultNetPool))
	prepareFlag(cmd.Flags(), &allow)
	cmd.Flags().DurationVar(&delay, "delay", 0, "wait this long before the first pass (a run passes 50ms, so that the work does not run beside its exit)")
	return cmd
}

func newNetPoolStatusCmd(g *Globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Count the pool's slots: free (and of those, prepared with allow rules), claimed (in use), used and orphaned (waiting to be destroyed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := netConfig(g)
			if err != nil {
				return err
			}
			st, err := network.Pool(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "free %d (%d prepared with allow rules)\nclaimed %d\nused %d\norphaned %d\n", st.Free, st.Prepared, st.Claimed, st.Used, st.Orphaned)
			return nil
		},
	}
}
