package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ironclaw/ironclaw/internal/state"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agent/guest"
	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// Files the driver creates in the sandbox directory.
const (
	RecordFile    = "qemu.json"      // written before QEMU starts; read by Reclaim
	ConsoleLog    = "console.log"    // guest serial console
	StdoutLog     = "qemu.stdout"    // QEMU's stdout
	StderrLog     = "qemu.stderr"    // QEMU's stderr
	agentSocket   = "agent.sock"     // virtio-serial chardev
	qmpSocket     = "qmp.sock"       // QMP
	initrdFile    = "initramfs.cpio" // shared initramfs + this sandbox's token
	chrootDir     = "vmm-root"       // QEMU's empty root once it runs the guest (-chroot)
	agentPortName = "org.ironclaw.agent"
)

// Config describes one VM.
type Config struct {
	// Binary is the QEMU executable; "" means qemu-system-x86_64 on PATH.
	Binary string
	// Image holds kernel, initramfs and rootfs.
	Image *image.Image
	// Dir is the sandbox's directory (owned by the caller); the driver
	// writes its record, sockets, logs and the per-sandbox initramfs here.
	Dir string
	// MemoryMiB and CPUs size the VM; 0 means 256 MiB and 1 vCPU.
	MemoryMiB int
	CPUs      int
	// KVM selects -accel kvm; only set it when a boot probe passed on
	// this host (Probe). Otherwise TCG.
	KVM bool
	// Tap is a tap device in NetNS to attach as virtio-net; "" means no
	// network device. NetNS is the path of the netns QEMU runs in (e.g.
	// /run/netns/NAME); "" means the caller's.
	Tap     string
	NetNS   string
	MAC     string // "" derives one from the token
	Network *guest.NetConfig
	// Hostname of the guest.
	Hostname string
	// Token is the per-sandbox agent token (required). It reaches the
	// guest only inside the per-sandbox initramfs.
	Token []byte
	// BootTimeout bounds boot until the agent answers; 0 means 90 s.
	BootTimeout time.Duration
	// Starter starts the QEMU process; nil means SeccompStarter(Launch{}):
	// through the ironclaw binary's VMM launcher, which installs the outer
	// seccomp filter that LaunchVMM then verifies from /proc.
	Starter Starter
	// TSCkHz is handed to a TCG guest as tsc_early_khz (see HostTSCkHz);
	// 0 measures it. Ignored under KVM.
	TSCkHz uint64
	// Incoming starts QEMU waiting for a migration stream (-incoming
	// defer) instead of booting: see Restore.
	Incoming bool
	// Cmdline is appended to the kernel command line.
	Cmdline []string
	// MaxFileBytes caps every file QEMU writes (RLIMIT_FSIZE): the
	// console log, its stdout and stderr, snapshots. 0 means guest
	// memory + Overhead, room for a snapshot. The guest writes the
	// console log at will; past the cap QEMU dies of SIGXFSZ, ending
	// that VM instead of filling the host's disk.
	MaxFileBytes int64
	Logger       *slog.Logger
}

// VM is a running QEMU micro-VM with a connected agent.
type VM struct {
	cfg     Config
	log     *slog.Logger
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	// pidfd names a QEMU this process did not start (Attach); cmd is
	// nil then. -1 otherwise.
	pidfd int
	pid   int
	// Agent is the connected agent client.
	Agent *agentapi.Client
	QMP   *QMP
	// BootTime is from process start to the agent's handshake reply.
	BootTime time.Duration
	started  time.Time

	closeOnce sync.Once
	closeErr  error
}

// Record is what the driver writes before starting QEMU, so Reclaim can
// remove what a killed owner left behind.
type Record struct {
	PID       int      `json:"pid"`
	StartTime uint64   `json:"start_time"` // /proc/<pid>/stat field 22, guards against pid reuse
	Binary    string   `json:"binary"`
	Files     []string `json:"files"`
}

// TCGCacheMiB is the size of TCG's translated-code cache.
const TCGCacheMiB = 64

