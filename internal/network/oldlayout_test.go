package network

import (
	"errors"
	"log/slog"
	"runtime"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestRemoveOldLayoutDropsDeadLinksOnly plays a host whose table is still
// in an earlier layout: its dispatch map and its version map hold entries
// for a link that exists (a live sandbox of the earlier IronClaw; "lo"
// here) and for links that are gone. Maintenance deletes the dead links'
// entries only, and a rewrite of the table stays refused while the live
// one is there.
func TestRemoveOldLayoutDropsDeadLinksOnly(t *testing.T) {
	ns := testutil.NewNetNS(t)
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: firewall.TableName, Family: nftables.TableFamilyINet}
	c.AddTable(tb)
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: tb, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	vm := &nftables.Set{Table: tb, Name: "fwd_in", IsMap: true, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
	var els []nftables.SetElement
	for _, l := range []string{"lo", "icdead0001"} {
		ch := "ic-" + l + "-fwd-in"
		c.AddChain(&nftables.Chain{Name: ch, Table: tb})
		key := make([]byte, unix.IFNAMSIZ)
		copy(key, l)
		els = append(els, nftables.SetElement{Key: key, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch}})
	}
	if err := c.AddSet(vm, els); err != nil {
		t.Fatal(err)
	}
	// The versioned layout (before generations) on top: its map from
	// link to policy version, with the live link and another dead one.
	ver := &nftables.Set{Table: tb, Name: "version", IsMap: true, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeMark}
	var vels []nftables.SetElement
	for _, l := range []string{"lo", "icdead0002"} {
		key := make([]byte, unix.IFNAMSIZ)
		copy(key, l)
		vels = append(vels, nftables.SetElement{Key: key, Val: binaryutil.BigEndian.PutUint32(1)})
	}
	if err := c.AddSet(ver, vels); err != nil {
		t.Fatal(err)
	}
	c.AddRule(&nftables.Rule{Table: tb, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: "fwd_in", DestRegister: 0, IsDestRegSet: true},
	}})
	c.AddRule(&nftables.Rule{Table: tb, Chain: fwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: "version"},
	}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	// removeOldLayout works on the current network namespace: run it on a
	// thread moved into the test's.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies in ns
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- removeOldLayout(Config{Logger: slog.Default()})
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	links, err := firewall.OldLayoutLinks(c)
	if err != nil || !slices.Equal(links, []string{"lo"}) {
		t.Fatalf("old layout links after maintenance = %v, %v; want only the live [lo]", links, err)
	}
	if err := firewall.EnsureHostBase(c, nil); !errors.Is(err, firewall.ErrOldLayoutInUse) {
		t.Fatalf("EnsureHostBase with a live old-layout link = %v, want ErrOldLayoutInUse", err)
	}
}
