package network

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestIETFRangeInternal: 192.0.0.0/24 (IETF protocol assignments) is an
// internal range. A peer at 192.0.0.8 (in the test's peer namespace only)
// is blocked for a sandbox allowed everything public, by the sandbox's
// table and by the host side alone, and reached by one whose CIDR rule
// names it, through the same path.
func TestIETFRangeInternal(t *testing.T) {
	e := newEnv(t)
	all := e.setup(t, "ietf-all", "0.0.0.0/0")
	named := e.setup(t, "ietf-named", "192.0.0.8/32:8080/tcp")
	pa := &testutil.Probe{NS: all.ns}
	runProbes(t, "0.0.0.0/0", pa, []probe{
		tcp("public peer", peerA, 8080, true),
		tcp("IETF protocol assignment", peerIETF, 8080, false),
		udp("IETF protocol assignment", peerIETF, 9090, false),
	})
	runProbes(t, "rule names it", &testutil.Probe{NS: named.ns}, []probe{
		tcp("named IETF address", peerIETF, 8080, true),
		udp("other protocol", peerIETF, 9090, false),
	})
	// The host side alone holds it too (its deny set has the range).
	sc, err := nftables.New(nftables.WithNetNSFd(all.ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := firewall.RemoveSandbox(sc); err != nil {
		t.Fatal(err)
	}
	runProbes(t, "host side only", pa, []probe{
		tcp("public peer", peerA, 8080, true),
		tcp("IETF protocol assignment", peerIETF, 8080, false),
	})
}

// TestStaleFormatSlot: a free slot whose record is of another firewall
// format (prepared by an earlier build, whose rulesets lack what this one
// builds) is never claimed: a claim skips it and marks it used, Maintain
// destroys it with its objects, and a free one of an older format that no
// claim met is destroyed too and not counted as free.
func TestStaleFormatSlot(t *testing.T) {
	e := newEnv(t)
	e.fillPool(t, 2)
	slots := slotStates(t, e.cfg)
	if len(slots) != 2 {
		t.Fatalf("pool has %d slots, want 2", len(slots))
	}
	var names []string
	var links []string
	for name := range slots {
		sdir := filepath.Join(e.cfg.Root, "net", "slots", name)
		rec, err := readRecord(sdir, RecordFile)
		if err != nil || rec == nil {
			t.Fatal(rec, err)
		}
		if rec.Format != firewall.Format {
			t.Fatalf("fresh slot has format %d, want %d", rec.Format, firewall.Format)
		}
		// What an earlier build wrote: no format.
		rec.Format = 0
		if err := writeRecord(sdir, RecordFile, rec); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
		links = append(links, rec.Names.HostIf)
	}
	if free, err := countFree(e.cfg); err != nil || free != 0 {
		t.Fatalf("countFree = %d, %v; stale slots must not count", free, err)
	}
	if st, err := Pool(e.cfg); err != nil || st.Free != 0 || st.Used != 2 {
		t.Fatalf("pool state %+v, %v; want the stale slots as used", st, err)
	}
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	dir, key := e.sandboxDir(t, "stale-claim")
	if _, err := Claim(t.Context(), e.cfg, dir, key, p); !errors.Is(err, ErrPoolEmpty) {
		t.Fatalf("claim with only stale slots: %v, want ErrPoolEmpty", err)
	}
	used := 0
	for _, name := range names {
		switch st := slotStates(t, e.cfg)[name]; st {
		case stateUsed:
			used++
		case stateFree:
		default:
			t.Fatalf("stale slot is %q after a claim", st)
		}
	}
	if used != 2 {
		t.Fatalf("%d stale slots marked used by the claim, want 2", used)
	}
	if rec, _ := readRecord(dir, RecordFile); rec != nil {
		t.Fatal("a skipped claim left a record in the sandbox's directory")
	}
	// A stale slot that is still free (no claim met it) goes too.
	if err := writeState(filepath.Join(e.cfg.Root, "net", "slots", names[0], slotState), stateFree); err != nil {
		t.Fatal(err)
	}
	destroyed, err := Maintain(t.Context(), e.cfg)
	if err != nil || destroyed != 2 {
		t.Fatalf("maintain: destroyed %d, %v; want both stale slots", destroyed, err)
	}
	if left := slotStates(t, e.cfg); len(left) != 0 {
		t.Fatalf("slots left after Maintain: %v", left)
	}
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	hc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if ok, err := netns.LinkExists(host, l); err != nil || ok {
			t.Fatalf("link %s of a destroyed slot: exists %v, %v", l, ok, err)
		}
		if part, err := firewall.ReadHostPart(hc, l); err != nil || len(part.Elements) != 0 {
			t.Fatalf("host elements of destroyed slot %s: %v, %v", l, part.Elements, err)
		}
	}
	// A fresh slot of this format is claimed.
	e.fillPool(t, 1)
	n, err := Claim(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatal(err, rep.Err)
	}
	if _, err := os.Stat(n.slot.dir); err != nil {
		t.Fatal(err)
	}
}
