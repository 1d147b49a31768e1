package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// The benchmarks time every operation and report the median (and ratios
// against a peer measured in the same run) as custom metrics; ns/op is the
// mean. Run them with
//
//	go test -run '^$' -bench . -benchtime 30x ./internal/network/

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func reportMedian(b *testing.B, name string, d []time.Duration) time.Duration {
	m := median(d)
	b.ReportMetric(float64(m.Microseconds()), name+"-median-µs")
	return m
}

// BenchmarkSetupTeardown compares, per sandbox: making and removing a bare
// namespace and veth pair (the kernel's floor), a full Setup and Close
// (namespace, veth, lease, both rulesets verified), and a claim from the
// pool and its release (what a sandbox start pays when a slot is ready):
// Begin (the slot's namespace, which the jail's start waits for), Begin
// and Wait (the policy installed and verified, which the workload waits
// for; the jail overlaps it with init's start) and Close.
func BenchmarkSetupTeardown(b *testing.B) {
	e := newEnv(b)
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	host, err := netns.Current()
	if err != nil {
		b.Fatal(err)
	}
	defer host.Close()
	var rawUp, rawDown, setup, closeT, begin, claim, release []time.Duration
	b.Cleanup(func() { Drain(b.Context(), e.cfg) })
	for i := 0; b.Loop(); i++ {
		// Bare namespace + veth.
		t0 := time.Now()
		ns, err := netns.Create(e.cfg.NetnsDir, "raw")
		if err != nil {
			b.Fatal(err)
		}
		if err := netns.CreateVeth(host, ns, netns.Veth{HostName: "icbenchraw", PeerName: "eth0",
			HostAddr: netip.MustParsePrefix("10.201.0.1/30"), PeerAddr: netip.MustParsePrefix("10.201.0.2/30")}); err != nil {
			b.Fatal(err)
		}
		rawUp = append(rawUp, time.Since(t0))
		t0 = time.Now()
		ns.Close()
		if err := netns.DeleteLink(host, "icbenchraw"); err != nil {
			b.Fatal(err)
		}
		if err := netns.Remove(ns.Path()); err != nil {
			b.Fatal(err)
		}
		rawDown = append(rawDown, time.Since(t0))

		// Full Setup and Close.
		dir, key := e.sandboxDir(b, fmt.Sprintf("bench-%d", i))
		t0 = time.Now()
		n, err := Setup(b.Context(), e.cfg, dir, key, p)
		if err != nil {
			b.Fatal(err)
		}
		setup = append(setup, time.Since(t0))
		t0 = time.Now()
		if err := n.Close(); err != nil {
			b.Fatal(err)
		}
		closeT = append(closeT, time.Since(t0))

		// Pool: prepare off the clock, claim and release on it, destroy
		// off the clock.
		if _, err := Fill(b.Context(), e.cfg, 1); err != nil {
			b.Fatal(err)
		}
		// Begin returns the slot's namespace (what a start waits for);
		// Wait the installed and verified policy (what the workload
		// waits for): Claim is both.
		t0 = time.Now()
		n, err = Begin(b.Context(), e.cfg, dir, key, p)
		if err != nil || n.slot == nil {
			b.Fatal(err, "or no slot")
		}
		begin = append(begin, time.Since(t0))
		if err := n.Wait(b.Context()); err != nil {
			b.Fatal(err)
		}
		claim = append(claim, time.Since(t0))
		t0 = time.Now()
		if err := n.Close(); err != nil {
			b.Fatal(err)
		}
		release = append(release, time.Since(t0))
		if _, err := Maintain(b.Context(), e.cfg); err != nil {
			b.Fatal(err)
		}
	}
	ru, rd := reportMedian(b, "raw-netns-veth-up", rawUp), reportMedian(b, "raw-netns-veth-down", rawDown)
	su, sd := reportMedian(b, "setup", setup), reportMedian(b, "close", closeT)
	bu := reportMedian(b, "pool-begin", begin)
	cu, cd := reportMedian(b, "pool-claim", claim), reportMedian(b, "pool-release", release)
	b.ReportMetric(float64(bu)/float64(ru), "begin/raw-up")
	b.ReportMetric(float64(su)/float64(ru), "setup/raw-up")
	b.ReportMetric(float64(cu)/float64(ru), "claim/raw-up")
	b.ReportMetric(float64(cd)/float64(rd), "release/raw-down")
	_ = sd
}

// BenchmarkRuleInstall measures a policy change on a live sandbox, split
// into: installing both rulesets (one transaction each, the sandbox's and
// the host's side by side, as Setup and Claim do), reading both back and
// verifying them (the host's elements by key, as Setup, Claim and Update
// do; and, for comparison, by dumping the shared sets), checking the host
// table's base chains and sets (EnsureHostBase, which every apply runs
// first), and a whole Update (install, verify, record, conntrack
// sweep), and the background deletion of the superseded generation's host
// elements that follows an update. The peer is an empty nftables transaction: the
// netlink round-trip floor. The host table holds the elements of 1 and then
// of 500 sandboxes.
func BenchmarkRuleInstall(b *testing.B) {
	for _, others := range []int{0, 499} {
		b.Run(fmt.Sprintf("sandboxes=%d", others+1), func(b *testing.B) { benchRuleInstall(b, others) })
	}
}

