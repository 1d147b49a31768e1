package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// MaxIfName is the longest interface name the kernel accepts (IFNAMSIZ
// is 16 bytes including the terminating NUL).
const MaxIfName = unix.IFNAMSIZ - 1

// Veth describes a veth pair from a host namespace into a sandbox
// namespace, and the point-to-point subnet on it.
type Veth struct {
	// HostName is the name of the host side (at most MaxIfName bytes).
	HostName string
	// PeerName is the name of the sandbox side, inside the sandbox's
	// namespace (so "eth0" never collides with the host's).
	PeerName string
	// HostAddr and PeerAddr are the addresses of each side with the
	// subnet's length, e.g. 10.200.0.1/30 and 10.200.0.2/30.
	HostAddr, PeerAddr netip.Prefix
}

func (v *Veth) validate() error {
	for _, n := range []string{v.HostName, v.PeerName} {
		if n == "" || len(n) > MaxIfName {
			return fmt.Errorf("veth: interface name %q must be 1 to %d bytes", n, MaxIfName)
		}
	}
	if !v.HostAddr.Addr().Is4() || !v.PeerAddr.Addr().Is4() || v.HostAddr.Masked() != v.PeerAddr.Masked() {
		return fmt.Errorf("veth: addresses %v and %v must be IPv4 in one subnet", v.HostAddr, v.PeerAddr)
	}
	return nil
}

// Handle opens a route netlink handle (links, addresses, routes) inside n.
// It opens no other netlink family: a handle's default set includes an
// nftables socket, whose close waits for the kernel to finish destroying
// the last nftables commit (an RCU grace period) whenever one is pending.
func (n *NS) Handle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(vnetns.NsHandle(n.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.path, err)
	}
	return h, nil
}

// CreateVeth creates the pair v between host and peer, addresses both sides,
// brings them and the peer's loopback up, routes the peer's default route via
// the host side and turns on IPv4 forwarding for the host side. It does not
// clean up on error: the caller deletes v.HostName (deleting one side of a
// veth pair deletes both), which DeleteLink does idempotently.
func CreateVeth(host, peer *NS, v Veth) error {
	if err := v.validate(); err != nil {
		return err
	}
	hh, err := host.Handle()
	if err != nil {
		return err
	}
	defer hh.Close()
	ph, err := peer.Handle()
	if err != nil {
		return err
	}
	defer ph.Close()

	la := netlink.NewLinkAttrs()
	la.Name = v.HostName
	veth := &netlink.Veth{LinkAttrs: la, PeerName: v.PeerName, PeerNamespace: netlink.NsFd(peer.Fd())}
	if err := hh.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", v.HostName, err)
	}
	hl, err := hh.LinkByName(v.HostName)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", v.HostName, err)
	}
	if err := hh.AddrAdd(hl, &netlink.Addr{IPNet: ipnet(v.HostAddr)}); err != nil {
		return fmt.Errorf("address veth %s: %w", v.HostName, err)
	}
	if err := host.Do(func() error { return writeSysctl("net/ipv4/conf/"+v.HostName+"/forwarding", "1") }); err != nil {
		return err
	}
	if err := hh.LinkSetUp(hl); err != nil {
		return fmt.Errorf("bring up veth %s: %w", v.HostName, err)
	}

	lo, err := ph.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", peer.path, err)
	}
	if err := ph.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in %s: %w", peer.path, err)
	}
	pl, err := ph.LinkByName(v.PeerName)
	if err != nil {
		return fmt.Errorf("find veth %s in %s: %w", v.PeerName, peer.path, err)
	}
	if err := ph.AddrAdd(pl, &netlink.Addr{IPNet: ipnet(v.PeerAddr)}); err != nil {
		return fmt.Errorf("address veth %s in %s: %w", v.PeerName, peer.path, err)
	}
	if err := ph.LinkSetUp(pl); err != nil {
		return fmt.Errorf("bring up veth %s in %s: %w", v.PeerName, peer.path, err)
	}
	gw := net.IP(v.HostAddr.Addr().AsSlice())
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw}); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", gw, peer.path, err)
	}
	// The kernel attaches a link's queueing discipline asynchronously
	// (linkwatch) after it comes up; until then every packet sent on it
	// is dropped, so the workload's first SYN would be lost and retried a
	// second later. Wait until both sides report operstate up.
	if err := waitUp(hh, v.HostName, 5*time.Second); err != nil {
		return err
	}
	return waitUp(ph, v.PeerName, 5*time.Second)
}

// WaitUp waits until the link called name in n reports operstate up (its
// queueing discipline attached), for at most timeout.
func WaitUp(n *NS, name string, timeout time.Duration) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	return waitUp(h, name, timeout)
}

func waitUp(h *netlink.Handle, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for delay := 50 * time.Microsecond; ; delay = min(2*delay, 5*time.Millisecond) {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("wait for %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s: still %s after %s", name, l.Attrs().OperState, timeout)
		}
		time.Sleep(delay)
	}
}

