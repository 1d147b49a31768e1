package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/state"
)

// runFlags are the flags of `ironclaw run`, as typed.
type runFlags struct {
	name     string
	mounts   []string
	workdir  string
	rootfs   string
	env      []string
	envFiles []string
	user     string
	memory   string
	pids     int64
	cpus     float64
	nofile   uint64
	fsize    string
	timeout  time.Duration
	tty      bool
	noDaemon bool

	seccomp       string
	seccompMode   string
	seccompReport string
	allow         []string
	net           string
	netPool       string

	vm vmRunFlags // --backend and the micro-VM's flags (run_vm.go)
}

func newRunCmd(g *Globals) *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Run a command in a fresh, disposable sandbox",
		Long: `Run CMD in a fresh namespace jail and destroy the jail afterwards.

The command sees read-only host system directories (/usr, /bin, /lib*, /sbin),
a generated /etc, a private /proc, /dev and /tmp, and a writable /workspace,
and nothing else of the host unless granted with --mount. It runs as an
unprivileged user with no capabilities, in a new session, with a clean
environment, and with loopback-only networking.

Exit status: the command's own; 128+N if it died of signal N; 124 on
--timeout; 125 if the sandbox could not start; 126/127 if the command
could not be executed or found.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := f.spec(args)
			if err != nil {
				return err
			}
			netPool, err := NetPoolSize(f.netPool)
			if err != nil {
				return err
			}
			// A micro-VM (--backend vm, or auto on a KVM host) runs
			// embedded: the daemon serves jails.
			if ran, err := f.vm.dispatch(g, spec); ran {
				return err
			}
			// The seccomp audit report is written by the process that
			// owns the sandbox: with --seccomp-report, run embedded.
			if !f.noDaemon && f.seccompReport == "" {
				if c := daemonClient(g); c != nil {
					if err := runViaDaemon(g, c, spec, f.name != ""); !errors.Is(err, errNoDaemon) {
						return err
					}
				}
			}
			return runSandbox(g, spec, f.seccompReport, netPool)
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	fl.StringVar(&f.name, "name", "", "sandbox ID (default: generated)")
	fl.StringArrayVarP(&f.mounts, "mount", "m", nil, "grant a host path: HOST:GUEST[:ro|rw] (read-only unless rw)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "host directory mounted read-write at /workspace (default: a fresh empty one)")
	fl.StringVar(&f.rootfs, "rootfs", "", "prepared root directory to use instead of the host's system directories")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set KEY=VALUE in the command's environment")
	fl.StringArrayVar(&f.envFiles, "env-file", nil, "read KEY=VALUE lines from a file")
	fl.StringVarP(&f.user, "user", "u", "sandbox", "user inside the sandbox: sandbox (1000), root, UID or UID:GID")
	fl.StringVar(&f.memory, "memory", sandbox.FormatSize(sandbox.DefaultResources.MemoryBytes), "memory limit, e.g. 512m; 0 for none")
	fl.Int64Var(&f.pids, "pids", sandbox.DefaultResources.Pids, "limit on processes and threads; 0 for none")
	fl.Float64Var(&f.cpus, "cpus", 0, "CPU limit in CPUs, e.g. 0.5; 0 for none")
	fl.Uint64Var(&f.nofile, "nofile", sandbox.DefaultResources.NoFile, "limit on open files per process (RLIMIT_NOFILE)")
	fl.StringVar(&f.fsize, "fsize", sandbox.FormatSize(sandbox.DefaultResources.FileSize), "largest file a process may write (RLIMIT_FSIZE); 0 for none")
	fl.DurationVar(&f.timeout, "timeout", 0, "kill the sandbox after this long, e.g. 30s; 0 for none")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the command a pseudo-terminal")
	fl.BoolVar(&f.noDaemon, "no-daemon", false, "run embedded even when a daemon (ironclaw serve) is running")
	fl.StringArrayVar(&f.allow, "allow", nil, "allow egress: CIDR[:PORT[-PORT]][/tcp|/udp], DOMAIN[:PORT] or '*.example.com' (repeatable; everything else is dropped)")
	fl.StringVar(&f.net, "net", "", "network: none (loopback only, the default without --allow)")
	NetPoolFlag(fl, &f.netPool)
	fl.StringVar(&f.seccomp, "seccomp", "default", "syscall filter: default, strict, a Docker/OCI JSON profile file, or unconfined")
	fl.StringVar(&f.seccompMode, "seccomp-mode", "enforce", "enforce, or audit: log what the profile would block instead of blocking it")
	f.vm.register(fl)
	fl.StringVar(&f.seccompReport, "seccomp-report", "", "with --seccomp-mode audit, write the audit report (JSON) to this file for `ironclaw seccomp suggest`")
	return cmd
}

// spec turns the flags into a validated Spec.
func (f *runFlags) spec(args []string) (sandbox.Spec, error) {
	s := sandbox.Spec{
		ID:      f.name,
		Command: args,
		Workdir: f.workdir,
		Rootfs:  f.rootfs,
		Timeout: f.timeout,
		TTY:     f.tty,
	}
	if s.ID == "" {
		s.ID = sandbox.NewID()
	}
	var err error
	if s.User, err = sandbox.ParseUser(f.user); err != nil {
		return s, err
	}
	for _, m := range f.mounts {
		mt, err := sandbox.ParseMount(m)
		if err != nil {
			return s, err
		}
		s.Mounts = append(s.Mounts, mt)
	}
	for _, name := range f.envFiles {
		fh, err := os.Open(name)
		if err != nil {
			return s, fmt.Errorf("--env-file: %w", err)
		}
		env, err := sandbox.ParseEnvFile(fh, name)
		fh.Close()
		if err != nil {
			return s, fmt.Errorf("--env-file: %w", err)
		}
		s.Env = append(s.Env, env...)
	}
	s.Env = append(s.Env, f.env...)
	if s.Resources.MemoryBytes, err = sandbox.ParseSize(f.memory); err != nil {
		return s, fmt.Errorf("--memory: %w", err)
	}
	if s.Resources.FileSize, err = sandbox.ParseSize(f.fsize); err != nil {
		return s, fmt.Errorf("--fsize: %w", err)
	}
	s.Resources.Pids, s.Resources.CPUs, s.Resources.NoFile = f.pids, f.cpus, f.nofile
	s.Seccomp.Profile = f.seccomp
	switch f.seccompMode {
	case "enforce":
	case "audit":
		s.Seccomp.Audit = true
	default:
		return s, fmt.Errorf("--seccomp-mode: %q is not enforce or audit", f.seccompMode)
	}
	if f.seccompReport != "" && !s.Seccomp.Audit {
		return s, fmt.Errorf("--seccomp-report: needs --seccomp-mode audit")
	}
	switch {
	case f.net == "" || f.net == "none" && len(f.allow) == 0:
	case f.net == "none":
		return s, fmt.Errorf("--net none: conflicts with --allow (allow rules give the sandbox a link)")
	default:
		return s, fmt.Errorf("--net: %q is not none (give --allow rules for egress)", f.net)
	}
	s.Network.Allow = f.allow
	return s, s.Validate()
}

// runSandbox runs spec in a jail with the caller's terminal and signals
// wired through, and exits with the command's status.
//
// With netPool > 0, a networked sandbox's network is left to the pool as
// a used slot when it ends, and a detached maintainer (spawnMaintainer)
// destroys it and refills the pool to netPool free slots once the sandbox
// is gone.
func runSandbox(g *Globals, spec sandbox.Spec, reportFile string, netPool int) error {
	root, err := state.Open(g.root)
	if err != nil {
		return err
	}
	if n, err := root.Collect(Reclaim); err != nil {
		g.logger.Warn("reclaim leftovers of dead sandboxes", "err", err)
	} else if n > 0 {
		g.logger.Info("reclaimed leftovers of dead sandboxes", "count", n)
	}
	netCfg := network.Config{Root: root.Dir(), Logger: g.logger}
	if netPool > 0 {
		var wanted atomic.Bool
		netCfg.DeferRemoval = true
		netCfg.Wake = func() { wanted.Store(true) }
		defer func() {
			if wanted.Load() {
				spawnMaintainer(g, netPool, spec.Network.Allow)
			}
		}()
	}
	j, err := jail.New(jail.Config{Root: root, Logger: g.logger, Network: netCfg})
	if err != nil {
		return err
	}

	// Signals are caught before the sandbox exists, so that none is lost.
	sigs := catchSignals()

	stdinTTY := term.IsTerminal(int(os.Stdin.Fd()))
	if spec.TTY && stdinTTY {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err != nil {
			return fmt.Errorf("set terminal raw mode: %w", err)
		}
		defer term.Restore(int(os.Stdin.Fd()), old)
	}
	sb, err := j.Start(cmdContext(), spec, jail.Options{IO: jail.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}})
	if err != nil {
		return startFailure(spec.ID, err)
	}
	if sb.Seccomp().Unconfined {
		fmt.Fprintf(os.Stderr, "ironclaw: WARNING: sandbox %q runs with --seccomp unconfined: no syscall is filtered\n", spec.ID)
	}
	stop := forwardSignals(sigs, spec.TTY, sb)
	res, err := sb.Wait()
	stop()
	if err != nil {
		g.logger.Warn("tear down sandbox", "sandbox", spec.ID, "err", err)
	}
	if rep := sb.SeccompReport(); rep != nil {
		if err := printAudit(os.Stderr, spec.ID, rep, reportFile); err != nil {
			return err
		}
	}
	switch {
	case res.TimedOut:
		fmt.Fprintf(os.Stderr, "ironclaw: sandbox %q timed out after %s: killed it and every process in it\n", spec.ID, spec.Timeout)
		return exitError{124}
	case res.OOMKilled:
		fmt.Fprintf(os.Stderr, "ironclaw: sandbox %q ran out of memory: the kernel OOM killer ended it at the %s limit (--memory)\n",
			spec.ID, sandbox.FormatSize(spec.Resources.MemoryBytes))
	}
	if res.ExitCode != 0 {
		return exitError{res.ExitCode}
	}
	return nil
}

// printAudit summarises a seccomp audit on w and writes the full report
// to file when one was asked for.
func printAudit(w io.Writer, id string, rep *seccomp.Report, file string) error {
	fmt.Fprintf(w, "ironclaw: seccomp audit of sandbox %q (profile %s): %d call(s) the profile would have blocked", id, rep.Profile, rep.Total)
	if rep.Dropped > 0 {
		fmt.Fprintf(w, ", %d event(s) beyond the ring of %d dropped", rep.Dropped, rep.Capacity)
	}
	fmt.Fprintln(w)
	for _, c := range rep.Syscalls {
		fmt.Fprintf(w, "  %-24s %d\n", c.Name, c.Count)
	}
	if file == "" {
		return nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode seccomp report: %w", err)
	}
	if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--seccomp-report: %w", err)
	}
	fmt.Fprintf(w, "ironclaw: audit report written to %s; `ironclaw seccomp suggest %s` turns it into a profile\n", file, file)
	return nil
}

// signalTarget is a running sandbox the caller's signals and terminal size
// are forwarded to (a jail or a micro-VM).
type signalTarget interface {
	Signal(syscall.Signal) error
	ResizeTTY(rows, cols uint16) error
}

// forwarded are the signals `ironclaw run` and `ironclaw sandbox exec`
// pass on to the sandbox's command.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

// catchSignals starts catching the forwarded signals (see forwardSignals).
// The catch lasts until the process exits, which these commands do as
// soon as the command has ended, or until releaseSignals: signal.Stop
// would first wait for the runtime's signal goroutine to go idle, which
// at the end of a short run through the daemon took 0.2-1.6 ms. A signal
// that comes after forwarding has stopped is dropped.
func catchSignals() chan os.Signal {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	return sigs
}

// releaseSignals gives the forwarded signals their default action back,
// for a command that waits for something else once its sandbox's command
// has ended.
func releaseSignals() { signal.Reset(forwarded...) }

// forwardSignals passes the signals arriving on sigs to sb, and with a
// TTY turns SIGWINCH into a resize of the sandbox's terminal, until stop.
func forwardSignals(sigs <-chan os.Signal, tty bool, sb signalTarget) (stop func()) {
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-sigs:
				if s == syscall.SIGWINCH {
					if tty {
						if w, h, err := term.GetSize(int(os.Stdin.Fd())); err == nil {
							_ = sb.ResizeTTY(uint16(h), uint16(w))
						}
					}
					continue
				}
				_ = sb.Signal(s.(syscall.Signal))
			}
		}
	}()
	return func() { close(done) }
}

// startFailure prints a failed start as one line and picks the exit status.
func startFailure(id string, err error) error {
	fmt.Fprintf(os.Stderr, "ironclaw: start sandbox %q: %v\n", id, err)
	switch {
	case errors.Is(err, jail.ErrCommandNotFound):
		return exitError{127}
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOEXEC):
		return exitError{126}
	}
	return exitError{125}
}
