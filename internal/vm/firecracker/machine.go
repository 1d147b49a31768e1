package firecracker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/ironclaw/ironclaw/internal/state"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/agent/guest"
	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// AgentPort is the guest vsock port the agent listens on.
const AgentPort = 1024

// Files the driver creates in the sandbox directory.
const (
	APISocket   = "firecracker.sock"
	VsockSocket = "vsock.sock"
	LogFile     = "firecracker.log"
	MetricsFile = "firecracker.metrics"
	StdoutLog   = "firecracker.stdout"
	StderrLog   = "firecracker.stderr"
	initrdFile  = "initramfs.cpio"
	rwFile      = "rw.ext4"
)

// Config describes one Firecracker VM.
type Config struct {
	// Binary is the firecracker executable; "" means "firecracker" on PATH.
	Binary string
	// ID names the VM (Firecracker's --id); derive it from the sandbox key.
	ID string
	// Image supplies kernel, initramfs and the read-only shared rootfs.
	Image *image.Image
	// Dir is the sandbox directory (the caller's).
	Dir string
	// Token is the per-sandbox agent token.
	Token []byte
	// MemoryMiB, CPUs size the VM; 0 means 256 and 1.
	MemoryMiB, CPUs int
	// RWSizeMiB is the per-sandbox writable drive; 0 means 256 MiB.
	RWSizeMiB int64
	// Tap (in NetNS) and Network configure the guest's interface.
	Tap     string
	NetNS   string
	MAC     string
	Network *guest.NetConfig
	// Jailer, when set, starts Firecracker through the jailer.
	Jailer *Jailer
	// TrackDirtyPages enables diff snapshots.
	TrackDirtyPages bool
	// BootTimeout bounds socket wait + boot + agent handshake; 0 means 30 s.
	BootTimeout time.Duration
	// Launch builds the command for argv (the seam for the outer seccomp
	// filter); nil means exec.Command.
	Launch func(ctx context.Context, argv []string) (*exec.Cmd, error)
	Logger *slog.Logger
}

// VM is a running Firecracker VM with a connected agent.
type VM struct {
	cfg     Config
	log     *slog.Logger
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	// pid is Firecracker's process: the launched command, or with the
	// jailer (--new-pid-ns) the child whose PID the jailer writes to
	// firecracker.pid before it exits; pidfd names it without a PID race.
	pid   int
	pidfd int
	rec   record
	// API is the Firecracker API client.
	API *Client
	// Agent is the connected agent.
	Agent *agentapi.Client
	// root is where paths the API sees are rooted (the chroot with the
	// jailer, "" without).
	root string

	closeOnce sync.Once
	closeErr  error
}

// validID reports whether id is 1-64 letters, digits and dashes, the form
// the jailer accepts. Anything else ("..", "a/b") could make a path from
// the chroot base leave it.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func (c *Config) defaults() error {
	if c.Image == nil || c.Dir == "" || c.ID == "" || len(c.Token) == 0 {
		return errors.New("firecracker config: image, dir, id and token are required")
	}
	if !validID(c.ID) {
		return fmt.Errorf("firecracker config: id %q: letters, digits and dashes, at most 64", c.ID)
	}
	if c.Binary == "" {
		c.Binary = "firecracker"
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 256
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.RWSizeMiB == 0 {
		c.RWSizeMiB = 256
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 30 * time.Second
	}
	if c.Network != nil && c.Tap == "" {
		return errors.New("firecracker config: network: set without a tap")
	}
	return nil
}

// BootArgs is the kernel command line the driver gives the guest.
func BootArgs(cfg Config) string {
	args := []string{"console=ttyS0", "reboot=k", "panic=1", "pci=off", "quiet", "loglevel=4",
		guest.ParamRoot + "=/dev/vda", guest.ParamRW + "=/dev/vdb",
		guest.ParamChannel + "=" + guest.Channel{Kind: "vsock", Port: AgentPort}.String(),
		guest.ParamPowerOff + "=reboot",
	}
	if cfg.Network != nil {
		args = append(args, guest.ParamNet+"="+cfg.Network.String())
	}
	return strings.Join(args, " ")
}

