package firewall

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// nftIn runs the system's nft binary with args in the network namespace
// ns and returns its output.
func nftIn(t *testing.T, ns *netns.NS, args ...string) (string, error) {
	t.Helper()
	nsenter := testutil.RequireCommand(t, "nsenter")
	testutil.RequireCommand(t, "nft")
	out, err := exec.Command(nsenter, append([]string{"--net=" + ns.Path(), "nft"}, args...)...).CombinedOutput()
	return string(out), err
}

// allTiers is a policy with rules in all three tiers of testTarget (its
// first deny tier, InternalRanges and the rest), with and without ports.
var allTiers = []string{
	"10.200.5.0/24:8080/tcp", "198.51.100.1", // inside Deny
	"10.1.0.0/16:53/udp", "192.168.0.0/16", // inside InternalRanges
	"203.0.113.0/24:443/tcp", "198.18.0.0/15", "1.1.1.1/udp", // public
}

// checkNftLists runs `nft list ruleset`, `nft -j list ruleset` and `nft
// list table inet ironclaw` in ns and checks that each exits 0 and shows
// the generation sets and the rules that look them up; the listing must
// also load again (`nft -c -f`) into an empty namespace. It returns the
// text listing.
func checkNftLists(t *testing.T, ns *netns.NS) string {
	t.Helper()
	var text string
	for _, args := range [][]string{{"list", "ruleset"}, {"-j", "list", "ruleset"}, {"list", "table", "inet", TableName}} {
		out, err := nftIn(t, ns, args...)
		if err != nil {
			t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, want := range []string{SetGenerationA, SetGenerationB, SetAllowPublicPortsA, SetAllowPublicPortsB, SetDenyInternal} {
			if !strings.Contains(out, want) {
				t.Errorf("nft %s does not show %s:\n%s", strings.Join(args, " "), want, out)
			}
		}
		if args[0] == "-j" {
			var doc map[string]any
			if err := json.Unmarshal([]byte(out), &doc); err != nil {
				t.Errorf("nft -j list ruleset: not JSON: %v", err)
			}
			continue
		}
		for _, want := range []string{
			"iifname @" + SetGenerationA + " iifname . ip daddr . meta l4proto . th dport @" + SetAllowPublicPortsA + " accept",
			"iifname @" + SetGenerationB + " iifname . ip daddr @" + SetAllowInternalB + " accept",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("nft %s does not show %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
		if args[1] == "table" {
			text = out
		}
	}
	// What nft lists, nft reads back: check it against a namespace
	// without the table (-c: nothing is committed).
	file := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := nftIn(t, testutil.NewNetNS(t), "-c", "-f", file); err != nil {
		t.Errorf("nft -c -f of the listing: %v\n%s", err, out)
	}
	return text
}

// TestNftListsHostTable is the regression test for `nft list ruleset`
// aborting on the host table (nft 1.0.6: "netlink_parse_concat_expr:
// Assertion 'consumed > 0' failed"): with sandboxes whose policies have
// rules in every tier, and again after a policy change that leaves both
// generations with elements, the real nft lists the table, as text and as
// JSON, and reads its listing back.
func TestNftListsHostTable(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	a, b := testTarget(t, allTiers...), testTarget(t, "203.0.113.7:80/tcp", "example.com")
	b.HostIf, b.SandboxAddr, b.HostAddr = "icother", netip.MustParseAddr("10.200.0.6"), netip.MustParseAddr("10.200.0.5")
	pa, _ := BuildHost(a, 1)
	pb, _ := BuildHost(b, 2)
	for _, p := range []*HostPart{&pa, &pb} {
		if err := ApplyHost(c, p); err != nil {
			t.Fatal(err)
		}
	}
	checkNftLists(t, ns)

	// A live change of a's policy: generation b gets the new elements,
	// a keeps the superseded ones until a prune.
	a2 := *a
	a2.Policy, _ = ParsePolicy([]string{"10.200.7.0/24", "10.1.0.0/16:22/tcp", "203.0.113.0/24:80-90/tcp"})
	pa2, _ := BuildHost(&a2, 2)
	held, err := ApplyHostHeld(c, nil, &pa, &pa2)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyHost(c, &pa2); err != nil {
		t.Fatal(err)
	}
	if len(held.Superseded()) == 0 {
		t.Fatal("the change left no superseded elements")
	}
	text := checkNftLists(t, ns)
	t.Logf("nft list table inet %s:\n%s", TableName, text)
	// `ironclaw net show` renders the forward chain as nft lists it,
	// except that it shows the IPv4 checks nft leaves implicit.
	fwd, err := ReadChain(c, "forward")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range fwd.Rules {
		if s := strings.ReplaceAll(r.String(), "meta nfproto ipv4 ", ""); !strings.Contains(text, "\t"+s+"\n") {
			t.Errorf("nft does not list the forward rule as rendered: %s", s)
		}
	}
	if n, err := PruneHost(c, a.HostIf); err != nil || n != len(held.Superseded()) {
		t.Fatalf("prune: %d, %v; want %d", n, err, len(held.Superseded()))
	}
	checkNftLists(t, ns)
}

// buildVersionedLayout makes, through c, the host table as the build
// before generations (commit 607f46f) made it: its sets (the map
// "version", the allow sets keyed "link . version . ..." and the map
// "redirect"), a forward chain whose allow rules look up "iifname .
// (iifname map @version) . ip daddr [. meta l4proto . th dport]", a
// prerouting chain that redirects through "redirect", and for each of
// links a version entry, its link, a redirect and an allow element of that
// version.
func buildVersionedLayout(t *testing.T, c *nftables.Conn, links []string) {
	t.Helper()
	tb := table()
	c.AddTable(tb)
	for _, d := range hostSets {
		if d.gen == 0 && d.name != SetGenerationA && d.name != SetGenerationB && d.name != MapRedirect {
			if err := c.AddSet(d.nft(tb), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range oldVersionedSets {
		if err := c.AddSet(d.nft(tb), nil); err != nil {
			t.Fatal(err)
		}
	}
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policyAccept})
	for _, d := range oldVersionedSets[2:] {
		ex := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regIf},
			&expr.Lookup{SourceRegister: regIf, SetName: oldVersionMap, DestRegister: regW8, IsDestRegSet: true},
			&expr.Payload{DestRegister: regW9, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		}
		if len(d.fields) == 5 {
			ex = append(ex,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regW10},
				&expr.Payload{DestRegister: 15, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		}
		ex = append(ex, &expr.Lookup{SourceRegister: regIf, SetName: d.name}, &expr.Verdict{Kind: expr.VerdictAccept})
		c.AddRule(&nftables.Rule{Table: tb, Chain: fwd, Exprs: ex})
	}
	c.AddRule(&nftables.Rule{Table: tb, Chain: fwd, Exprs: append(lookup(expr.MetaKeyIIFNAME, SetLinks), drop()...)})
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tb, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &policyAccept})
	c.AddRule(&nftables.Rule{Table: tb, Chain: pre, Exprs: append(append(ipv4(), ifAddrProtoPort()...), redirectMap("redirect")...)})
	ver := binaryutil.BigEndian.PutUint32(3)
	for _, l := range links {
		ifb := ifnameBytes(l)
		add := func(set string, el nftables.SetElement) {
			d, _ := setDefOf(set)
			if err := c.SetAddElements(d.nft(tb), []nftables.SetElement{el}); err != nil {
				t.Fatal(err)
			}
		}
		add(SetLinks, nftables.SetElement{Key: ifb})
		add(oldVersionMap, nftables.SetElement{Key: ifb, Val: ver})
		add("redirect", nftables.SetElement{Key: cat(ifb, kAddr(netip.MustParseAddr("10.200.0.1")), kProto(6), kPort(443)), Val: binaryutil.BigEndian.PutUint16(8443)})
		lo, hi := netip.MustParseAddr("203.0.113.0"), netip.MustParseAddr("203.0.113.255")
		add("allow_public", nftables.SetElement{Key: cat(ifb, ver, kAddr(lo)), KeyEnd: cat(ifb, ver, kAddr(hi))})
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestVersionedLayoutMigration starts from a host table of the layout
// before generations with a live sandbox and a gone one: the rewrite is
// refused while the live one's version entry is there, RemoveHost of that
// sandbox (reclaimed by this build) and DeleteOldLayoutLinks of the gone
// one let it go ahead, RemoveOldLayout then deletes the old map and sets
// and nothing else, and the real nft lists the result.
func TestVersionedLayoutMigration(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	buildVersionedLayout(t, c, []string{"iclive", "icgone"})
	out, err := nftIn(t, ns, "list", "ruleset")
	t.Logf("nft list ruleset over the versioned layout: %v (%d bytes)", err, len(out))

	if links, err := OldLayoutLinks(c); err != nil || !slices.Equal(links, []string{"icgone", "iclive"}) {
		t.Fatalf("OldLayoutLinks = %v, %v", links, err)
	}
	if removed, err := RemoveOldLayout(c); err != nil || len(removed) != 0 {
		t.Fatalf("RemoveOldLayout while the old rules use the sets: %v, %v", removed, err)
	}
	err = EnsureHostBase(c, nil)
	if !errors.Is(err, ErrOldLayoutInUse) || !strings.Contains(err.Error(), "iclive") {
		t.Fatalf("EnsureHostBase over a live versioned layout = %v, want ErrOldLayoutInUse naming the links", err)
	}
	if fwd, err := ReadChain(c, "forward"); err != nil || len(fwd.Rules) != len(oldVersionedSets)-1 {
		t.Fatalf("the refused rewrite touched the old forward chain: %v", err)
	}
	// gc deletes the gone link's entry; the live one ends (RemoveHost,
	// as Close or Reclaim of this build does), which takes its elements
	// of the old sets too.
	if err := DeleteOldLayoutLinks(c, []string{"icgone"}); err != nil {
		t.Fatal(err)
	}
	if links, err := OldLayoutLinks(c); err != nil || !slices.Equal(links, []string{"iclive"}) {
		t.Fatalf("OldLayoutLinks after gc = %v, %v", links, err)
	}
	if err := EnsureHostBase(c, nil); !errors.Is(err, ErrOldLayoutInUse) {
		t.Fatalf("EnsureHostBase with one live link left = %v", err)
	}
	if err := RemoveHost(c, "iclive"); err != nil {
		t.Fatal(err)
	}
	if left, err := readHostPartOnce(c, nil, "iclive", append(sandboxSets(), oldVersionedSets...), true); err != nil || len(left.Elements) != 0 {
		t.Fatalf("RemoveHost left %v, %v", left.Elements, err)
	}
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	part, _ := BuildHost(testTarget(t, allTiers...), 1)
	if err := ApplyHost(c, &part); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveOldLayout(c)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, d := range oldVersionedSets {
		kind := "set "
		if d.data != nil {
			kind = "map "
		}
		want = append(want, kind+d.name)
	}
	slices.Sort(removed)
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Fatalf("RemoveOldLayout removed %v, want %v", removed, want)
	}
	if err := VerifyHost(c, &part); err != nil {
		t.Fatalf("the new layout was disturbed: %v", err)
	}
	if removed, err := RemoveOldLayout(c); err != nil || len(removed) != 0 {
		t.Fatalf("second run: %v %v", removed, err)
	}
	// The link is still in generation a only; b's set is there, empty.
	pb, _ := BuildHost(testTarget(t, "203.0.113.9"), 2)
	if err := ApplyHostChanges(c, &part, &pb); err != nil {
		t.Fatal(err)
	}
	checkNftLists(t, ns)
}
