package network

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
)

// serveEcho runs a line echo server at addr inside ns that keeps
// connections open.
func serveEcho(t *testing.T, ns *netns.NS, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(c, c); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(700 * time.Millisecond))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != msg {
		return fmt.Errorf("echo: got %q", line)
	}
	return nil
}

// TestUpdateCutsConnections opens long-lived connections, narrows the
// policy, and checks that the connection no longer allowed is cut while
// the one still allowed carries on.
func TestUpdateCutsConnections(t *testing.T) {
	e := newEnv(t)
	serveEcho(t, e.inet.NS, netip.AddrPortFrom(peerA, 7000))
	serveEcho(t, e.inet.NS, netip.AddrPortFrom(peerB, 7000))
	n := e.setup(t, "update", "203.0.113.0/24:7000/tcp")
	ca, err := dialIn(n.ns, "tcp", netip.AddrPortFrom(peerA, 7000).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := dialIn(n.ns, "tcp", netip.AddrPortFrom(peerB, 7000).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	for _, c := range []net.Conn{ca, cb} {
		if err := echo(c, "before"); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := firewall.ParsePolicy([]string{"203.0.113.20:7000/tcp"})
	if err := n.Update(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if err := echo(cb, "after"); err != nil {
		t.Errorf("connection to %v, still allowed, was cut: %v", peerB, err)
	}
	if err := echo(ca, "after"); err == nil {
		t.Errorf("connection to %v, no longer allowed, still works after the update", peerA)
	}
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatalf("verify after update: %v %v", err, rep.Err)
	}
}

// TestUpdateUnused gives a network that carried no traffic another policy
// the way a claimed warm pool member gets its user's: the new rules are in
// force and verify at once, the old ones let nothing through, and a later
// Update (which finds the superseded host elements that UpdateUnused left)
// still applies and verifies. Leaks are the env's check.
func TestUpdateUnused(t *testing.T) {
	e := newEnv(t)
	serveEcho(t, e.inet.NS, netip.AddrPortFrom(peerA, 7000))
	serveEcho(t, e.inet.NS, netip.AddrPortFrom(peerB, 7000))
	n := e.setup(t, "unused", "203.0.113.10:7000/tcp")
	hc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	reach := func(peer netip.Addr) bool {
		c, err := dialIn(n.ns, "tcp", netip.AddrPortFrom(peer, 7000).String(), 500*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		return echo(c, "hello") == nil
	}
	for _, step := range []struct {
		unused     bool
		rule       string
		open, shut netip.Addr
	}{
		{true, "203.0.113.20:7000/tcp", peerB, peerA},
		{false, "203.0.113.10:7000/tcp", peerA, peerB},
		{true, "203.0.113.20:7000/tcp", peerB, peerA},
	} {
		p, err := firewall.ParsePolicy([]string{step.rule})
		if err != nil {
			t.Fatal(err)
		}
		update := n.Update
		if step.unused {
			update = n.UpdateUnused
		}
		if err := update(t.Context(), p); err != nil {
			t.Fatalf("%s (unused %v): %v", step.rule, step.unused, err)
		}
		if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
			t.Fatalf("%s: verify: %v %v", step.rule, err, rep.Err)
		}
		if !reach(step.open) || reach(step.shut) {
			t.Errorf("%s (unused %v): %v reachable %v, %v reachable %v", step.rule, step.unused,
				step.open, reach(step.open), step.shut, reach(step.shut))
		}
		// UpdateUnused leaves the superseded generation's host
		// elements (they match nothing); Update prunes them after.
		n.prunes.Wait()
		hp, err := firewall.ReadHostPart(hc, n.rec.Names.HostIf)
		if err != nil {
			t.Fatal(err)
		}
		if left := len(hp.Superseded()); (left > 0) != step.unused {
			t.Errorf("%s (unused %v): %d superseded host elements left", step.rule, step.unused, left)
		}
	}
}

// TestReconcileStates replays a table of desired policies in random order
// on one live sandbox (and a neighbour that must stay untouched) and checks
// after each step that the kernel holds exactly the ruleset built for it.
func TestReconcileStates(t *testing.T) {
	e := newEnv(t)
	n := e.setup(t, "reconcile", "203.0.113.10")
	other := e.setup(t, "neighbour", "203.0.113.20:9090/udp")
	states := [][]string{
		{"203.0.113.10"},
		{"203.0.113.0/24:443/tcp", "203.0.113.7:1000-2000/udp"},
		{"allowed.test"},
		{"allowed.test:443", "*.wild.test", "10.1.0.0/16:80"},
		{"0.0.0.0/0"},
		{"169.254.169.254/32:80/tcp", "198.51.100.0/24"},
		{"203.0.113.20:9090/udp"},
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	order := append(r.Perm(len(states)), r.Perm(len(states))...)
	hc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	for step, i := range order {
		p, err := firewall.ParsePolicy(states[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Update(t.Context(), p); err != nil {
			t.Fatalf("step %d (state %d %v): %v", step, i, states[i], err)
		}
		rep, err := n.Verify(t.Context())
		if err != nil || rep.Err != nil {
			t.Fatalf("step %d (state %d %v): verify: %v %v", step, i, states[i], err, rep.Err)
		}
		want, _ := firewall.BuildSandbox(n.tgt)
		if got := comments(rep.Sandbox, "output"); got != comments(want.Chains, "output") {
			t.Fatalf("step %d: live output chain\n%s\nwant\n%s", step, got, comments(want.Chains, "output"))
		}
		if got, w := fmt.Sprint(rep.SandboxElements), fmt.Sprint(want.Elements); got != w {
			t.Fatalf("step %d: live sandbox set elements\n%s\nwant\n%s", step, got, w)
		}
		if (len(p.Domains) > 0) != (n.tgt.Services.HTTPS != 0) {
			t.Fatalf("step %d: egress services %+v for policy %v", step, n.tgt.Services, states[i])
		}
		if rep, err := other.Verify(t.Context()); err != nil || rep.Err != nil {
			t.Fatalf("step %d: neighbour disturbed: %v %v", step, err, rep.Err)
		}
		// The host's base chains are all there, exactly as built: never
		// doubled, never missing.
		chains, err := firewall.ReadTable(hc)
		if err != nil {
			t.Fatalf("step %d: read the host table: %v", step, err)
		}
		if err := sameBaseChains(chains); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
}

// sameBaseChains checks that the chains (a host table read back) are
// exactly the base chains BuildHostBase builds, rule for rule, and no
// other.
func sameBaseChains(chains []firewall.Chain) error {
	var got []string
	for _, c := range chains {
		got = append(got, c.Describe()+"\n"+ruleList(c))
	}
	var want []string
	for _, c := range firewall.BuildHostBase() {
		want = append(want, c.Describe()+"\n"+ruleList(c))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("host base chains\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	return nil
}

func ruleList(c firewall.Chain) string {
	var b strings.Builder
	for _, r := range c.Rules {
		b.WriteString("  " + r.String() + "\n")
	}
	return b.String()
}

func comments(cs []firewall.Chain, name string) string {
	var b strings.Builder
	for _, c := range cs {
		if c.Name == name {
			for _, r := range c.Rules {
				b.WriteString(r.Comment + "\n")
			}
		}
	}
	return b.String()
}
