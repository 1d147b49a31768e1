package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/ironclaw/ironclaw/internal/agent/guest"
	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/vm/firecracker"
	"github.com/ironclaw/ironclaw/internal/vm/image"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
)

// Guest sizing.
const (
	// DefaultMemoryMiB is the guest memory of a sandbox without a memory
	// limit.
	DefaultMemoryMiB = 512
	// MinMemoryMiB is the least a guest boots with (kernel, initramfs,
	// agent, overlay root in memory).
	MinMemoryMiB = 128
	// qemuPids bounds the threads of the QEMU process (vCPUs, I/O
	// workers, RCU); the guest's own processes are the guest kernel's.
	qemuPids = 512
)

// Config configures the micro-VM backend.
type Config struct {
	// Root is the state directory sandboxes are recorded in.
	Root *state.Root
	// Image is the image guests boot (image.Default.Resolve). Either it
	// or Resolve is required.
	Image *image.Image
	// Resolve, when Image is nil, finds (or builds) the image and decides
	// whether guests get KVM (KVM is then ignored) at the first start that
	// needs them; an error fails that start and the next one tries again.
	Resolve func(ctx context.Context) (img *image.Image, kvm bool, err error)
	// QEMU is the qemu-system-x86_64 binary; "" finds it on PATH.
	QEMU string
	// KVM accelerates guests; set it only when Probe's boot probe passed.
	KVM bool
	// Launcher is the binary that runs the seccomp VMM launcher; "" is
	// this executable.
	Launcher string
	// Cgroups is the host's cgroup layout; nil detects it.
	Cgroups *cgroup.Host
	// Network configures networked sandboxes; its Link is always
	// network.LinkTap and its Root defaults to the state root.
	Network network.Config
	// BootTimeout bounds the boot to agent ready; 0 means 60 s.
	BootTimeout time.Duration
	Logger      *slog.Logger
}

// Backend starts micro-VM sandboxes. It is safe for concurrent use.
type Backend struct {
	cfg Config

	imgMu sync.Mutex
	img   *image.Image
	kvm   bool
}

// New returns a micro-VM backend.
func New(cfg Config) (*Backend, error) {
	if cfg.Root == nil {
		return nil, errors.New("vm backend: no state root")
	}
	if cfg.Image == nil && cfg.Resolve == nil {
		return nil, errors.New("vm backend: no image")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 60 * time.Second
	}
	cfg.Network.Link = network.LinkTap
	if cfg.Network.Root == "" {
		cfg.Network.Root = cfg.Root.Dir()
	}
	if cfg.Network.Logger == nil {
		cfg.Network.Logger = cfg.Logger
	}
	if cfg.Cgroups == nil {
		h, err := cgroup.Detect()
		if err != nil {
			return nil, err
		}
		cfg.Cgroups = h
	}
	return &Backend{cfg: cfg}, nil
}

// IO holds the command's standard streams; nil means empty input or
// discarded output.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// StartError is a failed start (see sandbox.StartError).
type StartError = sandbox.StartError

// Result is how a sandbox's command ended.
type Result struct {
	// ExitCode is the shell-style status: the command's exit code, or
	// 128+N for death by signal N (the VM's destruction counts as
	// SIGKILL).
	ExitCode int `json:"exit_code"`
	// Signal is the signal that killed the command, if one did.
	Signal syscall.Signal `json:"signal,omitempty"`
	// TimedOut says the sandbox was destroyed at its timeout.
	TimedOut bool `json:"timed_out,omitempty"`
}

// RecordFile is the backend's record in the sandbox directory, written
// before any object it names exists.
const RecordFile = "vm.json"

// record names what the backend makes besides the driver's and the
// network's own records (qemu.json, net.json).
type record struct {
	VMM     string   `json:"vmm"`
	Cgroups []string `json:"cgroups"`
	// CgroupRel and Resources rebuild the cgroup handle on Attach.
	CgroupRel string            `json:"cgroup_rel,omitempty"`
	Resources sandbox.Resources `json:"resources"`
	// Persistent says QEMU was started to outlive its owner (Launch).
	Persistent bool `json:"persistent,omitempty"`
}