// LoopbackUp brings up lo in n (a namespace with no other link).
func LoopbackUp(n *NS) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", n.path, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up lo in %s: %w", n.path, err)
	}
	return nil
}

// SetDown sets the link called name in n administratively down and reads
// it back: a down link neither sends nor receives, and a veth whose one
// side is down passes nothing in either direction (the kernel drops what
// the other side sends to it). Unlike an nftables commit, it leaves no
// transaction for the kernel to destroy after an RCU grace period, which
// the next close of any nftables socket (a process exit included) would
// wait for.
func SetDown(n *NS, name string) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := h.LinkSetDown(l); err != nil {
		return fmt.Errorf("set link %s down: %w", name, err)
	}
	got, err := h.LinkByIndex(l.Attrs().Index)
	if err != nil {
		return fmt.Errorf("read link %s back: %w", name, err)
	}
	if got.Attrs().Name != name || got.Attrs().RawFlags&unix.IFF_UP != 0 {
		return fmt.Errorf("set link %s down: it is still up (flags %v)", name, got.Attrs().Flags)
	}
	return nil
}

// IsDown reports whether the link called name in n is administratively
// down.
func IsDown(n *NS, name string) (bool, error) {
	h, err := n.Handle()
	if err != nil {
		return false, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return false, fmt.Errorf("find link %s: %w", name, err)
	}
	return l.Attrs().RawFlags&unix.IFF_UP == 0, nil
}

// DeleteLink deletes the link called name in n, if it exists.
func DeleteLink(n *NS, name string) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// LinkExists reports whether a link called name exists in n.
func LinkExists(n *NS, name string) (bool, error) {
	h, err := n.Handle()
	if err != nil {
		return false, err
	}
	defer h.Close()
	if _, err := h.LinkByName(name); err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("find link %s: %w", name, err)
	}
	return true, nil
}

// dumpRetries bounds the retries of a netlink dump the kernel
// interrupted.
const dumpRetries = 20

// consistentDump runs dump again while the kernel reports it interrupted
// (NLM_F_DUMP_INTR: the table changed while it was read, as it does when
// a pool maintainer makes or removes links at the same time), and
// returns the first complete result. Only after dumpRetries interrupted
// dumps in a row does it fail.
func consistentDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		out, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
		if i == dumpRetries {
			return nil, fmt.Errorf("%w (%d times in a row)", err, dumpRetries+1)
		}
	}
}

// Addrs returns the IPv4 addresses configured in n.
func Addrs(n *NS) ([]netip.Addr, error) {
	h, err := n.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	as, err := consistentDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses in %s: %w", n.path, err)
	}
	var out []netip.Addr
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			out = append(out, ip)
		}
	}
	return out, nil
}

// Uplinks returns the interfaces that carry an IPv4 default route in n,
// each once.
func Uplinks(n *NS) ([]string, error) {
	h, err := n.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	rs, err := consistentDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
	})
	if err != nil {
		return nil, fmt.Errorf("list default routes in %s: %w", n.path, err)
	}
	var names []string
	for _, r := range rs {
		if r.Dst != nil && !(r.Dst.IP.IsUnspecified() && maskLen(r.Dst) == 0) {
			continue
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		l, err := h.LinkByIndex(idx)
		if err != nil {
			return nil, fmt.Errorf("find uplink %d: %w", idx, err)
		}
		if !slices.Contains(names, l.Attrs().Name) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

// forwardingKey is the sysctl of interface name's IPv4 forwarding switch.
// The kernel decides whether to forward an IPv4 packet by the switch of
// the interface it arrived on.
func forwardingKey(name string) (string, error) {
	if name == "" || len(name) > MaxIfName || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return "", fmt.Errorf("ipv4 forwarding: bad interface name %q", name)
	}
	return "net/ipv4/conf/" + name + "/forwarding", nil
}

// Forwarding returns the IPv4 forwarding switch ("0" or "1") of interface
// name in n. For a missing interface the error wraps os.ErrNotExist.
func Forwarding(n *NS, name string) (string, error) {
	key, err := forwardingKey(name)
	if err != nil {
		return "", err
	}
	var v string
	err = n.Do(func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		if err != nil {
			return fmt.Errorf("sysctl %s: %w", key, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}

// SetForwarding sets the IPv4 forwarding switch of interface name in n to
// value ("0" or "1"). For a missing interface the error wraps
// os.ErrNotExist.
func SetForwarding(n *NS, name, value string) error {
	key, err := forwardingKey(name)
	if err != nil {
		return err
	}
	if value != "0" && value != "1" {
		return fmt.Errorf("ipv4 forwarding of %s: bad value %q", name, value)
	}
	return n.Do(func() error { return writeSysctl(key, value) })
}

func maskLen(n *net.IPNet) int { l, _ := n.Mask.Size(); return l }

// writeSysctl writes a /proc/sys value. Network sysctls resolve against the
// network namespace of the thread that opens the file, so callers run it
// through NS.Do.
func writeSysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
