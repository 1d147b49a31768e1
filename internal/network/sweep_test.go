package network

import (
	"slices"
	"testing"

	"github.com/google/nftables"

	"github.com/ironclaw/ironclaw/internal/firewall"
)

// TestSweepHostRemovesElementsOfGoneLinks: elements of links that do not
// exist (left by an interrupted removal) go; a live sandbox's stay and
// still verify.
func TestSweepHostRemovesElementsOfGoneLinks(t *testing.T) {
	e := newEnv(t)
	n := e.setup(t, "sweep-live", "203.0.113.10:8080/tcp")
	hc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ghosts := otherSandboxes(t, e, n, 3)
	for i := range ghosts {
		if err := firewall.ApplyHostChanges(hc, &firewall.HostPart{Iface: ghosts[i].Iface}, &ghosts[i]); err != nil {
			t.Fatal(err)
		}
	}
	gone, err := SweepHost()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range ghosts {
		if !slices.Contains(gone, g.Iface) {
			t.Errorf("sweep kept the elements of %s, which has no link (removed %v)", g.Iface, gone)
		}
		if part, err := firewall.ReadHostPart(hc, g.Iface); err != nil || len(part.Elements) > 0 {
			t.Errorf("%s: %d elements left (%v)", g.Iface, len(part.Elements), err)
		}
	}
	live := n.tgt.HostIf
	if slices.Contains(gone, live) {
		t.Fatalf("sweep removed the live sandbox's link %s", live)
	}
	if err := firewall.VerifyHost(hc, n.prevPart); err != nil {
		t.Fatalf("the live sandbox's host elements after the sweep: %v", err)
	}
	// Nothing is left to sweep; a second run removes nothing.
	if gone, err := SweepHost(); err != nil || len(gone) > 0 {
		t.Errorf("second sweep: %v %v", gone, err)
	}
}