// Sandbox is a running micro-VM sandbox running one command. It owns the
// VM, its network, its cgroup and its state directory until Wait or Close
// returns.
type Sandbox struct {
	ID  string
	Key sandbox.Key
	Dir string

	log   *slog.Logger
	root  *state.Root
	claim *state.Claim // nil when attached: QEMU holds the lock
	group *cgroup.Group
	net   *network.Net
	vm    *qemu.VM
	proc  *agentapi.Process
	undo  []func() error
	// agentMu guards vm.Agent of a long-lived sandbox (Reconnect).
	agentMu sync.Mutex

	timer    *time.Timer
	timedOut chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// Start boots a VM for spec and starts its command. On error every step
// already done is undone and the error is a *StartError.
func (b *Backend) Start(ctx context.Context, spec sandbox.Spec, stdio IO) (_ *Sandbox, err error) {
	if err := spec.Validate(); err != nil {
		return nil, &StartError{Step: "validate", Err: err}
	}
	s, err := b.boot(ctx, spec, bootOptions{token: qemu.NewToken()})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := s.teardown(); cerr != nil {
				s.log.Warn("roll back", "err", cerr)
			}
		}
	}()
	exec := agentapi.ExecSpec{
		Argv: spec.Command, Env: guestEnv(spec), Dir: sandbox.Workspace,
		User: fmt.Sprintf("%d:%d", spec.User.UID, spec.User.GID), TTY: spec.TTY,
	}
	if f, ok := stdio.Stdin.(*os.File); ok && spec.TTY {
		if rows, cols, ok := termSize(f); ok {
			exec.Rows, exec.Cols = rows, cols
		}
	}
	// The command lives as long as the sandbox, not as long as ctx.
	s.proc, err = s.vm.Agent.Start(context.WithoutCancel(ctx), exec, agentapi.ExecIO{Stdin: stdio.Stdin, Stdout: stdio.Stdout, Stderr: stdio.Stderr})
	if err != nil {
		return nil, &StartError{Step: "start command", Err: classifyExecErr(err)}
	}
	if spec.Timeout > 0 {
		s.timer = time.AfterFunc(spec.Timeout, func() {
			close(s.timedOut)
			s.log.Debug("timeout: destroying the VM")
			s.kill()
		})
	}
	s.log.Debug("sandbox started", "boot", s.vm.BootTime, "pid", s.vm.PID())
	return s, nil
}

// bootOptions say how boot prepares a VM.
type bootOptions struct {
	// token authenticates the agent.
	token []byte
	// persistent lets QEMU outlive this process: no parent-death signal,
	// and QEMU holds the state directory's lock (see Launch).
	persistent bool
}

// guestSize returns the guest memory in MiB and the vCPUs for spec, and
// the limits of QEMU's cgroup: guest memory plus what QEMU needs besides,
// the CPU share asked for, and a bound on QEMU's threads.
func guestSize(spec sandbox.Spec) (memMiB, cpus int, res sandbox.Resources) {
	memMiB = int(spec.Resources.MemoryBytes >> 20)
	if memMiB == 0 {
		memMiB = DefaultMemoryMiB
	}
	cpus = int(math.Ceil(spec.Resources.CPUs))
	if cpus == 0 {
		cpus = 1
	}
	res = sandbox.Resources{MemoryBytes: int64(memMiB)<<20 + qemu.Overhead, CPUs: spec.Resources.CPUs, Pids: qemuPids}
	return memMiB, cpus, res
}