// Overhead is what a QEMU process needs beyond guest memory: the TCG
// cache, QEMU's own heap, device buffers and libraries. A cgroup around
// QEMU limits it to guest memory plus this.
const Overhead = 256 << 20

// Argv returns QEMU's command line for cfg (without starting anything).
// It has no -sandbox option: the Starter adds QEMU's own seccomp filter
// (seccomp.QEMUSandboxArgs).
func Argv(cfg Config) ([]string, error) {
	if cfg.Image == nil {
		return nil, errors.New("qemu config: image: required")
	}
	bin := cfg.Binary
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	mem, cpus := cfg.MemoryMiB, cfg.CPUs
	if mem == 0 {
		mem = 256
	}
	if cpus == 0 {
		cpus = 1
	}
	if mem < 64 || cpus < 1 || cpus > 64 {
		return nil, fmt.Errorf("qemu config: memory %d MiB / %d cpus out of range", mem, cpus)
	}
	cmdline := []string{"console=ttyS0", "reboot=t", "panic=-1", "loglevel=4",
		guest.ParamRoot + "=/dev/vda",
		guest.ParamChannel + "=" + guest.Channel{Kind: "virtio-serial", Name: agentPortName}.String(),
		guest.ParamPowerOff + "=reboot",
	}
	if cfg.Hostname != "" {
		cmdline = append(cmdline, guest.ParamHostname+"="+cfg.Hostname)
	}
	if cfg.Network != nil {
		if cfg.Tap == "" {
			return nil, errors.New("qemu config: network: set without a tap")
		}
		cmdline = append(cmdline, guest.ParamNet+"="+cfg.Network.String())
	}
	for _, c := range cfg.Cmdline {
		if strings.Contains(c, "ironclaw.token") {
			return nil, errors.New("qemu config: cmdline: the token never goes on the command line")
		}
	}
	cmdline = append(cmdline, cfg.Cmdline...)
	// TCG's translation cache is bounded (QEMU 7.2 reserves 1 GiB by
	// default), so that the cgroup limit above guest memory holds.
	accel, cpu := "tcg,tb-size="+strconv.Itoa(TCGCacheMiB), "max"
	if cfg.KVM {
		accel, cpu = "kvm", "host"
	} else if cfg.TSCkHz > 0 {
		cmdline = append(cmdline, "tsc_early_khz="+strconv.FormatUint(cfg.TSCkHz, 10))
	}
	d := cfg.Dir
	argv := []string{bin,
		"-M", "microvm,x-option-roms=off,rtc=on",
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-chardev", "file,id=console,path=" + filepath.Join(d, ConsoleLog),
		"-serial", "chardev:console",
		"-kernel", cfg.Image.Kernel,
		"-initrd", filepath.Join(d, initrdFile),
		"-append", strings.Join(cmdline, " "),
		"-drive", "id=root,file=" + cfg.Image.Rootfs + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root",
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", agentChardev(d),
		"-device", "virtserialport,chardev=agent,name=" + agentPortName,
		"-device", "virtio-rng-device",
		"-qmp", "unix:" + filepath.Join(d, qmpSocket) + ",server=on,wait=off",
		// Once it has opened what it needs, just before it runs the
		// guest, QEMU chroots into an empty directory; the launcher adds
		// -runas with an unprivileged uid of its own (seccomp.VMMUID).
		"-chroot", filepath.Join(d, chrootDir),
	}
	if cfg.Incoming {
		argv = append(argv, "-incoming", "defer")
	}
	if cfg.Tap != "" {
		mac := cfg.MAC
		if mac == "" {
			mac = "02:1c:00:00:00:02"
		}
		argv = append(argv, "-netdev", "tap,id=net0,ifname="+cfg.Tap+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=net0,mac="+mac)
	}
	return argv, nil
}

// agentChardev is QEMU's -chardev argument for the agent socket of the
// sandbox directory dir. Reclaim finds an unrecorded QEMU by it.
func agentChardev(dir string) string {
	return "socket,id=agent,path=" + filepath.Join(dir, agentSocket) + ",server=on,wait=off"
}

// Start boots a VM and connects to its agent. On any failure everything it
// made is removed and QEMU is killed; the error names the step and carries
// the end of QEMU's stderr and the console.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	if cfg.Incoming {
		return nil, errors.New("qemu start: incoming: use Restore")
	}
	v, err := launch(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	if err := v.connect(ctx, cfg.Token); err != nil {
		v.teardown()
		return nil, err
	}
	v.BootTime = time.Since(v.started)
	v.log.Debug("agent ready", "boot", v.BootTime)
	return v, nil
}

