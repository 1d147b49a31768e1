package firewall

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func testTarget(t testing.TB, rules ...string) *Target {
	t.Helper()
	p, err := ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	return &Target{
		Policy:      p,
		SandboxAddr: netip.MustParseAddr("10.200.0.2"), HostAddr: netip.MustParseAddr("10.200.0.1"),
		HostIf:   "icabcdefghijklh",
		Deny:     []netip.Prefix{netip.MustParsePrefix("10.200.0.0/16"), netip.MustParsePrefix("198.51.100.1/32")},
		Services: Services{DNS: 5300, HTTP: 8080, HTTPS: 8443},
	}
}

func connIn(t testing.TB, ns *netns.NS) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestApplyVerifyKernel(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	tg := testTarget(t, "203.0.113.0/24:443/tcp", "10.1.0.0/16", "203.0.113.7:5000-5010", "example.com", "1.1.1.1/udp")
	chains, err := BuildSandbox(tg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplySandbox(c, &chains); err != nil {
		t.Fatal(err)
	}
	if err := VerifySandbox(c, nil, &chains); err != nil {
		t.Fatal(err)
	}
	// A micro-VM's namespace: the forward chain and the masquerade too,
	// replacing the table above in place.
	gt := *tg
	gt.Guest = &Guest{If: "tap0", Addr: netip.MustParseAddr("169.254.100.2"), Uplink: "eth0"}
	gchains, err := BuildSandbox(&gt)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplySandboxChanges(c, &chains, &gchains); err != nil {
		t.Fatal(err)
	}
	if err := VerifySandbox(c, nil, &gchains); err != nil {
		t.Fatal(err)
	}
	part, err := BuildHost(tg, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	if err := ApplyHost(c, &part); err != nil {
		t.Fatal(err)
	}
	if err := VerifyHost(c, &part); err != nil {
		t.Fatal(err)
	}
}

func TestRender(t *testing.T) {
	tg := testTarget(t, "203.0.113.0/24:443/tcp", "203.0.113.7:5000-5010/udp")
	chains, err := BuildSandbox(tg)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range chains.Chains[0].Rules {
		got = append(got, r.String())
	}
	for _, e := range chains.Elements {
		got = append(got, e.String())
	}
	for _, want := range []string{
		`oifname "lo" accept comment "loopback"`,
		`ct state established,related accept comment "replies"`,
		`meta nfproto != ipv4 drop comment "IPv4 only"`,
		`ip saddr != 10.200.0.2 drop comment "own source only"`,
		`ip daddr . meta l4proto . th dport @out_services accept comment "egress services"`,
		`ip daddr . meta l4proto @out_deny_local drop comment "deny: out_deny_local"`,
		`ip daddr 10.0.0.0/8 drop comment "deny 10.0.0.0/8"`,
		`ip daddr . meta l4proto . th dport @out_allow_public_ports accept comment "allow: out_allow_public_ports"`,
		`out_services: 10.200.0.1 . udp . 53`,
		`out_deny_local: 10.200.0.0/16 . any`,
		`out_allow_public_ports: 203.0.113.0/24 . tcp . 443`,
		`out_allow_public_ports: 203.0.113.7 . udp . 5000-5010`,
	} {
		found := false
		for _, g := range got {
			found = found || g == want
		}
		if !found {
			t.Errorf("nothing renders as\n  %s\ngot\n  %s", want, strings.Join(got, "\n  "))
		}
	}
	if d := chains.Chains[0].Describe(); d != "chain output (type filter hook output priority 0 policy drop)" {
		t.Errorf("Describe: %s", d)
	}
}

// TestRemoveHostTouchesNothingElse removes one sandbox's host part (twice,
// and once more after it is gone) and checks that another sandbox's part
// and another tool's table are exactly as they were.
func TestRemoveHostTouchesNothingElse(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	other := &nftables.Table{Name: "othertool", Family: nftables.TableFamilyINet}
	c.AddTable(other)
	oc := c.AddChain(&nftables.Chain{Name: "fwd", Table: other, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: other, Chain: oc, Exprs: accept()})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	a, b := testTarget(t, "203.0.113.0/24", "allowed.test"), testTarget(t, "198.51.100.0/24:53/udp", "203.0.113.0/24")
	b.HostIf, b.SandboxAddr, b.HostAddr = "icother", netip.MustParseAddr("10.200.0.6"), netip.MustParseAddr("10.200.0.5")
	pa, _ := BuildHost(a, 1)
	pb, _ := BuildHost(b, 1)
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*HostPart{&pa, &pb} {
		if err := ApplyHost(c, p); err != nil {
			t.Fatal(err)
		}
		if err := VerifyHost(c, p); err != nil {
			t.Fatal(err)
		}
	}
	// An element no part knows of goes too.
	stray := Element{Set: SetAllowPublicB, Key: cat(ifnameBytes(a.HostIf), kAddr(netip.MustParseAddr("192.0.2.1"))), KeyEnd: cat(ifnameBytes(a.HostIf), kAddr(netip.MustParseAddr("192.0.2.1")))}
	withStray := HostPart{Iface: a.HostIf, Elements: append(slices.Clone(pa.Elements), stray)}
	if err := ApplyHostChanges(c, &pa, &withStray); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := RemoveHost(c, a.HostIf); err != nil {
			t.Fatalf("remove %d: %v", i, err)
		}
	}
	if err := VerifyHost(c, &pb); err != nil {
		t.Fatalf("the other sandbox was disturbed: %v", err)
	}
	// A policy change switches b's generation without deleting the old
	// elements; PruneHost deletes them, and only them.
	b2 := *b
	b2.Policy, _ = ParsePolicy([]string{"203.0.113.7:80/tcp"})
	pb2, _ := BuildHost(&b2, 2)
	if err := ApplyHostChanges(c, &pb, &pb2); err != nil {
		t.Fatal(err)
	}
	if err := VerifyHost(c, &pb2); err != nil {
		t.Fatal(err)
	}
	if all, _ := ReadHostPart(c, b.HostIf); len(all.Elements) <= len(pb2.Elements) {
		t.Fatalf("the superseded elements were deleted on the change: %d elements", len(all.Elements))
	}
	if n, err := PruneHost(c, b.HostIf); err != nil || n == 0 {
		t.Fatalf("prune: %d %v", n, err)
	}
	if all, _ := ReadHostPart(c, b.HostIf); len(all.Elements) != len(pb2.Elements) {
		t.Fatalf("after prune: %v", all.Elements)
	}
	if err := VerifyHost(c, &pb2); err != nil {
		t.Fatal(err)
	}
	if left, err := ReadHostPart(c, a.HostIf); err != nil || len(left.Elements) != 0 {
		t.Fatalf("elements of the removed sandbox survived: %v %v", left.Elements, err)
	}
	if err := VerifyHost(c, &HostPart{Iface: a.HostIf}); err != nil {
		t.Fatalf("after removal: %v", err)
	}
	// Without a live generation, nothing is known to be superseded.
	if n, err := PruneHost(c, a.HostIf); !errors.Is(err, ErrVerify) || n != 0 {
		t.Fatalf("prune of a link in no generation: %d, %v", n, err)
	}
	rules, err := c.GetRules(other, oc)
	if err != nil || len(rules) != 1 {
		t.Fatalf("another tool's table changed: %d rules, %v", len(rules), err)
	}
	// Without the table RemoveHost does nothing (and creates nothing).
	empty := connIn(t, testutil.NewNetNS(t))
	if err := RemoveHost(empty, a.HostIf); err != nil {
		t.Fatal(err)
	}
	if ch, _ := ReadTable(empty); len(ch) != 0 {
		t.Fatalf("RemoveHost created %v", ch)
	}
}

// TestUplinkGuardKernel: the guarded-uplink set is filled, read back and
// emptied idempotently, and the forward base chain consults it.
func TestUplinkGuardKernel(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	if err := UnguardUplink(c, "eth9"); err != nil {
		t.Fatalf("unguard without a table: %v", err)
	}
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"eth9", "wlan0", "eth9"} {
		if err := GuardUplink(c, name); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := ReadUplinks(c); err != nil || strings.Join(got, ",") != "eth9,wlan0" {
		t.Fatalf("guarded uplinks %v %v", got, err)
	}
	fwd, err := ReadChain(c, "forward")
	if err != nil {
		t.Fatal(err)
	}
	if last := fwd.Rules[len(fwd.Rules)-1].String(); last != `iifname @uplinks drop comment "from guarded uplinks, not to a sandbox"` {
		t.Fatalf("last forward rule: %s", last)
	}
	for _, name := range []string{"eth9", "eth9", "wlan0"} {
		if err := UnguardUplink(c, name); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := ReadUplinks(c); err != nil || len(got) != 0 {
		t.Fatalf("guarded uplinks after unguard %v %v", got, err)
	}
}

// TestVerifyHostElementsKernel: reading a part's elements back by key
// passes for exactly what was applied, and fails for an element the kernel
// does not hold, a range that ends elsewhere, a map value that differs and
// a version that is not the live one; a neighbour's elements do not count.
func TestVerifyHostElementsKernel(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	a := testTarget(t, "203.0.113.0/24:443/tcp", "198.51.100.0/24", "10.1.0.0/16:53/udp", "allowed.test")
	b := testTarget(t, "203.0.113.0/24:443/tcp", "192.0.2.0/24")
	b.HostIf, b.SandboxAddr, b.HostAddr = "icother", netip.MustParseAddr("10.200.0.6"), netip.MustParseAddr("10.200.0.5")
	pa, _ := BuildHost(a, 3)
	pb, _ := BuildHost(b, 1)
	for _, p := range []*HostPart{&pa, &pb} {
		if err := ApplyHost(c, p); err != nil {
			t.Fatal(err)
		}
	}
	reader := func() *ElementReader {
		r, err := NewElementReader(ns.Fd())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	r := reader()
	for i := 0; i < 2; i++ { // a reader is reused after a success
		if err := VerifyHostElements(r, &pa); err != nil {
			t.Fatalf("verify %d: %v", i, err)
		}
	}
	if err := VerifyHostElements(r, &pb); err != nil {
		t.Fatal(err)
	}
	mutate := func(name string, f func(p *HostPart)) {
		t.Helper()
		p := pa
		p.Elements = slices.Clone(pa.Elements)
		f(&p)
		err := VerifyHostElements(reader(), &p)
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, ErrVerify) {
			t.Errorf("%s: verified (%v)", name, err)
		}
	}
	idx := func(set string) int {
		i := slices.IndexFunc(pa.Elements, func(e Element) bool { return e.Set == set })
		if i < 0 {
			t.Fatalf("no element in %s", set)
		}
		return i
	}
	mutate("element not in the kernel", func(p *HostPart) {
		e := p.Elements[idx(SetAllowPublicA)]
		e.Key = slices.Clone(e.Key)
		e.Key[len(e.Key)-2] = 7 // 198.51.7.0
		e.KeyEnd = slices.Clone(e.Key)
		p.Elements = append(p.Elements, e)
	})
	mutate("range ends elsewhere", func(p *HostPart) {
		i := idx(SetAllowPublicA)
		p.Elements[i].KeyEnd = slices.Clone(p.Elements[i].KeyEnd)
		p.Elements[i].KeyEnd[len(p.Elements[i].KeyEnd)-1] = 0x7f
	})
	mutate("map value differs", func(p *HostPart) {
		i := idx(MapRedirect)
		p.Elements[i].Val = []byte{0, 1}
	})
	mutate("not the live generation", func(p *HostPart) {
		pa2, _ := BuildHost(a, 4)
		*p = pa2
	})
	mutate("a neighbour's element", func(p *HostPart) {
		p.Elements = append(p.Elements, pb.Elements[0])
		p.Elements[len(p.Elements)-1].Key = slices.Clone(pb.Elements[0].Key)
		copy(p.Elements[len(p.Elements)-1].Key, ifnameBytes("icnobody"))
	})
	// The link in the other generation's set too (both policies would
	// apply), put there behind the owner's back: reading by key does
	// not look there, the full verification does, and an apply that
	// reads the link's elements first takes it out.
	otherGen := Element{Set: SetGenerationB, Key: ifnameBytes(a.HostIf)}
	both := &HostPart{Iface: a.HostIf, Elements: append(slices.Clone(pa.Elements), otherGen)}
	if err := ApplyHostChanges(c, &pa, both); err != nil {
		t.Fatal(err)
	}
	r = reader()
	if in, err := r.Has(otherGen); err != nil || !in {
		t.Fatalf("Has(%s) = %v, %v", otherGen, in, err)
	}
	if err := VerifyHostPart(c, nil, &pa); !errors.Is(err, ErrVerify) {
		t.Errorf("in both generations: VerifyHostPart passed (%v)", err)
	}
	a3 := *a
	a3.Policy, _ = ParsePolicy([]string{"192.0.2.0/24"})
	pa3, _ := BuildHost(&a3, 3)
	if err := ApplyHost(c, &pa3); err != nil {
		t.Fatal(err)
	}
	if in, err := r.Has(otherGen); err != nil || in {
		t.Fatalf("after the next apply: Has(%s) = %v, %v", otherGen, in, err)
	}
	if err := VerifyHostElements(r, &pa3); err != nil {
		t.Fatalf("a reader is reused after Has found nothing: %v", err)
	}
	if err := VerifyHostPart(c, nil, &pa3); err != nil {
		t.Fatal(err)
	}
}

// TestRemoveOldLayoutKernel builds a host table of the earlier layout
// (base chains dispatching through verdict maps to per-sandbox chains),
// lets EnsureHostBase rewrite it, and checks that RemoveOldLayout deletes
// the maps and chains nothing uses any more, and keeps a chain a rule still
// jumps to, a chain of the new layout's name space, the new layout itself
// and another tool's table.
func TestRemoveOldLayoutKernel(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	tb := table()
	c.AddTable(tb)
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policyAccept})
	var chains []string
	for _, m := range oldHostMaps {
		vm := &nftables.Set{Table: tb, Name: m, IsMap: true, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
		name := "ic-abcdef-" + strings.ReplaceAll(m, "_", "-")
		chains = append(chains, name)
		c.AddChain(&nftables.Chain{Name: name, Table: tb})
		if err := c.AddSet(vm, []nftables.SetElement{{Key: ifnameBytes("icabcdef"), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: name}}}); err != nil {
			t.Fatal(err)
		}
	}
	c.AddRule(&nftables.Rule{Table: tb, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: "fwd_in", DestRegister: 0, IsDestRegSet: true},
	}})
	// A chain of the old name space that a custom chain still jumps to.
	c.AddChain(&nftables.Chain{Name: "ic-kept", Table: tb})
	custom := c.AddChain(&nftables.Chain{Name: "custom", Table: tb})
	c.AddRule(&nftables.Rule{Table: tb, Chain: custom, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "ic-kept"}}})
	other := &nftables.Table{Name: "othertool", Family: nftables.TableFamilyINet}
	c.AddTable(other)
	c.AddChain(&nftables.Chain{Name: "ic-theirs", Table: other})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	// Used: the base chain still looks fwd_in up, which jumps to its
	// chain; the other maps and their chains are unused already.
	first, err := RemoveOldLayout(c)
	if err != nil || slices.Contains(first, "map fwd_in") || slices.Contains(first, "chain ic-abcdef-fwd-in") || !slices.Contains(first, "chain ic-abcdef-fwd-out") {
		t.Fatalf("before the rewrite: removed %v, %v", first, err)
	}
	// fwd_in still dispatches link icabcdef: the rewrite is refused (it
	// would strip that sandbox's host side) and changes nothing.
	if links, err := OldLayoutLinks(c); err != nil || !slices.Equal(links, []string{"icabcdef"}) {
		t.Fatalf("OldLayoutLinks = %v, %v; want [icabcdef]", links, err)
	}
	if err := EnsureHostBase(c, nil); !errors.Is(err, ErrOldLayoutInUse) || !strings.Contains(err.Error(), "icabcdef") {
		t.Fatalf("EnsureHostBase over a live old layout = %v, want ErrOldLayoutInUse naming the link", err)
	}
	if rules, err := c.GetRules(tb, fwd); err != nil || len(rules) != 1 {
		t.Fatalf("the refused rewrite touched the old base chain: %d rules, %v", len(rules), err)
	}
	// Once that link is gone, gc deletes its entries; then the rewrite
	// goes ahead.
	if err := DeleteOldLayoutLinks(c, []string{"icabcdef"}); err != nil {
		t.Fatal(err)
	}
	if links, err := OldLayoutLinks(c); err != nil || len(links) != 0 {
		t.Fatalf("OldLayoutLinks after deleting = %v, %v", links, err)
	}
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	part, _ := BuildHost(testTarget(t, "203.0.113.0/24"), 1)
	if err := ApplyHost(c, &part); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveOldLayout(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %v, then %v", first, removed)
	removed = append(removed, first...)
	for _, name := range chains {
		if !slices.Contains(removed, "chain "+name) {
			t.Errorf("chain %s not removed", name)
		}
	}
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, ch := range all {
		left = append(left, ch.Table.Name+"/"+ch.Name)
	}
	slices.Sort(left)
	want := []string{"ironclaw/custom", "ironclaw/forward", "ironclaw/ic-kept", "ironclaw/input", "ironclaw/postrouting", "ironclaw/prerouting", "othertool/ic-theirs"}
	if !slices.Equal(left, want) {
		t.Fatalf("chains left %v, want %v", left, want)
	}
	sets, _ := c.GetSets(tb)
	for _, s := range sets {
		if slices.Contains(oldHostMaps, s.Name) {
			t.Errorf("map %s left", s.Name)
		}
	}
	if err := VerifyHost(c, &part); err != nil {
		t.Fatalf("the new layout was disturbed: %v", err)
	}
	if removed, err := RemoveOldLayout(c); err != nil || len(removed) != 0 {
		t.Fatalf("second run: %v %v", removed, err)
	}
}