// boot claims the state directory, sets up the network and QEMU's cgroup,
// boots the VM with the agent connected and prepares the guest (/etc,
// /workspace). On error every step already done is undone and the error
// is a *StartError.
func (b *Backend) boot(ctx context.Context, spec sandbox.Spec, opts bootOptions) (_ *Sandbox, err error) {
	if err := CheckSpec(spec); err != nil {
		return nil, &StartError{Step: "validate", Err: err}
	}
	policy, err := firewall.ParsePolicy(spec.Network.Allow)
	if err != nil {
		return nil, &StartError{Step: "network policy", Err: err}
	}
	if opts.persistent && policy.Networked() {
		// The egress proxy, DNS stub and pool slot lock of a sandbox
		// network live in the process that made it (as for the jail).
		return nil, &StartError{Step: "validate", Err: fmt.Errorf("%w: a persistent micro-VM cannot have network allow rules yet (its egress servers live in the process that starts it)", sandbox.ErrUnsupported)}
	}
	memMiB, cpus, res := guestSize(spec)
	if err := b.cfg.Cgroups.Check(res); err != nil {
		return nil, &StartError{Step: "cgroup", Err: err}
	}
	img, kvm, err := b.image(ctx)
	if err != nil {
		return nil, &StartError{Step: "image", Err: err}
	}
	claim, err := b.claim(spec.ID)
	if err != nil {
		return nil, &StartError{Step: "claim state", Err: err}
	}
	s := &Sandbox{ID: spec.ID, Key: claim.Key, Dir: claim.Dir, claim: claim, root: b.cfg.Root,
		log: b.cfg.Logger.With("sandbox", spec.ID), timedOut: make(chan struct{})}
	defer func() {
		if err != nil {
			if cerr := s.teardown(); cerr != nil {
				s.log.Warn("roll back", "err", cerr)
			}
		}
	}()
	rel := cgroup.SandboxRel(b.cfg.Root.Name(), string(claim.Key))
	rec := record{VMM: "qemu", Cgroups: b.cfg.Cgroups.Paths(rel, res), CgroupRel: rel, Resources: res, Persistent: opts.persistent}
	if err := state.WriteJSON(filepath.Join(claim.Dir, RecordFile), rec); err != nil {
		return nil, &StartError{Step: "record", Err: err}
	}
	qcfg := qemu.Config{
		Binary: b.cfg.QEMU, Image: img, Dir: claim.Dir, MemoryMiB: memMiB, CPUs: cpus, KVM: kvm,
		Hostname: sandbox.Hostname(spec.ID), Token: opts.token, BootTimeout: b.cfg.BootTimeout, Logger: s.log,
		// Files the agent creates (uploads, mkdir) belong to the
		// sandbox's user, as in a jail.
		Cmdline: []string{guest.ParamOwner + "=" + guest.Owner{UID: spec.User.UID, GID: spec.User.GID}.String()},
	}
	if policy.Networked() {
		// net.json is written before any of the network's objects exist.
		s.net, err = network.Acquire(ctx, b.cfg.Network, claim.Dir, claim.Key, policy)
		if err != nil {
			return nil, &StartError{Step: "network", Err: err}
		}
		s.undo = append(s.undo, s.net.Close)
		g := s.net.Guest()
		if g == nil {
			return nil, &StartError{Step: "network", Err: errors.New("the network has no guest link")}
		}
		qcfg.NetNS, qcfg.Tap = s.net.Path(), g.Tap
		qcfg.Network = &guest.NetConfig{Iface: "eth0", Addr: g.Addr, Gateway: g.Gateway}
	}
	s.group, err = b.cfg.Cgroups.Create(rel, res)
	if err != nil {
		return nil, &StartError{Step: "cgroup", Err: err}
	}
	s.undo = append(s.undo, s.group.Destroy)
	launch := qemu.Launch{Launcher: b.cfg.Launcher, Cgroup: s.group, Logger: s.log}
	if opts.persistent {
		// QEMU keeps the state directory claimed for as long as it runs,
		// also after this process is gone: GC leaves it alone, and a
		// later process re-attaches (Attach).
		launch.Files, launch.Detached = []*os.File{claim.LockFile()}, true
	}
	qcfg.Starter = qemu.SeccompStarter(launch)
	s.vm, err = qemu.Start(ctx, qcfg)
	if err != nil {
		return nil, &StartError{Step: "boot", Err: err}
	}
	s.undo = append(s.undo, s.vm.Destroy)
	if err := s.prepareGuest(ctx, spec); err != nil {
		return nil, &StartError{Step: "prepare guest", Err: err}
	}
	return s, nil
}

// ErrCommandNotFound marks a command the guest's PATH does not have
// (`ironclaw run` exits 127, as with the jail).
var ErrCommandNotFound = errors.New("command not found in the guest")

// classifyExecErr recognises the agent's refusal of a program it did not
// find (it answers CodeInvalid with the lookup's message).
func classifyExecErr(err error) error {
	var re *agentapi.RemoteError
	if errors.As(err, &re) && re.Code == agentapi.CodeInvalid && strings.Contains(re.Msg, "not found in PATH") {
		return fmt.Errorf("%w: %w", ErrCommandNotFound, err)
	}
	return err
}

