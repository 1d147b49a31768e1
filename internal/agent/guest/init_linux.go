package guest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Booted is what Setup leaves for the agent: its parameters and token.
type Booted struct {
	Params Params
	Token  []byte
}

// Setup turns the initramfs into a running guest: API filesystems, modules,
// rootfs overlay and switch_root, hostname, network. Any failure is returned;
// the caller powers the VM off (an init must not exit).
func Setup(log *slog.Logger) (*Booted, error) {
	if err := mountAPI("/"); err != nil {
		return nil, err
	}
	// The initramfs has no /dev/console node, so the kernel started us
	// without stdio; take the console from devtmpfs now.
	if fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0); err == nil {
		for i := 0; i < 3; i++ {
			_ = unix.Dup3(fd, i, 0)
		}
		if fd > 2 {
			unix.Close(fd)
		}
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	p, err := ParseCmdline(string(raw))
	if err != nil {
		return nil, fmt.Errorf("kernel command line: %w", err)
	}
	token, err := os.ReadFile(TokenPath)
	if err != nil {
		return nil, fmt.Errorf("read agent token from the initramfs: %w", err)
	}
	token = []byte(strings.TrimSpace(string(token)))
	if len(token) == 0 {
		return nil, fmt.Errorf("agent token %s is empty", TokenPath)
	}
	if err := os.Remove(TokenPath); err != nil {
		return nil, fmt.Errorf("remove token file: %w", err)
	}
	if err := LoadModules(log, ModulesList, p.ModParams); err != nil {
		return nil, err
	}
	if p.Root != "" {
		if err := switchRoot(log, p); err != nil {
			return nil, err
		}
	}
	if p.Hostname != "" {
		if err := unix.Sethostname([]byte(p.Hostname)); err != nil {
			return nil, fmt.Errorf("set hostname: %w", err)
		}
	}
	if err := setupNetwork(p.Net); err != nil {
		return nil, err
	}
	return &Booted{Params: p, Token: token}, nil
}

type mnt struct {
	src, dst, fstype string
	flags            uintptr
	data             string
}

func mountAPI(root string) error {
	for _, m := range []mnt{
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
		{"tmpfs", "dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		dst := filepath.Join(root, m.dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", dst, err)
		}
		if err := unix.Mount(m.src, dst, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, dst, err)
		}
	}
	// /dev/ptmx must be the devpts instance's.
	_ = os.Remove(filepath.Join(root, "dev/ptmx"))
	if err := os.Symlink("pts/ptmx", filepath.Join(root, "dev/ptmx")); err != nil {
		return fmt.Errorf("link /dev/ptmx: %w", err)
	}
	return nil
}

// LoadModules loads, in order, the modules listed in list (paths, one a
// line), each with its options from the command line. A module already
// present (built in, or loaded) is fine.
func LoadModules(log *slog.Logger, list string, params map[string][]string) error {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil // an initramfs without modules: everything is built in
	}
	if err != nil {
		return fmt.Errorf("open module list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		name := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(path), ".ko"), "-", "_")
		if err := loadModule(path, strings.Join(params[name], " ")); err != nil {
			return fmt.Errorf("load module %s: %w", name, err)
		}
		log.Debug("module loaded", "module", name)
	}
	return sc.Err()
}

func loadModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), params, 0)
	if err == unix.EEXIST {
		return nil
	}
	return err
}

// waitDevice waits for a block device node to appear (drivers probe
// asynchronously after their module loads).
func waitDevice(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not appear within %s", path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// switchRoot mounts the rootfs read-only under a writable overlay and makes
// it the root, keeping the API filesystems.
func switchRoot(log *slog.Logger, p Params) error {
	if err := waitDevice(p.Root, 10*time.Second); err != nil {
		return err
	}
	for _, d := range []string{"/mnt/lower", "/mnt/rw", "/mnt/root"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
	}
	if err := unix.Mount(p.Root, "/mnt/lower", "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount rootfs %s: %w", p.Root, err)
	}
	if p.RW != "" {
		if err := waitDevice(p.RW, 10*time.Second); err != nil {
			return err
		}
		if err := unix.Mount(p.RW, "/mnt/rw", "ext4", unix.MS_NOATIME, ""); err != nil {
			return fmt.Errorf("mount writable layer %s: %w", p.RW, err)
		}
	} else if err := unix.Mount("tmpfs", "/mnt/rw", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount writable tmpfs: %w", err)
	}
	for _, d := range []string{"/mnt/rw/upper", "/mnt/rw/work"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
	}
	opts := "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"
	if err := unix.Mount("overlay", "/mnt/root", "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay root: %w", err)
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run"} {
		dst := filepath.Join("/mnt/root", d)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		if err := unix.Mount("/"+d, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move /%s into the new root: %w", d, err)
		}
	}
	if err := unix.Chdir("/mnt/root"); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move new root onto /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	log.Debug("switched root", "root", p.Root, "rw", p.RW)
	return nil
}