// launch checks cfg, writes the record and the per-sandbox initramfs and
// starts QEMU in the sandbox's network namespace. On failure it removes
// what it made.
func launch(ctx context.Context, cfg *Config) (_ *VM, err error) {
	if len(cfg.Token) == 0 {
		return nil, errors.New("qemu start: token: required")
	}
	if cfg.Dir == "" {
		return nil, errors.New("qemu start: dir: required")
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 90 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !cfg.KVM && cfg.TSCkHz == 0 {
		cfg.TSCkHz = HostTSCkHz(20 * time.Millisecond)
	}
	argv, err := Argv(*cfg)
	if err != nil {
		return nil, err
	}
	for _, f := range []string{cfg.Image.Kernel, cfg.Image.Rootfs, cfg.Image.Initramfs} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("qemu start: image file: %w", err)
		}
	}
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("qemu start: binary: %w", err)
	}
	argv[0] = bin
	rec := Record{Binary: bin, Files: []string{RecordFile, agentSocket, qmpSocket, initrdFile}}
	if err := writeRecord(cfg.Dir, rec); err != nil {
		return nil, err
	}
	v := &VM{cfg: *cfg, log: log, exited: make(chan struct{}), pidfd: -1}
	defer func() {
		if err != nil {
			v.teardown()
		}
	}()
	if err := image.WriteSandboxInitramfs(filepath.Join(cfg.Dir, initrdFile), cfg.Image.Initramfs, cfg.Token); err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	if err := makeChroot(filepath.Join(cfg.Dir, chrootDir)); err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	starter := cfg.Starter
	if starter == nil {
		starter = SeccompStarter(Launch{Logger: log})
	}
	stdout, err1 := os.OpenFile(filepath.Join(cfg.Dir, StdoutLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	stderr, err2 := os.OpenFile(filepath.Join(cfg.Dir, StderrLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	// QEMU opens the console log itself, with its umask (0644): made
	// here first, it keeps mode 0600 when QEMU truncates it.
	console, err3 := os.OpenFile(filepath.Join(cfg.Dir, ConsoleLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err3 == nil {
		err3 = errors.Join(console.Chmod(0o600), console.Close())
	}
	defer func() {
		for _, f := range []*os.File{stdout, stderr} {
			if f != nil {
				f.Close()
			}
		}
	}()
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("qemu start: log files: %w", err)
	}
	v.started = time.Now()
	var cmd *exec.Cmd
	err = inNetNS(cfg.NetNS, func() error {
		var err error
		cmd, err = starter(ctx, argv, stdout, stderr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	v.cmd, v.pid = cmd, cmd.Process.Pid
	go func() {
		v.waitErr = cmd.Wait()
		close(v.exited)
	}()
	if err := limitFiles(v.pid, cfg.MaxFileBytes, cfg.MemoryMiB); err != nil {
		return nil, fmt.Errorf("qemu start: %w", err)
	}
	rec.PID = cmd.Process.Pid
	rec.StartTime, _ = state.ProcStart(rec.PID)
	if err := writeRecord(cfg.Dir, rec); err != nil {
		return nil, err
	}
	log.Debug("qemu started", "pid", rec.PID, "kvm", cfg.KVM, "tsc_khz", cfg.TSCkHz)
	return v, nil
}

// limitFiles sets RLIMIT_FSIZE of QEMU (pid) to max bytes, or to guest
// memory (memMiB, 0 meaning the default 256) + Overhead when max is 0.
func limitFiles(pid int, max int64, memMiB int) error {
	if max <= 0 {
		if memMiB == 0 {
			memMiB = 256
		}
		max = int64(memMiB)<<20 + Overhead
	}
	lim := unix.Rlimit{Cur: uint64(max), Max: uint64(max)}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		return fmt.Errorf("limit the files of QEMU (pid %d) to %d bytes: %w", pid, max, err)
	}
	return nil
}

// connect waits for QMP and the agent channel, and authenticates to the
// agent with token, all within the boot timeout; an exited QEMU ends the
// wait at once.
func (v *VM) connect(ctx context.Context, token []byte) (err error) {
	bctx, cancel := context.WithTimeout(ctx, v.cfg.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-v.exited:
			cancel()
		case <-bctx.Done():
		}
	}()
	if v.QMP == nil {
		if err := v.dialQMP(bctx); err != nil {
			return err
		}
	}
	conn, err := dialRetry(bctx, func(c context.Context) (net.Conn, error) {
		return agentapi.DialUnix(c, filepath.Join(v.cfg.Dir, agentSocket))
	})
	if err != nil {
		return v.bootErr("connect agent channel", err)
	}
	if v.Agent, err = agentapi.Connect(bctx, conn, token); err != nil {
		return v.bootErr("agent handshake", err)
	}
	return nil
}

// dialQMP connects to QMP and then checks that QEMU runs unprivileged in
// its empty root: QEMU serves QMP only from its main loop, after it has
// chrooted and changed its uid (see dropped). A QEMU that has not is
// refused, and the start fails.
func (v *VM) dialQMP(ctx context.Context) (err error) {
	if v.QMP, err = dialRetry(ctx, func(c context.Context) (*QMP, error) { return DialQMP(c, filepath.Join(v.cfg.Dir, qmpSocket)) }); err != nil {
		return v.bootErr("connect QMP", err)
	}
	if err := dropped(v.pid, filepath.Join(v.cfg.Dir, chrootDir)); err != nil {
		return fmt.Errorf("qemu start: %w", err)
	}
	return nil
}

func dialRetry[T any](ctx context.Context, dial func(context.Context) (T, error)) (T, error) {
	for {
		c, err := dial(ctx)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return c, fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bootErr explains a failed boot: an exited QEMU with its status and the
// tail of its stderr and of the guest console.
func (v *VM) bootErr(step string, err error) error {
	// A request that failed because the VMM died races its exit status:
	// give the exit a moment to be observed.
	select {
	case <-v.exited:
	case <-time.After(time.Second):
	}
	select {
	case <-v.exited:
		return fmt.Errorf("qemu start: %s: QEMU exited early (%v): stderr: %s; console: %s", step, v.waitErr,
			tail(filepath.Join(v.cfg.Dir, StderrLog), 600), tail(filepath.Join(v.cfg.Dir, ConsoleLog), 1200))
	default:
	}
	return fmt.Errorf("qemu start: %s: %w; console: %s", step, err, tail(filepath.Join(v.cfg.Dir, ConsoleLog), 1200))
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	if s == "" {
		return "(empty)"
	}
	return s
}

// Exited is closed when the QEMU process has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// PID is QEMU's process id.
func (v *VM) PID() int { return v.pid }

// ExitErr is how QEMU ended (nil for a clean exit); valid once Exited is
// closed.
func (v *VM) ExitErr() error {
	<-v.exited
	return v.waitErr
}

// Close shuts the VM down: a clean power-off through the agent, then QMP
// quit, then SIGKILL, each bounded in time; then it removes the sockets,
// the per-sandbox initramfs and the record. The logs stay for the caller.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		if v.Agent != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := v.Agent.Shutdown(ctx); err != nil {
				v.log.Debug("agent shutdown", "err", err)
			}
			cancel()
			select {
			case <-v.exited:
			case <-time.After(10 * time.Second):
			}
		}
		v.closeErr = v.teardown()
	})
	return v.closeErr
}

// Destroy ends the VM at once, without a guest power-off — a disposable
// sandbox has nothing to save (its rootfs is read-only, its writable layer
// in guest memory): QMP quit, then SIGKILL; then it removes the driver's
// files like Close. Close and Destroy are each other's no-op afterwards.
func (v *VM) Destroy() error {
	v.closeOnce.Do(func() { v.closeErr = v.teardown() })
	return v.closeErr
}

func (v *VM) teardown() error {
	if v.Agent != nil {
		_ = v.Agent.Close()
	}
	if v.cmd != nil || v.pidfd >= 0 {
		select {
		case <-v.exited:
		default:
			if v.QMP != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = v.QMP.Execute(ctx, "quit", nil, nil)
				cancel()
			}
			select {
			case <-v.exited:
			case <-time.After(3 * time.Second):
				v.kill()
				<-v.exited
			}
		}
	}
	if v.QMP != nil {
		_ = v.QMP.Close()
	}
	if v.pidfd >= 0 {
		unix.Close(v.pidfd)
		v.pidfd = -1
	}
	return removeFiles(v.cfg.Dir)
}

// Kill sends SIGKILL to QEMU at once (no QMP quit, no teardown: Close or
// Destroy still follow). It never signals a PID QEMU no longer holds.
func (v *VM) Kill() { v.kill() }

// kill sends SIGKILL to QEMU: through the child handle, or through the
// pidfd of an attached QEMU (no PID reuse race either way).
func (v *VM) kill() {
	if v.cmd != nil {
		_ = v.cmd.Process.Kill()
		return
	}
	if err := unix.PidfdSendSignal(v.pidfd, unix.SIGKILL, nil, 0); err != nil && err != unix.ESRCH {
		v.log.Warn("kill attached QEMU", "pid", v.pid, "err", err)
	}
}

func removeFiles(dir string) error {
	var errs []error
	for _, f := range []string{agentSocket, qmpSocket, initrdFile, chrootDir, RecordFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("qemu cleanup: %w", err)
	}
	return nil
}

func writeRecord(dir string, rec Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("qemu record: %w", err)
	}
	tmp := filepath.Join(dir, RecordFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("qemu record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, RecordFile)); err != nil {
		return fmt.Errorf("qemu record: %w", err)
	}
	return nil
}

// Reclaim kills the QEMU named in dir's record if it still runs (same pid
// and start time) and removes the files the driver made. It is idempotent.
func Reclaim(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("qemu reclaim: %w", err)
	}
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("qemu reclaim: record %s: %w", dir, err)
	}
	if rec.PID <= 0 {
		// The owner died between starting QEMU and recording its PID:
		// find it by the sandbox directory its command line names.
		if err := killNaming(dir, rec.Binary); err != nil {
			return fmt.Errorf("qemu reclaim: %w", err)
		}
	}
	if rec.PID > 0 {
		if err := state.KillStarted(rec.PID, rec.StartTime, 5*time.Second); err != nil {
			return fmt.Errorf("qemu reclaim: %w", err)
		}
	}
	return removeFiles(dir)
}

