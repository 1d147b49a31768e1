package network

import (
	"slices"
	"testing"

	"github.com/google/nftables"

	"github.com/ironclaw/ironclaw/internal/firewall"
)

// TestSetupRemovesStaleHostElements: a link name is a hash of the sandbox's
// key, so an earlier owner of the name (another state root, a removal that
// failed) may have left host elements under it, at the very version a new
// Net starts with. Setup must not verify by key only (blind to extras): the
// host must end up holding exactly the new sandbox's elements.
func TestSetupRemovesStaleHostElements(t *testing.T) {
	e := newEnv(t)
	dir, key := e.sandboxDir(t, "stale")
	names := NamesOf(key)
	wide, err := firewall.ParsePolicy([]string{peerB.String() + ":8080", peerA.String()})
	if err != nil {
		t.Fatal(err)
	}
	narrow, err := firewall.ParsePolicy([]string{peerA.String() + ":8080"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	n, err := Setup(t.Context(), e.cfg, dir, key, wide)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := firewall.ReadHostPart(c, names.HostIf)
	if err != nil || len(stale.Elements) == 0 {
		t.Fatalf("host part of the first owner: %d elements, %v", len(stale.Elements), err)
	}
	// The first owner's other generation, as an update that was never
	// pruned would have left it.
	other, err := firewall.BuildHost(n.tgt, 2)
	if err != nil {
		t.Fatal(err)
	}
	superseded := (&firewall.HostPart{Iface: names.HostIf, Version: 1, Elements: other.Elements}).Superseded()
	if len(superseded) == 0 {
		t.Fatal("no elements of generation b")
	}
	stale.Elements = append(stale.Elements, superseded...)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	// Put the first owner's elements back, as a failed removal would
	// have left them.
	if err := firewall.ApplyHostChanges(c, &firewall.HostPart{Iface: names.HostIf}, &stale); err != nil {
		t.Fatal(err)
	}
	n, err = Setup(t.Context(), e.cfg, dir, key, narrow)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	got, err := firewall.ReadHostPart(c, names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	want := n.prevPart
	if want == nil {
		t.Fatal("Setup kept no record of the host part it verified")
	}
	key2 := func(e firewall.Element) string { return e.String() }
	var gotS, wantS []string
	for _, el := range got.Elements {
		gotS = append(gotS, key2(el))
	}
	for _, el := range want.Elements {
		wantS = append(wantS, key2(el))
	}
	slices.Sort(gotS)
	slices.Sort(wantS)
	if !slices.Equal(gotS, wantS) {
		t.Fatalf("host elements of %s after Setup over stale ones:\n got  %v\n want %v", names.HostIf, gotS, wantS)
	}
	// Generation b is the next update's: nothing of the first owner may
	// be left there for it to make live.
	if left := want.Superseded(); len(left) > 0 {
		t.Fatalf("Setup left the first owner's generation b elements: %v", left)
	}
}
