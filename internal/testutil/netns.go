package testutil

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// inHostNSEnv marks the re-executed test binary that runs in its own
// network and mount namespaces.
const inHostNSEnv = "IRONCLAW_TEST_IN_HOSTNS"

// HostNetNSMain is the TestMain of packages whose tests change the host's
// network state (links, routes, forwarding, nftables, iptables). As root it
// re-executes the test binary in a fresh network namespace and a private
// mount namespace, which then plays "the host": nothing the tests do can
// reach the real host's interfaces or rules, and traffic never leaves
// namespaces the test made. After the tests, leakCheck (if not nil) runs in
// that namespace and fails the run if it reports anything. Without root the
// tests run in place (and skip through RequireRoot).
func HostNetNSMain(m *testing.M, leakCheck func() error) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	if os.Getenv(inHostNSEnv) != "1" {
		cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), inHostNSEnv+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			os.Exit(ee.ExitCode())
		case err != nil:
			fmt.Fprintln(os.Stderr, "re-exec test binary in a fresh network namespace:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	// Keep every mount the tests make (netns bind mounts) in this mount
	// namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "make mounts private:", err)
		os.Exit(2)
	}
	self, err := netns.Current()
	if err == nil {
		err = netns.LoopbackUp(self)
		self.Close()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bring up lo in the test host namespace:", err)
		os.Exit(2)
	}
	code := m.Run()
	if leakCheck != nil {
		if err := leakCheck(); err != nil {
			fmt.Fprintln(os.Stderr, "LEAK CHECK FAILED:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// InHostNetNS reports whether the test runs in the throwaway host namespace
// HostNetNSMain made.
func InHostNetNS() bool { return os.Getenv(inHostNSEnv) == "1" }

// RequireHostNetNS gates a test on root and on running inside the throwaway
// host namespace, so it can never change the real host's network.
func RequireHostNetNS(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	Require(t, InHostNetNS(), "needs the package's TestMain to be testutil.HostNetNSMain")
}

// NewNetNS creates a throwaway network namespace with lo up, removed at the
// end of the test.
func NewNetNS(t testing.TB) *netns.NS {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	ns, err := netns.Create(dir, "ns")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.Remove(ns.Path()); err != nil {
			t.Error(err)
		}
	})
	if err := netns.LoopbackUp(ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

// Internet is a peer namespace standing in for the outside world: a router
// reached from the test host through the uplink "up0" (host 198.51.100.1/24,
// peer 198.51.100.2/24, documentation addresses), with any number of peer
// "hosts" as extra addresses on its loopback. The host's default route
// points at it, so traffic to the peers takes the path real egress takes.
type Internet struct {
	NS       *netns.NS
	HostAddr netip.Addr // the host's own uplink address
	PeerAddr netip.Addr // the router's address on the uplink
}

// UplinkName is the host side of the link to the Internet namespace.
const UplinkName = "up0"

// NewInternet builds the Internet namespace with the given peer addresses
// (IPv4 /32s or IPv6 /128s go on its loopback). It must run in the test host
// namespace (RequireHostNetNS).
func NewInternet(t testing.TB, peers ...netip.Addr) *Internet {
	t.Helper()
	RequireHostNetNS(t)
	inet := &Internet{NS: NewNetNS(t), HostAddr: netip.MustParseAddr("198.51.100.1"), PeerAddr: netip.MustParseAddr("198.51.100.2")}
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	hh, err := host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	ph, err := inet.NS.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	la := netlink.NewLinkAttrs()
	la.Name = UplinkName
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(inet.NS.Fd())}); err != nil {
		t.Fatalf("create uplink: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteLink(host, UplinkName); err != nil {
			t.Error(err)
		}
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	up, err := hh.LinkByName(UplinkName)
	must(err)
	must(hh.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: inet.HostAddr.AsSlice(), Mask: net.CIDRMask(24, 32)}}))
	must(hh.LinkSetUp(up))
	must(hh.RouteReplace(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: inet.PeerAddr.AsSlice()}))
	pe, err := ph.LinkByName("eth0")
	must(err)
	must(ph.AddrAdd(pe, &netlink.Addr{IPNet: &net.IPNet{IP: inet.PeerAddr.AsSlice(), Mask: net.CIDRMask(24, 32)}}))
	must(ph.LinkSetUp(pe))
	must(netns.WaitUp(host, UplinkName, 5*time.Second))
	must(netns.WaitUp(inet.NS, "eth0", 5*time.Second))
	lo, err := ph.LinkByName("lo")
	must(err)
	for _, a := range peers {
		// No duplicate address detection: an IPv6 address must be usable at once.
		must(ph.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}, Flags: unix.IFA_F_NODAD}))
	}
	return inet
}