// Start launches Firecracker (directly or through the jailer), runs the
// boot sequence and connects to the agent over vsock. On failure it kills
// the VMM and removes what it made; the error names the step and carries
// the end of Firecracker's stderr and log.
func Start(ctx context.Context, cfg Config) (_ *VM, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := &VM{cfg: cfg, log: log, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = v.teardown()
		}
	}()
	// Files Firecracker reads or writes; with the jailer they are placed
	// in its chroot and named relative to it.
	files := v.dir()
	if err := os.MkdirAll(files, 0o755); err != nil {
		return nil, fmt.Errorf("firecracker start: %w", err)
	}
	if err := image.WriteSandboxInitramfs(filepath.Join(files, initrdFile), cfg.Image.Initramfs, cfg.Token); err != nil {
		return nil, fmt.Errorf("firecracker start: %w", err)
	}
	if err := makeRWDrive(ctx, filepath.Join(files, rwFile), cfg.RWSizeMiB); err != nil {
		return nil, fmt.Errorf("firecracker start: %w", err)
	}
	kernel, rootfs := cfg.Image.Kernel, cfg.Image.Rootfs
	if cfg.Jailer != nil {
		if kernel, rootfs, err = cfg.Jailer.stage(cfg, files); err != nil {
			return nil, fmt.Errorf("firecracker start: jailer: %w", err)
		}
	}
	for _, f := range []string{LogFile, MetricsFile} {
		if err := os.WriteFile(filepath.Join(files, f), nil, 0o600); err != nil {
			return nil, fmt.Errorf("firecracker start: %w", err)
		}
		if cfg.Jailer != nil {
			_ = os.Chown(filepath.Join(files, f), cfg.Jailer.UID, cfg.Jailer.GID)
		}
	}
	argv := []string{cfg.Binary, "--api-sock", v.apiPath(APISocket), "--id", cfg.ID}
	if cfg.Jailer != nil {
		argv = cfg.Jailer.argv(cfg)
	}
	if err := v.launch(ctx, argv); err != nil {
		return nil, err
	}

	bctx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	go func() {
		select {
		case <-v.exited:
			cancel()
		case <-bctx.Done():
		}
	}()
	sock := filepath.Join(files, APISocket)
	if err := waitSocket(bctx, sock); err != nil {
		return nil, v.bootErr("wait for the API socket", err)
	}
	v.API = NewClient(sock)
	steps := []struct {
		name string
		do   func() error
	}{
		{"logger", func() error {
			return v.API.PutLogger(bctx, Logger{LogPath: v.apiPath(LogFile), Level: "Info", ShowLevel: true})
		}},
		{"metrics", func() error { return v.API.PutMetrics(bctx, Metrics{MetricsPath: v.apiPath(MetricsFile)}) }},
		{"boot-source", func() error {
			return v.API.PutBootSource(bctx, BootSource{KernelImagePath: kernel, InitrdPath: v.apiPath(initrdFile), BootArgs: BootArgs(cfg)})
		}},
		{"rootfs drive", func() error {
			return v.API.PutDrive(bctx, Drive{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: false, IsReadOnly: true})
		}},
		{"writable drive", func() error {
			return v.API.PutDrive(bctx, Drive{DriveID: "rw", PathOnHost: v.apiPath(rwFile), IsReadOnly: false})
		}},
		{"machine-config", func() error {
			return v.API.PutMachineConfig(bctx, MachineConfiguration{VcpuCount: cfg.CPUs, MemSizeMib: cfg.MemoryMiB, TrackDirtyPages: cfg.TrackDirtyPages})
		}},
		{"network-interfaces", func() error {
			if cfg.Tap == "" {
				return nil
			}
			return v.API.PutNetworkInterface(bctx, NetworkInterface{IfaceID: "eth0", HostDevName: cfg.Tap, GuestMAC: cfg.MAC})
		}},
		{"vsock", func() error { return v.API.PutVsock(bctx, Vsock{GuestCID: 3, UDSPath: v.apiPath(VsockSocket)}) }},
		{"entropy", func() error { return v.API.PutEntropy(bctx) }},
		{"InstanceStart", func() error { return v.API.Action(bctx, "InstanceStart") }},
	}
	if cfg.Jailer != nil && cfg.Jailer.ConfigFile {
		steps = nil // Firecracker configured and started itself from the file
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return nil, v.bootErr(s.name, err)
		}
	}
	if err := v.connectAgent(bctx, cfg.Token); err != nil {
		return nil, err
	}
	return v, nil
}

func (v *VM) connectAgent(ctx context.Context, token []byte) error {
	vs := filepath.Join(v.dir(), VsockSocket)
	for {
		conn, err := agentapi.DialFirecrackerVsock(ctx, vs, AgentPort)
		if err == nil {
			if v.Agent, err = agentapi.Connect(ctx, conn, token); err != nil {
				return v.bootErr("agent handshake", err)
			}
			return nil
		}
		if ctx.Err() != nil {
			return v.bootErr("connect to the agent over vsock", err)
		}
		time.Sleep(20 * time.Millisecond) // the guest is still booting
	}
}

// dir is where the VM's files live on the host.
func (v *VM) dir() string {
	if v.cfg.Jailer != nil {
		return v.cfg.Jailer.chrootRoot(v.cfg.ID)
	}
	return v.cfg.Dir
}

