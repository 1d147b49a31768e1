package network

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
)

// A micro-VM's network (Config.Link = LinkTap) is the jail's, plus a tap
// inside the sandbox's namespace: the VMM runs in the namespace and attaches
// the guest's virtio-net to TapIf. The tap and the guest share a fixed
// link-local /30 (every namespace is its own, so it never collides); the
// namespace routes between the tap and its link to the host, and its
// firewall forwards the guest's packets under the sandbox's policy and
// masquerades them to the sandbox address (firewall.Guest). The host side
// sees the same address and gets the same rules as for a jail.
const (
	// TapIf is the tap device inside the sandbox's namespace.
	TapIf = "tap0"
)

// Addresses of the tap link (RFC 3927 link-local; never routed beyond the
// namespace).
var (
	TapAddr   = netip.MustParsePrefix("169.254.100.1/30") // the namespace's side
	GuestAddr = netip.MustParsePrefix("169.254.100.2/30") // the guest's
)

// GuestLink is what a VMM needs to give its guest the sandbox's network.
type GuestLink struct {
	// Tap is the tap device inside the namespace (Net.Path).
	Tap string
	// Addr is the guest's address with its prefix length, Gateway its
	// default route: the namespace's side of the tap.
	Addr    netip.Prefix
	Gateway netip.Addr
	// DNS is the resolver the guest should use (the sandbox's DNS stub),
	// invalid when the policy has no domain rules.
	DNS netip.Addr
}

// Guest returns the guest's side of a LinkTap network; nil for a veth
// network or one that allows nothing.
func (n *Net) Guest() *GuestLink {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil || n.tgt == nil || n.tgt.Guest == nil {
		return nil
	}
	g := &GuestLink{Tap: TapIf, Addr: GuestAddr, Gateway: TapAddr.Addr()}
	if len(n.tgt.Policy.Domains) > 0 {
		g.DNS = n.tgt.HostAddr
	}
	return g
}

// guestOf is the firewall's view of the guest behind TapIf.
func guestOf() *firewall.Guest {
	return &firewall.Guest{If: TapIf, Addr: GuestAddr.Addr(), Uplink: SandboxIf}
}

// createTap makes TapIf in ns (persistent, so the VMM attaches to it by
// name), addresses it, brings it up and turns on IPv4 forwarding in ns.
// Everything it makes lives in ns and goes with it.
func createTap(ns *netns.NS) error {
	err := ns.Do(func() error {
		// TUNSETIFF makes the device in the calling thread's namespace,
		// which Do has moved into ns.
		tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: TapIf}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("create tap %s: %w", TapIf, err)
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tap in %s: %w", ns.Path(), err)
	}
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(TapIf)
	if err != nil {
		return fmt.Errorf("find tap %s in %s: %w", TapIf, ns.Path(), err)
	}
	ipn := &net.IPNet{IP: TapAddr.Addr().AsSlice(), Mask: net.CIDRMask(TapAddr.Bits(), 32)}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("address tap %s in %s: %w", TapIf, ns.Path(), err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up tap %s in %s: %w", TapIf, ns.Path(), err)
	}
	return nil
}