// Serve starts TCP and UDP listeners at addr:port inside ns. The TCP server
// writes "tcp <addr:port>\n" to each connection and closes it; the UDP
// server answers each datagram with "udp <addr:port>". They stop at the end
// of the test.
func Serve(t testing.TB, ns *netns.NS, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		if ln, err = net.Listen("tcp", addr.String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	})
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		t.Fatalf("listen on %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "tcp %s\n", addr)
			c.Close()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_ = n
			pc.WriteTo([]byte("udp "+addr.String()), from)
		}
	}()
	t.Cleanup(func() { ln.Close(); pc.Close(); wg.Wait() })
}

// Probe is a client that sends traffic from inside a namespace, as the
// sandbox's workload would. Every attempt is bounded by Timeout.
type Probe struct {
	NS      *netns.NS
	Timeout time.Duration
	// Source, when valid, binds the client to this source address (to
	// try spoofing an address the sandbox does not own).
	Source netip.Addr
}

func (p *Probe) timeout() time.Duration {
	if p.Timeout == 0 {
		return 700 * time.Millisecond
	}
	return p.Timeout
}

// TCP connects to addr and returns the greeting a Serve listener sends.
func (p *Probe) TCP(addr netip.AddrPort) (string, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		d := net.Dialer{Timeout: p.timeout()}
		if p.Source.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: p.Source.AsSlice()}
		}
		var err error
		c, err = d.Dial("tcp", addr.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(p.timeout()))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// UDP sends one datagram to addr and returns the answer.
func (p *Probe) UDP(addr netip.AddrPort) (string, error) {
	var c net.PacketConn
	err := p.NS.Do(func() error {
		src := ":0"
		if p.Source.IsValid() {
			src = netip.AddrPortFrom(p.Source, 0).String()
		}
		var err error
		c, err = net.ListenPacket("udp", src)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(p.timeout()))
	if _, err := c.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(addr)); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// Ping sends one ICMP echo request to addr and waits for the reply.
func (p *Probe) Ping(addr netip.Addr) error {
	var c *icmp.PacketConn
	err := p.NS.Do(func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("ironclaw")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return err
	}
	deadline := time.Now().Add(p.timeout())
	c.SetDeadline(deadline)
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return err
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if from.String() == addr.String() {
			return nil
		}
	}
}

// RunCommand runs name with args inside ns (for host tools like iptables
// and nft) and returns its combined output.
func RunCommand(ctx context.Context, ns *netns.NS, name string, args ...string) (string, error) {
	var out []byte
	err := ns.Do(func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// LeakedLinks lists links in the calling namespace whose name starts with
// prefix.
func LeakedLinks(prefix string) ([]string, error) {
	ls, err := netlink.LinkList()
	// A dump that links made or removed meanwhile interrupted is read again.
	for i := 0; errors.Is(err, netlink.ErrDumpInterrupted) && i < 20; i++ {
		ls, err = netlink.LinkList()
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range ls {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// LeakedMounts lists nsfs mounts (namespace bind mounts) below dir, or
// anywhere if dir is empty, from /proc/self/mountinfo.
func LeakedMounts(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// ... mount-point(4) ... "-" fstype source
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "nsfs" {
				mp := fields[4]
				if dir == "" || strings.HasPrefix(mp, filepath.Clean(dir)+"/") {
					out = append(out, mp)
				}
			}
		}
	}
	return out, sc.Err()
}