// killNaming SIGKILLs every process of this uid that is the QEMU binary
// (argv[0]) of the sandbox directory dir, or its launcher before the exec,
// by the exact agent chardev argument that only that sandbox's QEMU has,
// and waits until they are gone. Other processes that merely name the
// socket (an operator's socat on it) are left alone.
func killNaming(dir, binary string) error {
	want := agentChardev(dir)
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return err
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if (args[0] != binary && args[0] != seccomp.LauncherArg0) || !slices.Contains(args[1:], want) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Dir(p), &st); err != nil || int(st.Uid) != os.Geteuid() {
			continue
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && err != unix.ESRCH {
			return fmt.Errorf("kill %d: %w", pid, err)
		}
		pids = append(pids, pid)
	}
	for i := 0; i < 100 && len(pids) > 0; i++ {
		if _, err := state.ProcStart(pids[0]); err != nil {
			pids = pids[1:]
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// inNetNS runs fn on an OS thread that has joined the network namespace
// at nsPath ("" runs it in place), so a process fn forks is born there.
func inNetNS(nsPath string, fn func() error) error {
	if nsPath == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked (and so discarded by the runtime)
		// if it cannot be returned to its original namespace.
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", nsPath, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
			return
		}
		err = fn()
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// NewToken returns a fresh random agent token.
func NewToken() []byte {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return []byte(hex.EncodeToString(b[:]))
}
