package network

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestUplinkForwarding proves with real traffic that IronClaw never makes
// the host a router for anything but its sandboxes. A LAN peer (the
// Internet namespace, on the uplink's segment) routes a network that sits
// behind another host interface (like docker0, with forwarding on as
// docker sets it) through the host. While sandboxes need forwarding on the
// uplink, that traffic is dropped and sandbox egress works; after the last
// sandbox network is gone (Close, Reclaim, Drain) the uplink's forwarding
// is off again.
func TestUplinkForwarding(t *testing.T) {
	e := newEnv(t)
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	other := testutil.NewNetNS(t)
	otherAddr := netip.MustParseAddr("192.0.2.2")
	if err := netns.CreateVeth(host, other, netns.Veth{HostName: "dock0", PeerName: "eth0",
		HostAddr: netip.MustParsePrefix("192.0.2.1/24"), PeerAddr: netip.PrefixFrom(otherAddr, 24)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteLink(host, "dock0"); err != nil {
			t.Error(err)
		}
	})
	testutil.Serve(t, other, netip.AddrPortFrom(otherAddr, 8080))
	addRoute(t, e.inet.NS, netip.MustParsePrefix("192.0.2.0/24"), e.inet.HostAddr)
	lan := &testutil.Probe{NS: e.inet.NS}
	lanProbe := func(pass bool) []probe { return []probe{tcp("LAN to the network behind dock0", otherAddr, 8080, pass)} }
	up := testutil.UplinkName
	forwarding := func() string {
		t.Helper()
		v, err := netns.Forwarding(host, up)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	hc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	guarded := func() []string {
		t.Helper()
		if err := firewall.EnsureHostBase(hc, nil); err != nil {
			t.Fatal(err)
		}
		g, err := firewall.ReadUplinks(hc)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	setForwarding := func(v string) {
		t.Helper()
		if err := netns.SetForwarding(host, up, v); err != nil {
			t.Fatal(err)
		}
	}
	recorded := func() bool {
		_, err := os.Stat(filepath.Join(e.cfg.Root, "net", fwdRecordFile))
		return err == nil
	}
	egress := func(n *Net) {
		t.Helper()
		runProbes(t, "sandbox egress", &testutil.Probe{NS: n.ns}, []probe{tcp("allowed", peerA, 8080, true)})
	}

	// Control: the path works when the host routes on its uplink, so a
	// block below is the guard's doing, and fails when it does not.
	setForwarding("1")
	runProbes(t, "host routes (admin's choice)", lan, lanProbe(true))
	// IronClaw leaves a host that was a router already alone.
	a := e.setup(t, "fwd-admin", "203.0.113.10:8080/tcp")
	egress(a)
	if g := guarded(); len(g) != 0 || recorded() {
		t.Fatalf("IronClaw took over an uplink that already forwarded: guarded %v, recorded %v", g, recorded())
	}
	runProbes(t, "admin's router, with a sandbox", lan, lanProbe(true))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if v := forwarding(); v != "1" {
		t.Fatalf("IronClaw turned off forwarding it did not turn on: %s", v)
	}
	setForwarding("0")
	runProbes(t, "host does not route", lan, lanProbe(false))

	// Forwarding on because of sandboxes: guarded.
	b := e.setup(t, "fwd-b", "203.0.113.10:8080/tcp")
	c := e.setup(t, "fwd-c", "203.0.113.10:8080/tcp")
	if v, g := forwarding(), guarded(); v != "1" || !slices.Equal(g, []string{up}) || !recorded() {
		t.Errorf("with sandboxes: forwarding %s, guarded %v, recorded %v; want 1, [%s], true", v, g, recorded(), up)
	}
	egress(b)
	runProbes(t, "sandboxes up", lan, lanProbe(false))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if v := forwarding(); v != "1" {
		t.Fatal("forwarding went off while a sandbox still needs it")
	}
	egress(c)
	runProbes(t, "one sandbox left", lan, lanProbe(false))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if v, g := forwarding(), guarded(); v != "0" || len(g) != 0 || recorded() {
		t.Errorf("after the last sandbox: forwarding %s, guarded %v, recorded %v; want 0, [], false", v, g, recorded())
	}

	// A sandbox whose owner died: Reclaim restores.
	dir, key := e.sandboxDir(t, "fwd-dead")
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	d, err := Setup(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	d.closeConns(false)
	d.ns.Close()
	if err := Reclaim(dir); err != nil {
		t.Fatal(err)
	}
	if v, g := forwarding(), guarded(); v != "0" || len(g) != 0 {
		t.Fatalf("after Reclaim: forwarding %s, guarded %v", v, g)
	}

	// Pool slots are sandbox networks too; Drain restores.
	if _, err := Fill(t.Context(), e.cfg, 1); err != nil {
		t.Fatal(err)
	}
	if v, g := forwarding(), guarded(); v != "1" || len(g) != 1 {
		t.Fatalf("with a pool slot: forwarding %s, guarded %v", v, g)
	}
	runProbes(t, "pool slot", lan, lanProbe(false))
	if err := Drain(t.Context(), e.cfg); err != nil {
		t.Fatal(err)
	}
	if v, g := forwarding(), guarded(); v != "0" || len(g) != 0 || recorded() {
		t.Fatalf("after Drain: forwarding %s, guarded %v, recorded %v", v, g, recorded())
	}
}
