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
	e.fillPool(t, 0) // drains the pool at the end
	// addSlot prepares one more free slot with cfg's Prepare.
	addSlot := func(cfg Config) {
		t.Helper()
		st, err := Pool(e.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if made, err := Fill(t.Context(), cfg, st.Free+1); err != nil || made != 1 {
			t.Fatalf("fill: made %d, %v", made, err)
		}
	}
	// onlySlotFor returns the one free slot prepared for p.
	onlySlotFor := func() preparedSlot {
		t.Helper()
		slots := freeSlotsFor(t, e.cfg, forP)
		if len(slots) != 1 {
			t.Fatalf("%d free slots prepared for %q, want 1", len(slots), forP)
		}
		return slots[0]
	}
	// claim claims a slot for pol and requires it to be s.
	claim := func(id string, pol firewall.Policy, s preparedSlot) *Net {
		t.Helper()
		dir, key := e.sandboxDir(t, id)
		n, err := Claim(t.Context(), e.cfg, dir, key, pol)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() }) // after a failure; Close is idempotent
		if n.slot.dir != s.dir {
			t.Fatalf("claim %s took slot %s, not %s", id, n.slot.dir, s.dir)
		}
		return n
	}
	// verifyClose verifies n's rules in the kernel and closes it.
	verifyClose := func(n *Net) {
		t.Helper()
		if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
			t.Fatal(err, rep.Err)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	hc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}

	// A slot prepared for p, claimed for q: q's rules, not p's.
	addSlot(prep)
	s := onlySlotFor()
	if tgt, err := s.rec.target(); err != nil || !slices.Equal(tgt.Policy.Rules(), p.Rules()) {
		t.Fatalf("prepared slot's record: %v %v", tgt, err)
	}
	before := generation(t, s.ns)
	n := claim("other-rules", q, s)
	if generation(t, s.ns) == before {
		t.Fatal("claim for other rules made no commit in the slot's namespace")
	}
	runProbes(t, "prepared for p, claimed for q", &testutil.Probe{NS: n.ns}, []probe{
		tcp("q's port", peerA, 9090, true),
		tcp("p's port", peerA, 8080, false),
		tcp("other host", peerB, 9090, false),
	})
	verifyClose(n)

	// Slots with no rules and one for p, at least one of the others
	// before it in the directory (the order claims scan): a claim for p
	// takes the one for p and commits nothing.
	// Slot names are random: a slot for p that sorts first is set aside
	// (marked used, for Maintain) and another one prepared; with three
	// plain slots each one sorts first with a chance of one in four.
	for range 3 {
		addSlot(e.cfg)
	}
	plain := freeSlotsFor(t, e.cfg, "")
	for tries := 0; ; tries++ {
		addSlot(prep)
		s = onlySlotFor()
		if slices.ContainsFunc(plain, func(o preparedSlot) bool { return o.dir < s.dir }) {
			break
		}
		if tries == 30 {
			t.Fatal("no slot for p sorts after a slot with no rules")
		}
		if err := writeState(filepath.Join(s.dir, slotState), stateUsed); err != nil {
			t.Fatal(err)
		}
	}
	before = generation(t, s.ns)
	hostBefore, err := firewall.ReadHostPart(hc, s.rec.Names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	n = claim("same-rules", p, s)
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
	verifyClose(n)

	// A slot for p whose host lost its allow element behind the pool's
	// back: the claim's check of the host elements finds it, and the
	// rules are applied again (p's port would be dropped on the host
	// otherwise).
	addSlot(prep)
	s = onlySlotFor()
	cur, err := firewall.ReadHostPart(hc, s.rec.Names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	fewer := firewall.HostPart{Iface: cur.Iface, Version: cur.Version}
	for _, el := range cur.Elements {
		if el.Set != firewall.SetAllowPublicPortsA && el.Set != firewall.SetAllowPublicPortsB {
			fewer.Elements = append(fewer.Elements, el)
		}
	}
	if len(fewer.Elements) != len(cur.Elements)-1 {
		t.Fatalf("the slot for p has not one public allow element on the host: %v", cur.Elements)
	}
	if err := firewall.ApplyHostChanges(hc, &cur, &fewer); err != nil {
		t.Fatal(err)
	}
	n = claim("host-tampered", p, s)
	runProbes(t, "host element removed, claimed for p", &testutil.Probe{NS: n.ns}, []probe{
		tcp("p's port", peerA, 8080, true),
	})
	verifyClose(n)

	// A slot for p whose own table lets more out than p: the claim's
	// reading of that table finds it and applies p again.
	addSlot(prep)
	s = onlySlotFor()
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
	if err := firewall.VerifySandbox(sc, nil, &prepared); err == nil {
		t.Fatal("the widened table still verifies as p's")
	}
	before = generation(t, s.ns)
	n = claim("sandbox-tampered", p, s)
	if generation(t, s.ns) == before {
		t.Fatal("the claim did not apply the rules again in the slot's namespace")
	}
	if err := firewall.VerifySandbox(sc, nil, &prepared); err != nil {
		t.Fatalf("after the claim the slot's table is not p's: %v", err)
	}
	runProbes(t, "sandbox table widened, claimed for p", &testutil.Probe{NS: n.ns}, []probe{
		tcp("p's port", peerA, 8080, true),
	})
	verifyClose(n)
}