// CheckSpec rejects what a VM cannot honour: host paths (a guest has no
// view of the host's file system) and jail-only seccomp settings (the
// workload runs under the guest kernel; IronClaw filters the VMM).
func CheckSpec(spec sandbox.Spec) error {
	switch {
	case len(spec.Mounts) > 0:
		return fmt.Errorf("%w: --mount: a micro-VM has no view of the host's files (use --backend jail, or pass data on stdin/stdout)", sandbox.ErrUnsupported)
	case spec.Workdir != "":
		return fmt.Errorf("%w: --workdir: a micro-VM has no view of the host's files; its /workspace is in guest memory (use --backend jail, or pass data on stdin/stdout)", sandbox.ErrUnsupported)
	case spec.Rootfs != "":
		return fmt.Errorf("%w: --rootfs: a micro-VM boots an image (ironclaw image build --rootfs DIR, then --image)", sandbox.ErrUnsupported)
	case spec.Seccomp.Audit:
		return fmt.Errorf("%w: --seccomp-mode audit: applies to jail workloads; in a VM the guest kernel runs the workload and IronClaw filters the VMM", sandbox.ErrUnsupported)
	case spec.Seccomp.Profile != "" && spec.Seccomp.Profile != seccomp.ProfileDefault:
		return fmt.Errorf("%w: --seccomp %s: applies to jail workloads; in a VM the guest kernel runs the workload and IronClaw filters the VMM", sandbox.ErrUnsupported, spec.Seccomp.Profile)
	case spec.Resources.MemoryBytes > 0 && spec.Resources.MemoryBytes < MinMemoryMiB<<20:
		return fmt.Errorf("%w: --memory: a micro-VM needs at least %d MiB", sandbox.ErrInvalid, MinMemoryMiB)
	}
	return nil
}

func (b *Backend) claim(id string) (*state.Claim, error) {
	c, leftover, err := b.cfg.Root.Claim(id)
	if leftover != nil {
		if err := Reclaim(leftover.Dir); err != nil {
			leftover.Abandon() // keep its records for the next attempt
			return nil, fmt.Errorf("reclaim leftover of %q: %w", id, err)
		}
		if err := leftover.Release(); err != nil {
			return nil, err
		}
		c, _, err = b.cfg.Root.Claim(id)
	}
	return c, err
}

// prepareGuest writes the guest's /etc/hosts and /etc/resolv.conf (the
// rootfs is read-only under a writable overlay) and makes /workspace.
func (s *Sandbox) prepareGuest(ctx context.Context, spec sandbox.Spec) error {
	a := s.vm.Agent
	host := sandbox.Hostname(spec.ID)
	resolv := "# ironclaw: this sandbox has no network access beyond loopback\n"
	if s.net != nil {
		resolv = string(s.net.ResolvConf())
	}
	files := []struct{ path, content string }{
		{"/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + host + "\n"},
		{"/etc/resolv.conf", resolv},
		{"/etc/hostname", host + "\n"},
	}
	for _, f := range files {
		if _, err := a.WriteFile(ctx, f.path, strings.NewReader(f.content), 0o644, 0); err != nil {
			return err
		}
	}
	if err := a.Mkdir(ctx, sandbox.Workspace, 0o1777, false); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// guestEnv is the command's environment: a base like the jail's, then the
// spec's.
func guestEnv(spec sandbox.Spec) []string {
	user := "user" + strconv.FormatUint(uint64(spec.User.UID), 10)
	switch spec.User.UID {
	case 0:
		user = "root"
	case sandbox.SandboxUser.UID:
		user = "sandbox"
	}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + sandbox.Workspace, "USER=" + user, "LOGNAME=" + user,
		"HOSTNAME=" + sandbox.Hostname(spec.ID), "LANG=C.UTF-8",
	}
	if spec.TTY {
		t := os.Getenv("TERM")
		if t == "" {
			t = "xterm"
		}
		env = append(env, "TERM="+t)
	}
	return sandbox.MergeEnv(env, spec.Env...)
}

// VM returns the running QEMU (for inspection: its PID, QMP).
func (s *Sandbox) VM() *qemu.VM { return s.vm }

// Network returns the sandbox's network, or nil for loopback only.
func (s *Sandbox) Network() *network.Net { return s.net }

// Signal sends sig to the command in the guest.
func (s *Sandbox) Signal(sig syscall.Signal) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.proc.Signal(ctx, sig)
}

// ResizeTTY sets the size of the command's terminal.
func (s *Sandbox) ResizeTTY(rows, cols uint16) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.proc.Resize(ctx, rows, cols)
}

// kill destroys the VM at once (timeout): QEMU is killed, which ends the
// command's stream. It goes through QEMU's process handle, not its PID:
// QEMU may have ended already and its PID gone to another process.
func (s *Sandbox) kill() { s.vm.Kill() }

