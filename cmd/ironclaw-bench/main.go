// Command ironclaw-bench measures IronClaw against its peers on this
// machine and prints medians and ratios. Every performance figure in the
// README and docs comes from a run of this command.
//
//	ironclaw-bench jail [-runs N] [-json]    ironclaw run vs bwrap vs plain exec
//	ironclaw-bench net  [-runs N] [-json] [-baseline OLD]  ironclaw run --allow (pool slot) vs bwrap
//	ironclaw-bench daemon [-only PARTS]      the daemon: create/exec latency, create rate, memory, 1000 sandboxes
//	ironclaw-bench vm   [-runs N] [-json]    micro-VM boot, run and snapshot restore vs the jail
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ironclaw/ironclaw/internal/bench"
	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/state"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ironclaw-bench jail|net|daemon|vm [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "jail":
		err = jail(os.Args[2:])
	case "net":
		err = netBench(os.Args[2:])
	case "daemon":
		err = daemonBench(os.Args[2:])
	case "vm":
		err = vmBench(os.Args[2:])
	default:
		err = fmt.Errorf("unknown benchmark %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ironclaw-bench:", err)
		os.Exit(1)
	}
}

// common holds the flags every benchmark takes.
type common struct {
	runs, warmup int
	json         bool
	ironclaw     string
	root         string
	rootTmpfs    bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.IntVar(&c.runs, "runs", 100, "measured runs per contestant")
	fs.IntVar(&c.warmup, "warmup", 5, "unmeasured warm-up runs per contestant")
	fs.BoolVar(&c.json, "json", false, "print JSON")
	fs.StringVar(&c.ironclaw, "ironclaw", "", "ironclaw binary (default: next to this one, then PATH)")
	fs.StringVar(&c.root, "root", "", "state root for the measured sandboxes (default: a fresh temporary one)")
	fs.BoolVar(&c.rootTmpfs, "root-tmpfs", false, "put the fresh temporary state root on a tmpfs of its own, as the default root /run/ironclaw is on most hosts")
}

func (c *common) setup() (cleanup func(), err error) {
	if c.ironclaw == "" {
		self, _ := os.Executable()
		c.ironclaw = filepath.Join(filepath.Dir(self), "ironclaw")
		if _, err := os.Stat(c.ironclaw); err != nil {
			if c.ironclaw, err = exec.LookPath("ironclaw"); err != nil {
				return nil, fmt.Errorf("no ironclaw binary next to ironclaw-bench or on PATH; pass -ironclaw")
			}
		}
	}
	cleanup = func() {}
	if c.root == "" {
		dir, err := os.MkdirTemp("", "ironclaw-bench-")
		if err != nil {
			return nil, err
		}
		unmount := func() error { return nil }
		if c.rootTmpfs {
			if unmount, err = bench.MountTmpfs(dir); err != nil {
				os.RemoveAll(dir)
				return nil, fmt.Errorf("-root-tmpfs: %w", err)
			}
		}
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, err
		}
		c.root = filepath.Join(dir, "state")
		cleanup = func() {
			// The roots' sandboxes are gone; their parent cgroups (made
			// on first use, kept while a root lives) go with the roots.
			if h, err := cgroup.Detect(); err == nil {
				for _, r := range []string{c.root, c.root + "-baseline"} {
					_, inUse, err := h.RemoveParents(state.NameOf(r))
					if err != nil {
						fmt.Fprintln(os.Stderr, "ironclaw-bench:", err)
					}
					if len(inUse) > 0 {
						fmt.Fprintln(os.Stderr, "ironclaw-bench: cgroup parents still hold groups:", strings.Join(inUse, ", "))
					}
				}
			}
			if err := unmount(); err != nil {
				fmt.Fprintln(os.Stderr, "ironclaw-bench:", err)
			}
			os.RemoveAll(dir)
		}
	}
	return cleanup, nil
}

func (c *common) print(rep *bench.Report) error {
	if c.json {
		return rep.JSON(os.Stdout)
	}
	return rep.Print(os.Stdout)
}

// floorContestants returns the Go floor (see internal/bench/gofloor),
// when its binary ironclaw-gofloor is next to this one (scripts/bench
// builds it): a Go process's start, and a Go host plus a Go init in fresh
// namespaces running /bin/true with nothing else done.
func floorContestants() []bench.Contestant {
	self, _ := os.Executable()
	floor := filepath.Join(filepath.Dir(self), "ironclaw-gofloor")
	if _, err := os.Stat(floor); err != nil {
		fmt.Fprintf(os.Stderr, "ironclaw-bench: %s not found (build it from ./internal/bench/gofloor): Go floor not measured\n", floor)
		return nil
	}
	return []bench.Contestant{
		command("Go floor: a static Go program starting", floor),
		command("Go floor: Go host + Go init in 7 namespaces, exec /bin/true, nothing else", floor, "jail", "/proc/self/exe", "init", "/bin/true"),
	}
}

// command returns a contestant that runs argv and requires success.
func command(name string, argv ...string) bench.Contestant {
	return bench.Contestant{Name: name, Run: func(ctx context.Context) error {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}}
}

func jail(args []string) error {
	fs := flag.NewFlagSet("jail", flag.ExitOnError)
	var c common
	c.register(fs)
	baseline := fs.String("baseline", "", "an earlier ironclaw binary (with its ironclaw-agent beside it) to run the default case with too")
	fs.Parse(args)
	cleanup, err := c.setup()
	if err != nil {
		return err
	}
	defer cleanup()
	bwrap, err := exec.LookPath("bwrap")
	if err != nil {
		return fmt.Errorf("bwrap not found: apt-get install bubblewrap")
	}
	work, err := os.MkdirTemp("", "bench-work-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// bwrap gets the same view the jail builds (system dirs read-only,
	// proc, dev, tmp, a workspace, clean environment, no capabilities),
	// minus what it cannot do: cgroup limits, Landlock and the
	// parent-verified launch.
	bw := []string{bwrap, "--unshare-all", "--die-with-parent", "--new-session",
		"--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
		"--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
		"--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache", "--ro-bind", "/etc/alternatives", "/etc/alternatives",
		"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", work, "/workspace", "--chdir", "/workspace",
		"--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--cap-drop", "ALL", "/bin/true"}
	ic := []string{c.ironclaw, "--root", c.root, "run"}
	cs := []bench.Contestant{
		command("ironclaw (default limits: cgroups + Landlock)", append(ic, "--", "/bin/true")...),
		command("ironclaw --memory 0 --pids 0 (no cgroup)", append(ic, "--memory", "0", "--pids", "0", "--", "/bin/true")...),
		command("bwrap", bw...),
		command("ironclaw --version (the CLI's own start, no sandbox)", c.ironclaw, "--version"),
		command("exec /bin/true", "/bin/true"),
	}
	if *baseline != "" {
		cs = append(cs, command("baseline build, default limits", *baseline, "--root", c.root, "run", "--", "/bin/true"))
	}
	cs = append(cs, floorContestants()...)
	rep, err := bench.Run(context.Background(), "ironclaw run -- /bin/true, end to end (wall time per run)", "bwrap", c.runs, c.warmup, cs)
	if err != nil {
		return err
	}
	return c.print(rep)
}
