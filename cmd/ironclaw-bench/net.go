package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/ironclaw/ironclaw/internal/bench"
	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/jail/spawner"
	"github.com/ironclaw/ironclaw/internal/state"
)

// netBench measures a networked `ironclaw run --allow ... -- /bin/true`
// against the same run without network and against bwrap --unshare-all.
// Network namespaces come from the pool, kept at benchFree free slots
// prepared for the measured rules before every run (`ironclaw net pool
// fill N --allow RULE`, as the maintainer after a run with them prepares
// them), untimed: one contestant claims them with those rules, which it
// only verifies, another with other rules, which it installs. Every run
// starts on an idle host. No packet is sent: the allowed address is a
// documentation address and /bin/true opens no socket. With -baseline, a
// second ironclaw binary (an earlier build) runs the networked case in the
// same interleaved run, on a pool of its own that it keeps itself, for a
// before/after comparison. The order of the contestants rotates by one
// every round (bench.Run).
// -self-pool adds runs on roots whose pool keeps itself (the default), and
// -daemon runs through daemons with warm pools; with either, every
// contestant starts once the background work they leave (maintainers,
// refills) is over, so that none of it runs beside another contestant.
func netBench(args []string) error {
	fs := flag.NewFlagSet("net", flag.ExitOnError)
	var c common
	c.register(fs)
	baseline := fs.String("baseline", "", "an earlier ironclaw binary to run the networked case with too")
	viaDaemon := fs.Bool("daemon", false, "also measure runs through a daemon (ironclaw serve) with warm pools, on a root of its own: a member made for the measured --allow rules, one of the same pool given other rules when claimed, and a loopback-only one (with -baseline, through the earlier build's daemon too); every run then starts on idle daemons with full pools")
	selfPool := fs.Bool("self-pool", false, "also measure networked runs on a root whose pool starts empty and is never filled by hand, as a user sees them (with -baseline, the earlier binary too, on a root of its own); every run then starts once no pool maintainer of these roots runs")
	crowd := fs.Int("crowd", 0, "keep this many extra prepared pool slots (namespaces with their veth pairs) alive on a root of their own during the runs, as the bench's pool of one slot per run did before: it slows every namespace made beside them, bwrap's included")
	fs.Parse(args)
	cleanup, err := c.setup()
	if err != nil {
		return err
	}
	defer cleanup()
	if *crowd > 0 {
		croot := c.root + "-crowd"
		defer cleanRoot(c.ironclaw, croot)
		if out, err := exec.Command(c.ironclaw, "--root", croot, "net", "pool", "fill", strconv.Itoa(*crowd)).CombinedOutput(); err != nil {
			return fmt.Errorf("crowd the host: %v: %s", err, out)
		}
	}
	bwrap, err := exec.LookPath("bwrap")
	if err != nil {
		return fmt.Errorf("bwrap not found: apt-get install bubblewrap")
	}
	ic := []string{c.ironclaw, "--root", c.root}
	// The pool is kept small, as a user's is (the default --net-pool is
	// 2): before every run, untimed, used slots are destroyed and free
	// ones prepared until benchFree are, for the measured rules (as the
	// maintainer after a run with them prepares them). A pool of hundreds
	// of namespaces would slow every namespace made beside it, bwrap's
	// included (-crowd measures that).
	fill := func(bin, root string, args ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			out, err := exec.CommandContext(ctx, bin, append([]string{"--root", root, "net", "pool", "fill", strconv.Itoa(benchFree)}, args...)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("fill the network pool of %s: %v: %s", root, err, out)
			}
			return nil
		}
	}
	settles := []func(context.Context) error{fill(c.ironclaw, c.root, "--allow", benchAllow)}
	defer func() {
		exec.Command(ic[0], append(ic[1:], "gc")...).Run()
		exec.Command(ic[0], append(ic[1:], "net", "pool", "drain")...).Run()
	}()
	run := append(append([]string{}, ic...), "run")
	// The prefilled cases measure a claimed slot only: no maintainer
	// (--net-pool 0).
	cs := []bench.Contestant{
		command("ironclaw --allow 203.0.113.10/32:443 (pool slot)", append(run, "--net-pool", "0", "--allow", benchAllow, "--", "/bin/true")...),
		command("ironclaw --allow 203.0.113.11/32:443 (pool slot prepared for other rules)", append(run, "--net-pool", "0", "--allow", "203.0.113.11/32:443", "--", "/bin/true")...),
		command("ironclaw (loopback only)", append(run, "--", "/bin/true")...),
		command("bwrap", bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
			"--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
			"--proc", "/proc", "--dev", "/dev", "/bin/true"),
	}
	if *baseline != "" {
		// The earlier build gets a pool of its own, kept by itself as
		// it keeps it (prepared with no rules, as its maintainers did),
		// and --net-pool 0 if it has the flag.
		old := c.root + "-baseline"
		defer cleanRoot(c.ironclaw, old)
		settles = append(settles, fill(*baseline, old))
		args := []string{"--root", old, "run"}
		if help, _ := exec.Command(*baseline, "run", "--help").CombinedOutput(); bytes.Contains(help, []byte("--net-pool")) {
			args = append(args, "--net-pool", "0")
		}
		cs = append(cs, command("baseline --allow 203.0.113.10/32:443 (pool slot)",
			append(append([]string{*baseline}, args...), "--allow", benchAllow, "--", "/bin/true")...))
	}
	for _, f := range settles {
		if err := f(context.Background()); err != nil {
			return err
		}
	}
	var selfRoots []string
	if *selfPool {
		// Roots of their own, never filled by hand: the runs keep
		// their pool themselves (the default --net-pool: a maintainer
		// starts after each run).
		self := c.root + "-self"
		selfRoots = append(selfRoots, self)
		defer cleanRoot(c.ironclaw, self)
		cs = append(cs, command("ironclaw --allow (self-maintained pool, starts empty)",
			c.ironclaw, "--root", self, "run", "--allow", benchAllow, "--", "/bin/true"))
		if *baseline != "" {
			old := c.root + "-baseline-self"
			selfRoots = append(selfRoots, old)
			defer cleanRoot(c.ironclaw, old)
			cs = append(cs, command("baseline --allow (no pool filled)",
				*baseline, "--root", old, "run", "--allow", benchAllow, "--", "/bin/true"))
		}
	}
	cs = append(cs, floorContestants()...)
	if len(selfRoots) > 0 {
		// A maintainer works after its run has ended; every contestant
		// starts once none runs, so that none works beside the next
		// contestant's run.
		settles = append(settles, func(ctx context.Context) error { return waitMaintainers(ctx, selfRoots) })
	}
	if *viaDaemon {
		// With -baseline, the earlier build's daemon serves the same runs
		// on a root of its own (its ironclaw runs the ironclawd beside it).
		builds := []struct{ label, bin, root string }{{"", c.ironclaw, c.root + "-daemon"}}
		if *baseline != "" {
			builds = append(builds, struct{ label, bin, root string }{"baseline ", *baseline, c.root + "-daemon-baseline"})
		}
		var daemons []*serveProc
		for _, b := range builds {
			d, err := startPooledServe(b.bin, b.root)
			if err != nil {
				return err
			}
			defer cleanRoot(c.ironclaw, b.root)
			defer d.stop()
			daemons = append(daemons, d)
			drun := []string{b.bin, "--root", b.root, "run"}
			cs = append(cs,
				command(b.label+"through the daemon: --allow 203.0.113.10/32:443 (warm pool made for it)", append(drun, "--allow", benchAllow, "--", "/bin/true")...),
				command(b.label+"through the daemon: --allow 198.51.100.7/32:80 (warm member of that pool given these rules)", append(drun, "--allow", "198.51.100.7/32:80", "--", "/bin/true")...),
				command(b.label+"through the daemon: loopback only (warm pool)", append(drun, "--", "/bin/true")...))
			defer func() {
				want := 3 * (c.runs + c.warmup)
				got := int(d.metric(`ironclaw_sandbox_create_seconds_count{source="pool"}`))
				fmt.Fprintf(os.Stderr, "%sruns through the daemon that took a warm pool member: %d of %d\n", b.label, got, want)
			}()
		}
		// Every contestant, not only the daemons', starts on idle
		// daemons: a pool's refill after a claim must not run beside
		// the next contestant's run.
		for _, d := range daemons {
			settles = append(settles, d.settle)
		}
	}
	// Last, whatever the settles and the run before left to the kernel
	// (a namespace's destruction runs in a kernel worker after its
	// removal) must be over too.
	notIdle := 0
	settles = append(settles, func(ctx context.Context) error {
		err := bench.WaitIdle(ctx, benchIdleWindow, benchIdleBusy, 5*time.Second)
		if errors.Is(err, bench.ErrNotIdle) {
			notIdle++ // measured anyway, and counted in the report
			return nil
		}
		return err
	})
	for i := range cs {
		cs[i].Prepare = func(ctx context.Context) error {
			for _, s := range settles {
				if err := s(ctx); err != nil {
					return err
				}
			}
			return nil
		}
	}
	rep, err := bench.Run(context.Background(), "networked ironclaw run -- /bin/true, end to end (wall time per run)", "bwrap", c.runs, c.warmup, cs)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "before every run: %d free pool slots prepared for %s, and a host under %.0f%% busy for %s (not reached in 5 s before %d runs)\n",
		benchFree, benchAllow, benchIdleBusy*100, benchIdleWindow, notIdle)
	return c.print(rep)
}