// TestHostBaseDenyUpdate: a host table whose SetDenyInternal was written
// by a build without 192.0.0.0/24 (Format 0) is brought up to date by
// EnsureHostBase with the one element added: the base chains keep their
// rules (the same handles: nothing rewritten under the live sandboxes),
// and a live sandbox's elements stay and verify.
func TestHostBaseDenyUpdate(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	tg := testTarget(t, "203.0.113.0/24:443/tcp", "192.0.0.8/32")
	part, err := BuildHost(tg, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplyHost(c, &part); err != nil {
		t.Fatal(err)
	}
	handles := func() map[string][]uint64 {
		t.Helper()
		out := map[string][]uint64{}
		for _, ch := range BuildHostBase() {
			rs, err := c.GetRules(table(), &nftables.Chain{Name: ch.Name, Table: table()})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				out[ch.Name] = append(out[ch.Name], r.Handle)
			}
		}
		return out
	}
	before := handles()
	// What the earlier build's set held: InternalRanges without
	// 192.0.0.0/24.
	ietf := slices.IndexFunc(hostBaseElements(), func(e Element) bool {
		return netip.AddrFrom4([4]byte(e.Key[:4])) == netip.MustParseAddr("192.0.0.0")
	})
	if ietf < 0 {
		t.Fatal("SetDenyInternal has no element starting at 192.0.0.0")
	}
	old := hostBaseElements()[ietf]
	if !strings.HasPrefix(string(old.KeyEnd), string([]byte{192, 0, 0, 255})) {
		t.Fatalf("192.0.0.0/24 element ends at %v", old.KeyEnd)
	}
	if err := queueElements(c, []Element{old}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := VerifyHost(c, &part); !errors.Is(err, ErrVerify) {
		t.Fatalf("verify of the earlier build's deny set: %v, want ErrVerify", err)
	}
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	if err := VerifyHost(c, &part); err != nil {
		t.Fatal(err)
	}
	if after := handles(); !reflect.DeepEqual(after, before) {
		t.Fatalf("base chains rewritten: rule handles %v, were %v", after, before)
	}
}
