package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/bench"
	"github.com/ironclaw/ironclaw/internal/vm"
	"github.com/ironclaw/ironclaw/internal/vm/image"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
)

// vmBench measures the micro-VM backend against the jail in the same run:
//
//   - ironclaw run --backend vm -- /bin/true, end to end, against
//     ironclaw run -- /bin/true (the jail, the peer);
//   - the QEMU driver's cycle (boot → exec → destroy) and its part from
//     process start to the agent's answer (boot to agent ready);
//   - the snapshot path: a fresh QEMU restored from a snapshot of a booted
//     template to a rekeyed agent, then exec and destroy;
//   - through the daemon (ironclaw serve, its own state root): create with
//     backend vm → exec /bin/true → destroy, against the same with backend
//     jail.
//
// Under TCG (no usable KVM) these are functional figures.
func vmBench(args []string) error {
	fs := flag.NewFlagSet("vm", flag.ExitOnError)
	var c common
	c.register(fs)
	agent := fs.String("agent", "", "ironclaw-agent binary for the default image (default: next to ironclaw)")
	viaDaemon := fs.Bool("daemon", true, "also measure create → exec → destroy through ironclaw serve, backend vm and jail")
	fs.Set("runs", "10")
	fs.Set("warmup", "1")
	fs.Parse(args)
	cleanup, err := c.setup()
	if err != nil {
		return err
	}
	defer cleanup()
	ctx := context.Background()
	if *agent == "" {
		*agent = filepath.Join(filepath.Dir(c.ironclaw), "ironclaw-agent")
	}
	img, err := image.Default{Agent: *agent, KernelDir: os.Getenv(image.KernelDirEnv), CacheDir: envOr("IRONCLAW_CACHE", image.DefaultCacheDir)}.Resolve(ctx, true, os.Stderr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.root, 0o711); err != nil {
		return err
	}
	probe := vm.Probe(ctx, vm.ProbeConfig{Image: img, Cache: vm.ProbeCacheFile(c.root), Launcher: c.ironclaw})
	accel := "TCG"
	if probe.KVM {
		accel = "KVM"
	}
	scratch, err := os.MkdirTemp("", "ironclaw-bench-vm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	starter := qemu.SeccompStarter(qemu.Launch{Launcher: c.ironclaw})
	cfg := func(dir string, token []byte) qemu.Config {
		return qemu.Config{Image: img, Dir: dir, Token: token, KVM: probe.KVM, Starter: starter, BootTimeout: 2 * time.Minute}
	}

	// The template the restores start from.
	tmplToken := qemu.NewToken()
	tdir := filepath.Join(scratch, "template")
	if err := os.Mkdir(tdir, 0o700); err != nil {
		return err
	}
	tmpl, err := qemu.Start(ctx, cfg(tdir, tmplToken))
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	snap := filepath.Join(scratch, "snapshot")
	err = tmpl.Snapshot(ctx, snap)
	if cerr := tmpl.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}

	var boots, restores []time.Duration
	n := 0
	cycle := func(restore bool) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			n++
			dir := filepath.Join(scratch, fmt.Sprintf("vm-%d", n))
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			var v *qemu.VM
			var err error
			if restore {
				v, err = qemu.Restore(ctx, cfg(dir, qemu.NewToken()), tmplToken, snap)
			} else {
				v, err = qemu.Start(ctx, cfg(dir, qemu.NewToken()))
			}
			if err != nil {
				return err
			}
			var out bytes.Buffer
			st, err := v.Agent.Exec(ctx, agentapi.ExecSpec{Argv: []string{"/bin/true"}}, agentapi.ExecIO{Stdout: &out})
			if err == nil && st.Code != 0 {
				err = fmt.Errorf("/bin/true: %+v", st)
			}
			if cerr := v.Destroy(); err == nil {
				err = cerr
			}
			if restore {
				restores = append(restores, v.BootTime)
			} else {
				boots = append(boots, v.BootTime)
			}
			return err
		}
	}
	ic := []string{c.ironclaw, "--root", c.root, "run"}
	jail := "ironclaw run (jail)"
	contestants := []bench.Contestant{
		command(jail, append(ic, "--", "/bin/true")...),
		command("ironclaw run --backend vm", append(ic, "--backend", "vm", "--", "/bin/true")...),
		{Name: "driver: boot, exec, destroy", Run: cycle(false)},
		{Name: "driver: restore snapshot, exec, destroy", Run: cycle(true)},
	}
	if *viaDaemon {
		// Its own root: with a daemon on c.root, `ironclaw run` (the
		// peer) would go through it.
		d, err := startServe(c.ironclaw, c.root+"-daemon")
		if err != nil {
			return err
		}
		defer d.stop()
		for _, b := range []string{"jail", "vm"} {
			contestants = append(contestants, bench.Contestant{Name: "daemon: create " + b + ", exec, destroy", Run: daemonCycle(d, b)})
		}
	}
	rep, err := bench.Run(ctx, fmt.Sprintf("micro-VM (QEMU microvm, %s) vs jail, /bin/true (wall time per run)", accel), jail, c.runs, c.warmup, contestants)
	if err != nil {
		return err
	}
	// Boot to agent ready and restore to agent ready, taken inside the
	// driver cycles above (their warm-up rounds left out).
	var peer time.Duration
	for _, r := range rep.Results {
		if r.Name == jail {
			peer = r.Median
		}
	}
	for _, x := range []struct {
		name string
		d    []time.Duration
	}{{"  of which boot to agent ready", boots}, {"  of which restore to rekeyed agent", restores}} {
		s := append([]time.Duration(nil), x.d[min(c.warmup, len(x.d)):]...)
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
		r := bench.Result{Name: x.name, Runs: len(s), Median: bench.Percentile(s, 50), P10: bench.Percentile(s, 10), P90: bench.Percentile(s, 90)}
		if peer > 0 {
			r.Ratio = float64(r.Median) / float64(peer)
		}
		rep.Results = append(rep.Results, r)
	}
	if !c.json {
		fmt.Printf("KVM: %s\n", probe.KVMDetail)
	}
	return c.print(rep)
}

// daemonCycle creates a sandbox of backend through the daemon (never from
// a pool), runs /bin/true in it and destroys it.
func daemonCycle(d *serveProc, backend string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		no := false
		sb, err := d.c.Create(ctx, api.CreateRequest{Backend: backend, Pool: &no})
		if err != nil {
			return err
		}
		res, err := d.c.ExecBuffered(ctx, sb.ID, api.ExecRequest{Argv: []string{"/bin/true"}})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("/bin/true in %s: exit %d", backend, res.ExitCode)
		}
		if derr := d.c.Destroy(ctx, sb.ID); err == nil {
			err = derr
		}
		return err
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
