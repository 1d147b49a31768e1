package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/vishvananda/netlink"
)

type probe struct {
	name string
	kind string // "tcp", "udp" or "ping"
	dst  netip.AddrPort
	pass bool
}

func tcp(name string, a netip.Addr, port uint16, pass bool) probe {
	return probe{name, "tcp", netip.AddrPortFrom(a, port), pass}
}
func udp(name string, a netip.Addr, port uint16, pass bool) probe {
	return probe{name, "udp", netip.AddrPortFrom(a, port), pass}
}
func ping(name string, a netip.Addr, pass bool) probe {
	return probe{name, "ping", netip.AddrPortFrom(a, 0), pass}
}

// runProbes sends every probe from inside ns (in parallel) and fails the
// test for each whose outcome differs from pass. A passing TCP or UDP probe
// must get the answer of the very server it aimed at.
func runProbes(t *testing.T, phase string, p *testutil.Probe, probes []probe) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]string, len(probes))
	for i, pr := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got string
			var err error
			switch pr.kind {
			case "tcp":
				got, err = p.TCP(pr.dst)
				if err == nil && got != "tcp "+pr.dst.String() && got != fmt.Sprintf("tcp 0.0.0.0:%d", pr.dst.Port()) {
					err = fmt.Errorf("answered by the wrong server: %q", got)
				}
			case "udp":
				got, err = p.UDP(pr.dst)
				if err == nil && got != "udp "+pr.dst.String() {
					err = fmt.Errorf("answered by the wrong server: %q", got)
				}
			case "ping":
				err = p.Ping(pr.dst.Addr())
			}
			switch {
			case pr.pass && err != nil:
				errs[i] = fmt.Sprintf("%s: %s %s %v should pass, got %v", phase, pr.name, pr.kind, pr.dst, err)
			case !pr.pass && err == nil:
				errs[i] = fmt.Sprintf("%s: %s %s %v should be blocked, but it got through", phase, pr.name, pr.kind, pr.dst)
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
}

// TestIsolation proves the policy with real traffic from inside sandbox
// namespaces to peer hosts reached through the host, as real egress goes.
// Every blocked probe is then shown to pass once the firewall is removed,
// so a block can never be an artefact of the test's topology.
func TestIsolation(t *testing.T) {
	e := newEnv(t)
	a := e.setup(t, "sandbox-a", "203.0.113.10:8080/tcp", "203.0.113.20:9090/udp")
	b := e.setup(t, "sandbox-b", "0.0.0.0/0")
	testutil.Serve(t, b.ns, netip.AddrPortFrom(b.Addr(), 8080))
	testutil.Serve(t, a.ns, netip.AddrPortFrom(a.Addr(), 8080))
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	testutil.Serve(t, host, netip.MustParseAddrPort("0.0.0.0:7070"))
	addIPv6(t, host, e.inet.NS, a)

	pa := &testutil.Probe{NS: a.ns}
	blockedForA := []probe{
		tcp("other port", peerA, 9090, false),
		tcp("other host", peerB, 8080, false),
		udp("UDP not allowed", peerA, 8080, false),
		ping("ICMP not allowed", peerA, false),
		tcp("host's uplink address", e.inet.HostAddr, 7070, false),
		tcp("host side of the link", a.Gateway(), 7070, false),
		tcp("metadata address", peerMeta, 8080, false),
		tcp("RFC 1918 peer", peerPriv, 8080, false),
		tcp("other sandbox", b.Addr(), 8080, false),
		tcp("IPv6", peer6, 8080, false),
	}
	allowedForA := []probe{
		tcp("allowed CIDR:port/tcp", peerA, 8080, true),
		udp("allowed CIDR:port/udp", peerB, 9090, true),
	}
	runProbes(t, "policy", pa, append(allowedForA, blockedForA...))

	pb := &testutil.Probe{NS: b.ns}
	runProbes(t, "0.0.0.0/0", pb, []probe{
		tcp("public peer", peerB, 8080, true),
		udp("public peer", peerA, 9090, true),
		ping("public peer", peerA, true),
		tcp("metadata address", peerMeta, 8080, false),
		tcp("RFC 1918 peer", peerPriv, 8080, false),
		tcp("other sandbox", a.Addr(), 8080, false),
		tcp("host's uplink address", e.inet.HostAddr, 7070, false),
	})

	t.Run("spoofing", func(t *testing.T) {
		// The workload cannot add addresses (it has no CAP_NET_ADMIN over
		// its namespace); the test plays one that could.
		spoof := netip.MustParseAddr("10.200.255.254")
		addAddr(t, a.ns, SandboxIf, netip.PrefixFrom(spoof, 16))
		runProbes(t, "spoofed source", &testutil.Probe{NS: a.ns, Source: spoof}, []probe{tcp("allowed dst, spoofed src", peerA, 8080, false), udp("allowed dst, spoofed src", peerB, 9090, false)})
	})

	t.Run("host side alone", func(t *testing.T) {
		// A sandbox that somehow dropped its own table is still held by
		// the host side of its link.
		sc, err := nftables.New(nftables.WithNetNSFd(a.ns.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		if err := firewall.RemoveSandbox(sc); err != nil {
			t.Fatal(err)
		}
		rep, err := a.Verify(t.Context())
		if err != nil || rep.Err == nil {
			t.Fatalf("Verify must report the missing sandbox table, got report error %v, error %v", rep.Err, err)
		}
		runProbes(t, "host side only", pa, append(allowedForA, blockedForA...))
		spoof := netip.MustParseAddr("10.200.255.254")
		runProbes(t, "host side only, spoofed", &testutil.Probe{NS: a.ns, Source: spoof}, []probe{tcp("allowed dst, spoofed src", peerA, 8080, false)})
	})

	t.Run("iptables accept-all", func(t *testing.T) {
		testutil.RequireCommand(t, "iptables")
		for _, args := range [][]string{
			{"-P", "FORWARD", "ACCEPT"}, {"-I", "FORWARD", "-j", "ACCEPT"},
			{"-P", "INPUT", "ACCEPT"}, {"-I", "INPUT", "-j", "ACCEPT"},
			{"-P", "OUTPUT", "ACCEPT"}, {"-I", "OUTPUT", "-j", "ACCEPT"},
		} {
			if out, err := testutil.RunCommand(t.Context(), host, "iptables", args...); err != nil {
				t.Fatal(out, err)
			}
		}
		t.Cleanup(func() {
			// Not t.Context(): it is cancelled before cleanups run, and
			// the command would never start.
			if out, err := testutil.RunCommand(context.Background(), host, "iptables", "-F"); err != nil {
				t.Error(out, err)
			}
		})
		if err := a.Update(t.Context(), a.tgt.Policy); err != nil { // reinstall the table removed above
			t.Fatal(err)
		}
		runProbes(t, "iptables accept-all", pa, append(allowedForA, blockedForA...))
	})

	t.Run("control: no firewall", func(t *testing.T) {
		// Remove both rulesets: every probe must now get through,
		// which shows the blocks above come from the firewall.
		sc, err := nftables.New(nftables.WithNetNSFd(a.ns.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		if err := firewall.RemoveSandbox(sc); err != nil {
			t.Fatal(err)
		}
		hc, _ := nftables.New()
		if err := firewall.RemoveHost(hc, a.tgt.HostIf); err != nil {
			t.Fatal(err)
		}
		// And the uplink guard, which drops replies bound for a link
		// no sandbox chain claims.
		if err := firewall.UnguardUplink(hc, testutil.UplinkName); err != nil {
			t.Fatal(err)
		}
		// Without the NAT the peers need a route back to the pool.
		addRoute(t, e.inet.NS, netip.MustParsePrefix("10.200.0.0/16"), e.inet.HostAddr)
		addRouteDev(t, host, netip.MustParsePrefix("10.200.255.254/32"), a.tgt.HostIf)
		var all []probe
		for _, p := range blockedForA {
			if p.dst.Addr() == b.Addr() {
				continue // b's own table still drops inbound traffic
			}
			p.pass = true
			all = append(all, p)
		}
		runProbes(t, "no firewall", pa, all)
		runProbes(t, "no firewall, spoofed", &testutil.Probe{NS: a.ns, Source: netip.MustParseAddr("10.200.255.254")}, []probe{tcp("spoofed src", peerA, 8080, true)})
	})
}

func addAddr(t *testing.T, ns *netns.NS, ifname string, p netip.Prefix) {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: 0x80 /* IFA_F_NODAD */}); err != nil {
		t.Fatal(err)
	}
}

func addRoute(t *testing.T, ns *netns.NS, dst netip.Prefix, via netip.Addr) {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}, Gw: via.AsSlice()}); err != nil {
		t.Fatal(err)
	}
}