// apiPath names a file in dir() as Firecracker sees it.
func (v *VM) apiPath(name string) string {
	if v.cfg.Jailer != nil {
		return "/" + name
	}
	return filepath.Join(v.cfg.Dir, name)
}

func (v *VM) launch(ctx context.Context, argv []string) error {
	for _, a := range argv {
		if a == "--no-seccomp" {
			return errors.New("firecracker start: --no-seccomp is never allowed")
		}
	}
	launch := v.cfg.Launch
	if launch == nil {
		launch = func(_ context.Context, a []string) (*exec.Cmd, error) { return exec.Command(a[0], a[1:]...), nil }
	}
	cmd, err := launch(ctx, argv)
	if err != nil {
		return fmt.Errorf("firecracker start: launcher: %w", err)
	}
	stdout, err1 := os.OpenFile(filepath.Join(v.cfg.Dir, StdoutLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	stderr, err2 := os.OpenFile(filepath.Join(v.cfg.Dir, StderrLog), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("firecracker start: log files: %w", err)
	}
	defer stdout.Close()
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	v.pidfd = -1
	v.rec = record{ID: v.cfg.ID, Dir: v.dir()}
	if v.cfg.Jailer != nil {
		v.rec.Chroot = filepath.Dir(v.dir())
	}
	if err := writeRecord(v.cfg.Dir, v.rec); err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("firecracker start: %w", err)
	}
	v.cmd = cmd
	if v.cfg.Jailer == nil {
		v.pid = cmd.Process.Pid
		go func() {
			v.waitErr = cmd.Wait()
			close(v.exited)
		}()
		return v.recordPID()
	}
	// The jailer clones Firecracker into a new PID namespace, writes the
	// child's PID to <chroot>/firecracker.pid and exits.
	known := make(chan error, 1)
	go v.followJailer(known)
	select {
	case err := <-known:
		if err != nil {
			return fmt.Errorf("firecracker start: jailer: %w", err)
		}
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return fmt.Errorf("firecracker start: jailer: %w", ctx.Err())
	}
	return v.recordPID()
}

// followJailer waits for the jailer to exit, takes Firecracker's PID from
// its pid file, and then watches that process through a pidfd, closing
// v.exited when it ends. It reports on known once the PID is known (or the
// jailer failed).
func (v *VM) followJailer(known chan<- error) {
	fail := func(err error) {
		v.waitErr = err
		known <- err
		close(v.exited)
	}
	if err := v.cmd.Wait(); err != nil {
		fail(fmt.Errorf("jailer exited: %w", err))
		return
	}
	b, err := os.ReadFile(filepath.Join(v.dir(), "firecracker.pid"))
	if err != nil {
		fail(fmt.Errorf("read Firecracker's pid file: %w", err))
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		fail(fmt.Errorf("bad pid file %q", b))
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fail(fmt.Errorf("pidfd of Firecracker pid %d: %w", pid, err))
		return
	}
	v.pid, v.pidfd = pid, fd
	known <- nil
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			v.waitErr = fmt.Errorf("watch Firecracker pid %d: %w", pid, err)
			break
		}
		if fds[0].Revents != 0 {
			v.waitErr = fmt.Errorf("Firecracker (pid %d) exited", pid)
			break
		}
	}
	close(v.exited)
}

// recordPID completes the record with the VMM's PID and start time.
func (v *VM) recordPID() error {
	v.rec.PID = v.pid
	v.rec.StartTime, _ = state.ProcStart(v.pid)
	return writeRecord(v.cfg.Dir, v.rec)
}

// kill sends SIGKILL to Firecracker.
func (v *VM) kill() {
	if v.pidfd >= 0 {
		_ = unix.PidfdSendSignal(v.pidfd, unix.SIGKILL, nil, 0)
		return
	}
	if v.cmd != nil && v.cmd.Process != nil {
		_ = v.cmd.Process.Kill()
	}
}

// PID is Firecracker's process id (0 before it started).
func (v *VM) PID() int { return v.pid }

// waitSocket waits until the API socket accepts connections: the file
// appears at bind(2), before listen(2), and a request in between is
// refused.
func waitSocket(ctx context.Context, path string) error {
	var d net.Dialer
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := d.DialContext(ctx, "unix", path); err == nil {
				return c.Close()
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (v *VM) bootErr(step string, err error) error {
	// A request that failed because the VMM died races its exit status:
	// give the exit a moment to be observed.
	select {
	case <-v.exited:
	case <-time.After(time.Second):
	}
	select {
	case <-v.exited:
		return fmt.Errorf("firecracker start: %s: Firecracker exited early (%v): stderr: %s; log: %s", step, v.waitErr,
			tail(filepath.Join(v.cfg.Dir, StderrLog)), tail(filepath.Join(v.dir(), LogFile)))
	default:
	}
	return fmt.Errorf("firecracker start: %s: %w", step, err)
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 800 {
		s = "…" + s[len(s)-800:]
	}
	if s == "" {
		return "(empty)"
	}
	return s
}

// Exited is closed when the VMM process has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Close powers the guest off through the agent, then kills the VMM if it
// is still there, and removes the sockets, drives and initramfs it made
// (logs and metrics stay for the caller).
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		if v.Agent != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_ = v.Agent.Shutdown(ctx) // best effort: teardown kills it anyway
			cancel()
			select {
			case <-v.exited:
			case <-time.After(5 * time.Second):
			}
		}
		v.closeErr = v.teardown()
	})
	return v.closeErr
}