// cleanRoot waits for a root's pool maintainer to finish (a maintainer
// turned away says so), then destroys what is left of its pool and
// removes the root.
func cleanRoot(ironclaw, root string) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		out, err := exec.Command(ironclaw, "--root", root, "net", "pool", "maintain", "--free", "0").Output()
		if err != nil || !strings.Contains(string(out), "another maintainer") {
			break
		}
	}
	exec.Command(ironclaw, "--root", root, "gc").Run()
	exec.Command(ironclaw, "--root", root, "net", "pool", "drain").Run()
	// An earlier build's gc may leave the root's empty cgroup parents.
	if h, err := cgroup.Detect(); err == nil {
		if _, inUse, err := h.RemoveParents(state.NameOf(root)); err != nil || len(inUse) > 0 {
			fmt.Fprintln(os.Stderr, "ironclaw-bench: remove cgroup parents:", err, strings.Join(inUse, ", "))
		}
	}
	os.RemoveAll(root)
}

// benchAllow is the rule of the measured networked runs: a documentation
// address (RFC 5737), never dialled (/bin/true opens no socket).
const benchAllow = "203.0.113.10/32:443"

// benchFree is the size the bench keeps its pool at.
const benchFree = 2

// Every run starts once the host's CPUs were less than benchIdleBusy busy
// over benchIdleWindow (bench.WaitIdle).
const (
	benchIdleWindow = 30 * time.Millisecond
	benchIdleBusy   = 0.15
)