// Wait waits for the command to end (or the VM to die), destroys the
// sandbox and returns how the command ended. The error reports a VM that
// died under the command or a teardown that failed.
func (s *Sandbox) Wait() (Result, error) {
	var r Result
	var werr error
	select {
	case <-s.proc.Done():
	case <-s.vm.Exited():
		// The VMM died: the command's stream may not end by itself.
		select {
		case <-s.proc.Done():
		case <-time.After(2 * time.Second):
		}
	}
	st, perr := s.waitProc()
	select {
	case <-s.timedOut:
		r = Result{ExitCode: 128 + int(syscall.SIGKILL), Signal: syscall.SIGKILL, TimedOut: true}
	default:
		switch {
		case perr != nil:
			r = Result{ExitCode: 128 + int(syscall.SIGKILL), Signal: syscall.SIGKILL}
			werr = fmt.Errorf("the VM stopped under the command: %w%s", perr, s.vmmExit())
		case st.Signal != 0:
			r = Result{ExitCode: 128 + st.Signal, Signal: syscall.Signal(st.Signal)}
		default:
			r = Result{ExitCode: st.Code}
		}
	}
	return r, errors.Join(werr, s.Close())
}

func (s *Sandbox) waitProc() (agentapi.ExitStatus, error) {
	select {
	case <-s.proc.Done():
		return s.proc.Wait()
	default:
		return agentapi.ExitStatus{}, errors.New("the agent stopped answering")
	}
}

// vmmExit describes how QEMU ended, if it did.
func (s *Sandbox) vmmExit() string {
	select {
	case <-s.vm.Exited():
		return fmt.Sprintf(" (QEMU exited: %v)", s.vm.ExitErr())
	default:
		return ""
	}
}

// Close destroys the sandbox: the VM (QMP quit, then SIGKILL: nothing in
// it is kept), its cgroup, its network, then the state directory. It is
// idempotent.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() {
		if s.timer != nil {
			s.timer.Stop()
		}
		s.closeErr = s.teardown()
	})
	return s.closeErr
}

// teardown undoes every step in reverse, then removes the record and
// releases the state directory; a failure keeps the directory (and its
// records) for GC to retry.
func (s *Sandbox) teardown() error {
	var errs []error
	for i := len(s.undo) - 1; i >= 0; i-- {
		if err := s.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	s.undo = nil
	if len(errs) > 0 {
		if s.claim != nil {
			s.claim.Abandon() // keep the records: GC retries from them
		}
		return fmt.Errorf("destroy sandbox %q: %w", s.ID, errors.Join(errs...))
	}
	if s.claim == nil {
		// Attached: the lock went with QEMU; take it to remove the dir.
		c, err := s.takeOver()
		if err != nil {
			return fmt.Errorf("destroy sandbox %q: %w", s.ID, err)
		}
		s.claim = c
	}
	return s.claim.Release()
}

// Reclaim removes what a micro-VM sandbox whose owner died left behind in
// its state directory dir: the VMM process (qemu.json or
// firecracker.json), its cgroups (vm.json) and its network (net.json). It
// is idempotent, and a directory without these records is left alone.
func Reclaim(dir string) error {
	var errs []error
	errs = append(errs, qemu.Reclaim(dir), firecracker.Reclaim(dir))
	var rec record
	if err := state.ReadJSON(filepath.Join(dir, RecordFile), &rec); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("read vm record: %w", err))
	} else if err := cgroup.CheckRecorded(rec.Cgroups, cgroup.SandboxRelOf(dir)); err != nil {
		errs = append(errs, fmt.Errorf("reclaim cgroups: %w", err))
	} else if err := cgroup.Remove(rec.Cgroups); err != nil {
		errs = append(errs, fmt.Errorf("reclaim cgroups: %w", err))
	}
	if err := network.Reclaim(dir); err != nil {
		errs = append(errs, fmt.Errorf("reclaim network: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, RecordFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reclaim: %w", err)
	}
	return nil
}

// termSize returns the size of the terminal f, if it is one.
func termSize(f *os.File) (rows, cols uint16, ok bool) {
	if !term.IsTerminal(int(f.Fd())) {
		return 0, 0, false
	}
	w, h, err := term.GetSize(int(f.Fd()))
	if err != nil || w <= 0 || h <= 0 || w > math.MaxUint16 || h > math.MaxUint16 {
		return 0, 0, false
	}
	return uint16(h), uint16(w), true
}