func benchRuleInstall(b *testing.B, others int) {
	e := newEnv(b)
	n := e.setup(b, "install", "203.0.113.10:8080/tcp")
	if others > 0 {
		hc, _ := nftables.New()
		for _, p := range otherSandboxes(b, e, n, others) {
			if err := firewall.ApplyHostChanges(hc, &firewall.HostPart{Iface: p.Iface}, &p); err != nil {
				b.Fatal(err)
			}
		}
	}
	pols := make([]firewall.Policy, 3)
	pols[0], _ = firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp", "203.0.113.0/24:443/tcp", "198.18.0.0/15:1000-2000/udp"})
	pols[1], _ = firewall.ParsePolicy([]string{"203.0.113.20/32", "192.0.2.0/24:53/udp"})
	pols[2], _ = firewall.ParsePolicy([]string{"198.51.100.0/24:443/tcp"})
	sc, hc, err := n.conns()
	if err != nil {
		b.Fatal(err)
	}
	sg, err := n.sandboxGen()
	if err != nil {
		b.Fatal(err)
	}
	hg, err := n.hostGen()
	if err != nil {
		b.Fatal(err)
	}
	var install, hostOnly, sandboxOnly, verifyT, verifyDump, ensure, update, prune, floor []time.Duration
	hr, err := firewall.NewElementReader(0)
	if err != nil {
		b.Fatal(err)
	}
	defer hr.Close()
	prevInner, prevPart := n.prevInner, n.prevPart
	for i := 0; b.Loop(); i++ {
		t := *n.tgt
		t.Policy = pols[i%2]
		inner, _ := firewall.BuildSandbox(&t)
		n.ver++
		part, _ := firewall.BuildHost(&t, n.ver)
		t0 := time.Now()
		errc := make(chan error, 1)
		var sd time.Duration
		go func() {
			err := firewall.ApplySandboxChanges(sc, prevInner, &inner)
			sd = time.Since(t0)
			errc <- err
		}()
		held, herr := firewall.ApplyHostHeld(hc, hg, prevPart, &part)
		hostOnly = append(hostOnly, time.Since(t0))
		if err := errors.Join(<-errc, herr); err != nil {
			b.Fatal(err)
		}
		install = append(install, time.Since(t0))
		sandboxOnly = append(sandboxOnly, sd)
		t0 = time.Now()
		go func() { errc <- firewall.VerifySandbox(sc, sg, &inner) }()
		herr = firewall.VerifyHostElements(hr, &part)
		if err := errors.Join(<-errc, herr); err != nil {
			b.Fatal(err)
		}
		verifyT = append(verifyT, time.Since(t0))
		// The whole verification of the host side before this change:
		// every shared set dumped.
		t0 = time.Now()
		if err := firewall.VerifyHostPart(hc, hg, &part); err != nil {
			b.Fatal(err)
		}
		verifyDump = append(verifyDump, time.Since(t0))
		t0 = time.Now()
		if err := firewall.EnsureHostBase(hc, hg); err != nil {
			b.Fatal(err)
		}
		ensure = append(ensure, time.Since(t0))
		// What Update does after its change, off the clock: prune the
		// superseded generation, so that the update below finds the
		// generation it writes empty, as a change that comes after the
		// previous one's prune does.
		if _, err := firewall.PruneHost(hc, part.Iface); err != nil {
			b.Fatal(err)
		}
		held = held.Live()
		n.prevInner, n.prevPart, n.live = &inner, &held, n.ver

		t0 = time.Now()
		if err := n.Update(b.Context(), pols[2]); err != nil {
			b.Fatal(err)
		}
		update = append(update, time.Since(t0))
		// The superseded elements are deleted in the background after
		// an update; wait for that off the clock of the next install.
		t0 = time.Now()
		n.prunes.Wait()
		prune = append(prune, time.Since(t0))
		prevInner, prevPart = n.prevInner, n.prevPart
		c, _ := nftables.New()
		t0 = time.Now()
		c.AddTable(&nftables.Table{Name: "icbenchfloor", Family: nftables.TableFamilyINet})
		if err := c.Flush(); err != nil {
			b.Fatal(err)
		}
		floor = append(floor, time.Since(t0))
	}
	c, _ := nftables.New()
	c.DelTable(&nftables.Table{Name: "icbenchfloor", Family: nftables.TableFamilyINet})
	c.Flush()
	mi := reportMedian(b, "install", install)
	mh := reportMedian(b, "install-host-side", hostOnly)
	reportMedian(b, "install-sandbox-side", sandboxOnly)
	mv := reportMedian(b, "verify", verifyT)
	md := reportMedian(b, "host-verify-by-dump", verifyDump)
	b.ReportMetric(float64(md)/float64(mv), "host-dump/verify")
	reportMedian(b, "ensure-host-base", ensure)
	reportMedian(b, "update-with-conntrack-sweep", update)
	reportMedian(b, "background-prune-after-update", prune)
	mf := reportMedian(b, "empty-txn", floor)
	b.ReportMetric(float64(mi)/float64(mf), "install/empty-txn")
	b.ReportMetric(float64(mh)/float64(mf), "install-host-side/empty-txn")
}