// benchPools are the warm pools of the -daemon runs, sized so that one
// contestant's claim leaves a member for the next.
var benchPools = []struct {
	Name     string         `json:"name"`
	Size     int            `json:"size"`
	Template map[string]any `json:"template"`
}{
	{"net", 2, map[string]any{"network": map[string]any{"allow": []string{benchAllow}}}},
	{"plain", 2, map[string]any{}},
}

// startPooledServe starts a daemon on root with benchPools.
func startPooledServe(ironclaw, root string) (*serveProc, error) {
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	b, err := json.Marshal(benchPools)
	if err != nil {
		return nil, err
	}
	cfg := root + "-pools.json"
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		return nil, err
	}
	d, err := startServe(ironclaw, root, "--pool-config", cfg)
	if err != nil {
		return nil, err
	}
	return d, d.settle(context.Background())
}

// settle waits until every pool of benchPools is full and the daemon (with
// its spawner) has used no CPU for 50 ms: the claimed member's destroy,
// the refill and the network slot upkeep are over.
func (d *serveProc) settle(ctx context.Context) error {
	for _, p := range benchPools {
		if err := d.waitPool(ctx, p.Name, p.Size); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(time.Minute)
	pid := d.cmd.Process.Pid
	last, err := bench.ProcStatWith(pid, spawner.Arg0)
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		now, err := bench.ProcStatWith(pid, spawner.Arg0)
		if err != nil {
			return err
		}
		if now.CPU == last.CPU {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the daemon did not go idle")
		}
		last = now
	}
}

// waitMaintainers waits until no `net pool maintain` process of the roots
// runs (bench.Maintainers), its exit included: a process seen once is
// waited for until /proc has no entry for it, since an exiting one has no
// command line left and may still be releasing its nftables sockets.
func waitMaintainers(ctx context.Context, roots []string) error {
	seen := map[int]bool{}
	for deadline := time.Now().Add(time.Minute); ; {
		for _, r := range roots {
			for _, pid := range bench.Maintainers(r) {
				seen[pid] = true
			}
		}
		for pid := range seen {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				delete(seen, pid)
			}
		}
		if len(seen) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("a pool maintainer did not finish")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
