package network

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// cutFlows deletes the tracked connections of the sandbox that t no longer
// allows, in the sandbox's namespace and on the host, so that "established"
// cannot keep a connection alive past a policy update.
func cutFlows(ns *netns.NS, t *firewall.Target) error {
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	// Each dump walks the kernel's whole conntrack hash table (it is
	// shared by all namespaces), so the two run side by side.
	errc := make(chan error, 1)
	go func() { errc <- cutFlowsIn(ns, t) }()
	herr := cutFlowsIn(host, t)
	return errors.Join(<-errc, herr)
}

func cutFlowsIn(ns *netns.NS, t *firewall.Target) error {
	c, err := conntrack.Dial(&netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		return fmt.Errorf("conntrack in %s: %w", ns.Path(), err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return fmt.Errorf("conntrack dump in %s: %w", ns.Path(), err)
	}
	var errs []error
	for _, f := range flows {
		o := f.TupleOrig
		// A micro-VM guest's flows carry its own address in the
		// namespace (they are masqueraded on the way out).
		if o.IP.SourceAddress != t.SandboxAddr && (t.Guest == nil || o.IP.SourceAddress != t.Guest.Addr) {
			continue
		}
		if flowAllowed(t, o.IP.DestinationAddress, o.Proto.Protocol, o.Proto.DestinationPort) {
			continue
		}
		if err := c.Delete(f); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("conntrack delete in %s: %w", ns.Path(), err))
		}
	}
	return errors.Join(errs...)
}

// flowAllowed reports whether a new flow with this original destination
// would pass t: a service on the host side, or the forward path.
func flowAllowed(t *firewall.Target, dst netip.Addr, proto uint8, port uint16) bool {
	if dst == t.HostAddr {
		s := t.Services
		switch {
		case port == 53 && (proto == unix.IPPROTO_UDP || proto == unix.IPPROTO_TCP):
			return s.DNS != 0
		case port == 80 && proto == unix.IPPROTO_TCP:
			return s.HTTP != 0
		case port == 443 && proto == unix.IPPROTO_TCP:
			return s.HTTPS != 0
		}
		return false
	}
	if proto == unix.IPPROTO_ICMP {
		port = 0
	}
	return t.Allows(dst, proto, port)
}