// setupNetwork brings lo up and configures n through netlink.
func setupNetwork(n *NetConfig) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("network: find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("network: set lo up: %w", err)
	}
	if n == nil {
		return nil
	}
	var link netlink.Link
	deadline := time.Now().Add(10 * time.Second)
	for {
		link, err = netlink.LinkByName(n.Iface)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("network: interface %s did not appear: %w", n.Iface, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	addr, err := netlink.ParseAddr(n.Addr.String())
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("network: add %s to %s: %w", n.Addr, n.Iface, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: set %s up: %w", n.Iface, err)
	}
	if n.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: n.Gateway.AsSlice()}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("network: default route via %s: %w", n.Gateway, err)
		}
	}
	return nil
}

// PowerOff ends the VM: every process is killed, filesystems are synced and
// the kernel is told to power off (or, with reboot, to reset; QEMU started
// with -no-reboot and Firecracker then exit).
func PowerOff(log *slog.Logger, reboot bool) {
	_ = unix.Kill(-1, unix.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	_ = unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	err := unix.Reboot(cmd)
	log.Error("reboot syscall returned", "err", err)
	for {
		time.Sleep(time.Hour) // PID 1 must not exit
	}
}

// Listen returns a function that yields one host connection at a time on ch.
// For virtio-serial it reopens the port after each session (the port reads
// EOF while no host is connected); for vsock it accepts on the port.
func Listen(ch Channel) (func(ctx context.Context) (io.ReadWriteCloser, error), error) {
	switch ch.Kind {
	case "virtio-serial":
		return func(ctx context.Context) (io.ReadWriteCloser, error) { return openSerialPort(ctx, ch.Name) }, nil
	case "vsock":
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("vsock socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: ch.Port}); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("vsock bind port %d: %w", ch.Port, err)
		}
		if err := unix.Listen(fd, 16); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("vsock listen: %w", err)
		}
		return func(ctx context.Context) (io.ReadWriteCloser, error) {
			nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err != nil {
				return nil, fmt.Errorf("vsock accept: %w", err)
			}
			return os.NewFile(uintptr(nfd), "vsock"), nil
		}, nil
	}
	return nil, fmt.Errorf("unknown channel kind %q", ch.Kind)
}

// openSerialPort finds the virtio-serial port called name in sysfs, opens
// it and waits until a host is connected and has sent something.
func openSerialPort(ctx context.Context, name string) (io.ReadWriteCloser, error) {
	dev, err := findPort(name, 10*time.Second)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	// The port polls POLLHUP (with POLLIN: a read would not block, it
	// returns EOF) while no host is connected, and POLLIN alone once the
	// host is there. It stays open while waiting, so bytes the host sends
	// are never dropped by a close.
	for {
		fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLIN}}
		_, perr := unix.Poll(fds, 200)
		if perr == nil && fds[0].Revents&unix.POLLIN != 0 && fds[0].Revents&unix.POLLHUP == 0 {
			return &serialConn{f: f}, nil
		}
		if ctx.Err() != nil {
			f.Close()
			return nil, ctx.Err()
		}
		if perr != nil || fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// serialConn is one host session on a virtio-serial port. Once the host
// has hung up it refuses writes: QEMU keeps what the guest writes while no
// host is connected and hands it to the next host, where the end of an old
// session (a multiplexer's closing frames) would garble the new one's
// handshake, and a snapshot would carry it to every clone.
type serialConn struct {
	f    *os.File
	hung atomic.Bool
}

func (c *serialConn) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	if n == 0 && (err == nil || errors.Is(err, io.EOF)) {
		c.hung.Store(true)
		return 0, io.EOF
	}
	return n, err
}

func (c *serialConn) Write(p []byte) (int, error) {
	if c.hung.Load() || c.hostGone() {
		c.hung.Store(true)
		return 0, errHostGone
	}
	return c.f.Write(p)
}

// hostGone polls the port: POLLHUP means no host is connected.
func (c *serialConn) hostGone() bool {
	fds := []unix.PollFd{{Fd: int32(c.f.Fd()), Events: unix.POLLOUT}}
	_, err := unix.Poll(fds, 0)
	return err == nil && fds[0].Revents&unix.POLLHUP != 0
}

func (c *serialConn) Close() error { return c.f.Close() }

var errHostGone = errors.New("virtio-serial: the host hung up")

func findPort(name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, e := range ents {
			b, err := os.ReadFile(e)
			if err == nil && strings.TrimSpace(string(b)) == name {
				return "/dev/" + filepath.Base(filepath.Dir(e)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio-serial port %q not found in /sys/class/virtio-ports", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
