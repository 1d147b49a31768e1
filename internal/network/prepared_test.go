package network

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// preparedSlot is a free slot of the pool as the tests see it from outside:
// its directory, record and namespace.
type preparedSlot struct {
	dir string
	rec *record
	ns  *netns.NS
}

// freeSlotsFor returns the free slots whose "for" file says for.
func freeSlotsFor(t *testing.T, cfg Config, forRules string) []preparedSlot {
	t.Helper()
	var out []preparedSlot
	for name, st := range slotStates(t, cfg) {
		dir := filepath.Join(cfg.Root, "net", "slots", name)
		b, err := os.ReadFile(filepath.Join(dir, slotFor))
		if st != stateFree || err != nil || string(b) != forRules {
			continue
		}
		rec, err := readRecord(dir, RecordFile)
		if err != nil || rec == nil {
			t.Fatalf("slot %s: record %v %v", name, rec, err)
		}
		ns, err := netns.Open(rec.netnsPath())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Close() })
		out = append(out, preparedSlot{dir, rec, ns})
	}
	return out
}

// generation reads the ruleset generation of the namespace ns.
func generation(t *testing.T, ns *netns.NS) uint32 {
	t.Helper()
	g, err := firewall.NewGenReader(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	id, err := g.Generation()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func policyOf(t *testing.T, rules ...string) firewall.Policy {
	t.Helper()
	p, err := firewall.ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPreparedSlot: a slot prepared for a policy (Config.Prepare) holds
// that policy's rules; a claim for the same policy takes it before the
// slots prepared otherwise and makes no commit (the slot namespace's
// ruleset generation does not move, and the host keeps the link's
// elements in the same generation), and the rules it verified are proven
// with traffic. Claimed for other rules, a prepared slot enforces those
// and not the prepared ones. Rules changed behind the pool's back are
// found by the claim's verification and applied again.
func TestPreparedSlot(t *testing.T) {
	e := newEnv(t)
	p := policyOf(t, "203.0.113.10:8080/tcp")
	q := policyOf(t, "203.0.113.10:9090/tcp")
	forP := preparedFor(p)
	if forP == "" || preparedFor(policyOf(t, "203.0.113.10:8080/tcp", "allowed.test")) != "" || preparedFor(firewall.Policy{}) != "" {
		t.Fatal("preparedFor: only address rules are prepared")
	}
	prep := e.cfg
	prep.Prepare = p
	fill := func(cfg Config, n int) {
		t.Helper()
		if _, err := Fill(t.Context(), cfg, n); err != nil {
			t.Fatal(err)
		}
	}
	e.fillPool(t, 0) // drains the pool at the end
	hc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}

	// A slot prepared for p, claimed for q: q's rules, not p's.
	fill(prep, 1)
	slots := freeSlotsFor(t, e.cfg, forP)
	if len(slots) != 1 {
		t.Fatalf("%d slots prepared for %q, want 1", len(slots), forP)
	}
	if tgt, err := slots[0].rec.target(); err != nil || !slices.Equal(tgt.Policy.Rules(), p.Rules()) {
		t.Fatalf("prepared slot's record: %v %v", tgt, err)
	}
	before := generation(t, slots[0].ns)
	dir, key := e.sandboxDir(t, "other-rules")
	n, err := Claim(t.Context(), e.cfg, dir, key, q)
	if err != nil {
		t.Fatal(err)
	}
	if n.slot.dir != slots[0].dir {
		t.Fatal("claim did not take the only free slot")
	}
	if generation(t, slots[0].ns) == before {
		t.Fatal("claim for other rules made no commit in the slot's namespace")
	}
	runProbes(t, "prepared for p, claimed for q", &testutil.Probe{NS: n.ns}, []probe{
		tcp("q's port", peerA, 9090, true),
		tcp("p's port", peerA, 8080, false),
		tcp("other host", peerB, 9090, false),
	})
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatal(err, rep.Err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	// Three slots with no rules and one for p: a claim for p takes the
	// one for p and commits nothing.
	fill(e.cfg, 3)
	fill(prep, 4)
	slots = freeSlotsFor(t, e.cfg, forP)
	if len(slots) != 1 || len(freeSlotsFor(t, e.cfg, "")) != 3 {
		t.Fatalf("%d slots for p, want 1 (and 3 with no rules)", len(slots))
	}
	s := slots[0]
	before = generation(t, s.ns)
	hostBefore, err := firewall.ReadHostPart(hc, s.rec.Names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	dir, key = e.sandboxDir(t, "same-rules")
	n, err = Claim(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	if n.slot.dir != s.dir {
		t.Fatal("claim for p did not take the slot prepared for p")
	}
	if after := generation(t, s.ns); after != before {
		t.Fatalf("claim of a slot prepared for its rules committed in the slot's namespace (generation %d -> %d)", before, after)
	}
	hostAfter, err := firewall.ReadHostPart(hc, s.rec.Names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if hostAfter.Version != hostBefore.Version || !reflect.DeepEqual(hostAfter.Elements, hostBefore.Elements) {
		t.Fatalf("claim of a slot prepared for its rules changed the host's elements:\n%v\n%v", hostBefore, hostAfter)
	}
	runProbes(t, "prepared for p, claimed for p", &testutil.Probe{NS: n.ns}, []probe{
		tcp("p's port", peerA, 8080, true),
		tcp("q's port", peerA, 9090, false),
		tcp("other host", peerB, 8080, false),
		tcp("metadata", peerMeta, 8080, false),
	})
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatal(err, rep.Err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	// A slot for p whose rules were changed behind the pool's back: a
	// wider allow set in its namespace and a missing allow element on
	// the host. The claim's verification finds both and applies p again.
	fill(prep, 4)
	slots = freeSlotsFor(t, e.cfg, forP)
	if len(slots) != 1 {
		t.Fatalf("%d slots for p, want 1", len(slots))
	}
	s = slots[0]
	tgt, err := s.rec.target()
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := firewall.BuildSandbox(tgt)
	if err != nil {
		t.Fatal(err)
	}
	wide := *tgt
	wide.Policy = policyOf(t, "203.0.113.10:8080/tcp", "203.0.113.20:8080/tcp")
	wider, err := firewall.BuildSandbox(&wide)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := nftables.New(nftables.WithNetNSFd(s.ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := firewall.ApplySandboxChanges(sc, &prepared, &wider); err != nil {
		t.Fatal(err)
	}
	cur, err := firewall.ReadHostPart(hc, s.rec.Names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	fewer := firewall.HostPart{Iface: cur.Iface, Version: cur.Version}
	dropped := 0
	for _, el := range cur.Elements {
		if dropped == 0 && el.Set == firewall.SetAllowPublicPortsA || dropped == 0 && el.Set == firewall.SetAllowPublicPortsB {
			dropped++
			continue
		}
		fewer.Elements = append(fewer.Elements, el)
	}
	if dropped != 1 {
		t.Fatalf("the prepared slot has no public allow element on the host: %v", cur.Elements)
	}
	if err := firewall.ApplyHostChanges(hc, &cur, &fewer); err != nil {
		t.Fatal(err)
	}
	before = generation(t, s.ns)
	dir, key = e.sandboxDir(t, "tampered")
	n, err = Claim(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	if n.slot.dir != s.dir {
		t.Fatal("claim for p did not take the slot prepared for p")
	}
	if generation(t, s.ns) == before {
		t.Fatal("the claim did not apply the rules again in the slot's namespace")
	}
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatal(err, rep.Err)
	}
	runProbes(t, "tampered slot, claimed for p", &testutil.Probe{NS: n.ns}, []probe{
		tcp("p's port", peerA, 8080, true),
		tcp("the host that was let in behind the pool's back", peerB, 8080, false),
	})
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
}