// BenchmarkPerPacket measures a UDP round trip from a sandbox through the
// host's forward path to a peer and back, with the host table holding the
// elements of 1 sandbox and then of 500 (499 more sandboxes' set
// elements), in the same run. A final round with a linear chain of 500
// iifname rules in front (what a design without maps would pay) shows the
// measurement can see growth.
func BenchmarkPerPacket(b *testing.B) {
	e := newEnv(b)
	n := e.setup(b, "packets", "203.0.113.10:9999/udp")
	serveUDPEcho(b, e.inet.NS, netip.AddrPortFrom(peerA, 9999))
	var conn net.Conn
	if err := n.ns.Do(func() error {
		var err error
		conn, err = net.Dial("udp", "203.0.113.10:9999")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	hc, _ := nftables.New()
	const rounds = 2000
	measure := func() time.Duration {
		buf := make([]byte, 64)
		var d []time.Duration
		for i := 0; i < rounds; i++ {
			t0 := time.Now()
			conn.SetDeadline(time.Now().Add(time.Second))
			if _, err := conn.Write(buf[:32]); err != nil {
				b.Fatal(err)
			}
			if _, err := conn.Read(buf); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
		}
		return median(d)
	}
	parts := otherSandboxes(b, e, n, 499)
	var one, many []time.Duration
	for b.Loop() {
		one = append(one, measure())
		for i := range parts {
			if err := firewall.ApplyHostChanges(hc, &firewall.HostPart{Iface: parts[i].Iface}, &parts[i]); err != nil {
				b.Fatal(err)
			}
		}
		many = append(many, measure())
		for i := range parts {
			if err := firewall.ApplyHostChanges(hc, &parts[i], &firewall.HostPart{Iface: parts[i].Iface}); err != nil {
				b.Fatal(err)
			}
		}
	}
	m1, m500 := reportMedian(b, "rtt-1-sandbox", one), reportMedian(b, "rtt-500-sandboxes", many)
	b.ReportMetric(float64(m500)/float64(m1), "ratio-500/1")

	// Control: 500 linear rules in the path.
	t := &nftables.Table{Name: "icbenchlinear", Family: nftables.TableFamilyINet}
	hc.AddTable(t)
	prio := nftables.ChainPriority(-1)
	ch := hc.AddChain(&nftables.Chain{Name: "fwd", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: &prio})
	if err := hc.Flush(); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		hc.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: firewall.IfnameMatchForBench(fmt.Sprintf("iclinear%d", i))})
		if i%100 == 99 { // keep the acknowledgements of one batch within the socket buffer
			if err := hc.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	defer func() { hc.DelTable(t); hc.Flush() }()
	lin := measure()
	b.ReportMetric(float64(lin.Microseconds()), "rtt-500-linear-rules-median-µs")
	b.ReportMetric(float64(lin)/float64(m1), "ratio-linear500/1")
}

// otherSandboxes builds the host parts of count more sandboxes (their set
// elements; their links need not exist for lookups and commits to cost
// what they cost), removed at the end of the benchmark.
func otherSandboxes(b testing.TB, e *testEnv, n *Net, count int) []firewall.HostPart {
	var parts []firewall.HostPart
	for i := 1; i <= count; i++ {
		k := sandbox.KeyOf(fmt.Sprintf("other-%d", i))
		lease := e.cfg.addrPool().At(i + 1000)
		pol, _ := firewall.ParsePolicy([]string{"203.0.113.0/24:443/tcp"})
		part, err := firewall.BuildHost(&firewall.Target{Policy: pol, SandboxAddr: lease.Sandbox.Addr(),
			HostAddr: lease.Host.Addr(), HostIf: NamesOf(k).HostIf, Deny: n.tgt.Deny}, 1)
		if err != nil {
			b.Fatal(err)
		}
		parts = append(parts, part)
	}
	b.Cleanup(func() {
		hc, _ := nftables.New()
		for i := range parts {
			firewall.RemoveHost(hc, parts[i].Iface)
		}
	})
	return parts
}

func serveUDPEcho(b testing.TB, ns *netns.NS, addr netip.AddrPort) {
	var pc net.PacketConn
	if err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	b.Cleanup(func() { pc.Close() })
}