func (v *VM) teardown() error {
	if v.Agent != nil {
		_ = v.Agent.Close()
	}
	if v.cmd != nil {
		select {
		case <-v.exited:
		default:
			v.kill()
			<-v.exited
		}
	}
	if v.pidfd >= 0 {
		_ = unix.Close(v.pidfd)
		v.pidfd = -1
	}
	var errs []error
	for _, f := range []string{APISocket, VsockSocket, initrdFile, rwFile} {
		if err := os.Remove(filepath.Join(v.dir(), f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if v.cfg.Jailer != nil {
		errs = append(errs, v.cfg.Jailer.cleanup(v.cfg.ID, v.cfg.Dir))
	}
	if err := os.Remove(filepath.Join(v.cfg.Dir, RecordFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("firecracker cleanup: %w", err)
	}
	return nil
}

// Snapshot pauses the VM and writes its state and memory to snapPath and
// memPath (host paths). The VM stays paused; Resume continues it.
func (v *VM) Snapshot(ctx context.Context, snapPath, memPath string) error {
	if err := v.API.PatchVM(ctx, "Paused"); err != nil {
		return fmt.Errorf("snapshot: pause: %w", err)
	}
	if err := v.API.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: snapPath, MemFilePath: memPath, SnapshotType: "Full"}); err != nil {
		return fmt.Errorf("snapshot: create: %w", err)
	}
	return nil
}

// Resume continues a paused VM.
func (v *VM) Resume(ctx context.Context) error {
	if err := v.API.PatchVM(ctx, "Resumed"); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// Restore starts a fresh Firecracker from a snapshot made by Snapshot and
// makes the clone its own: it connects with the template's token, then
// rekeys the agent with cfg.Token and fresh entropy, so no two clones share
// a token or a random state. Firecracker gives every restored VM a new
// VMGenID itself (the guest kernel then reseeds its RNG). Any failure is
// returned and the clone destroyed — never handed out.
func Restore(ctx context.Context, cfg Config, templateToken []byte, snapPath, memPath string) (_ *VM, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if cfg.Jailer != nil {
		return nil, errors.New("firecracker restore: restoring through the jailer is not supported yet")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := &VM{cfg: cfg, log: log, exited: make(chan struct{})}
	defer func() {
		if err != nil {
			_ = v.teardown()
		}
	}()
	if err := v.launch(ctx, []string{cfg.Binary, "--api-sock", v.apiPath(APISocket), "--id", cfg.ID}); err != nil {
		return nil, err
	}
	bctx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	if err := waitSocket(bctx, filepath.Join(cfg.Dir, APISocket)); err != nil {
		return nil, v.bootErr("wait for the API socket", err)
	}
	v.API = NewClient(filepath.Join(cfg.Dir, APISocket))
	p := SnapshotLoadParams{
		SnapshotPath:  snapPath,
		MemBackend:    &MemoryBackend{BackendType: "File", BackendPath: memPath},
		ResumeVM:      true,
		VsockOverride: &VsockOverride{UDSPath: v.apiPath(VsockSocket)},
	}
	if cfg.Tap != "" {
		p.NetworkOverrides = []NetworkOverride{{IfaceID: "eth0", HostDevName: cfg.Tap}}
	}
	if err := v.API.LoadSnapshot(bctx, p); err != nil {
		return nil, v.bootErr("load snapshot", err)
	}
	if err := v.connectAgent(bctx, templateToken); err != nil {
		return nil, err
	}
	seed := make([]byte, 64)
	_, _ = rand.Read(seed)
	if err := v.Agent.Rekey(bctx, cfg.Token, seed); err != nil {
		return nil, v.bootErr("rekey the clone's agent", err)
	}
	return v, nil
}

func makeRWDrive(ctx context.Context, path string, sizeMiB int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writable drive: %w", err)
	}
	err = f.Truncate(sizeMiB << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writable drive: %w", err)
	}
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", path).CombinedOutput(); err != nil {
		return fmt.Errorf("writable drive: mkfs.ext4: %w: %s", err, out)
	}
	return nil
}