func addRouteDev(t *testing.T, ns *netns.NS, dst netip.Prefix, dev string) {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}, LinkIndex: l.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
}

// addIPv6 gives the host, the Internet and the sandbox a working IPv6
// path (which IronClaw never configures), so the IPv6 block is tested
// against a route that exists.
func addIPv6(t *testing.T, host, inet *netns.NS, n *Net) {
	t.Helper()
	addAddr(t, host, testutil.UplinkName, netip.MustParsePrefix("2001:db8:1::1/64"))
	addAddr(t, inet, "eth0", netip.MustParsePrefix("2001:db8:1::2/64"))
	addAddr(t, host, n.rec.Names.HostIf, netip.MustParsePrefix("2001:db8:2::1/64"))
	addAddr(t, n.ns, SandboxIf, netip.MustParsePrefix("2001:db8:2::2/64"))
	addRoute(t, host, netip.MustParsePrefix("2001:db8:ffff::/64"), netip.MustParseAddr("2001:db8:1::2"))
	addRoute(t, inet, netip.MustParsePrefix("2001:db8:2::/64"), netip.MustParseAddr("2001:db8:1::1"))
	addRoute(t, n.ns, netip.MustParsePrefix("::/0"), netip.MustParseAddr("2001:db8:2::1"))
	// The host's firewall drops the sandbox's neighbour discovery (all
	// IPv6 is dropped), which would leave a FAILED neighbour entry that
	// outlives the firewall in the control phase: pin both neighbours.
	hostMAC := linkMAC(t, host, n.rec.Names.HostIf)
	sbMAC := linkMAC(t, n.ns, SandboxIf)
	addNeigh(t, n.ns, SandboxIf, netip.MustParseAddr("2001:db8:2::1"), hostMAC)
	addNeigh(t, host, n.rec.Names.HostIf, netip.MustParseAddr("2001:db8:2::2"), sbMAC)
	if err := host.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0)
	}); err != nil {
		t.Fatal(err)
	}
}

func linkMAC(t *testing.T, ns *netns.NS, name string) net.HardwareAddr {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr
}

func addNeigh(t *testing.T, ns *netns.NS, dev string, ip netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}); err != nil {
		t.Fatal(err)
	}
}
