package firewall

import (
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// BenchmarkConsistentRead measures what the generation check adds to the
// reads a sandbox start makes, in a throwaway namespace holding a sandbox
// table and the host table: the sandbox table's verification and the host
// base's (EnsureHostBase when nothing differs), each checked (through a
// lasting GenReader, as a Net does) and unchecked (the dumps alone, the
// peer), alternating within each iteration so that load on the machine
// weighs on both alike. It reports the medians and the checked/unchecked
// ratios.
func BenchmarkConsistentRead(b *testing.B) {
	testutil.RequireRoot(b)
	// Lasting connections, as a Net's.
	lasting := func(ns *netns.NS) *nftables.Conn {
		c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()), nftables.AsLasting())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.CloseLasting() })
		return c
	}
	c := lasting(testutil.NewNetNS(b))
	tg := testTarget(b, "203.0.113.0/24:443/tcp", "10.1.0.0/16", "example.com")
	inner, err := BuildSandbox(tg)
	if err != nil {
		b.Fatal(err)
	}
	// The sandbox table and the host table share the namespace here; the
	// host's is what EnsureHostBase reads.
	if err := EnsureHostBase(c, nil); err != nil {
		b.Fatal(err)
	}
	sb := lasting(testutil.NewNetNS(b))
	if err := ApplySandbox(sb, &inner); err != nil {
		b.Fatal(err)
	}
	sg, err := dialGen(sb)
	if err != nil {
		b.Fatal(err)
	}
	defer sg.Close()
	hg, err := dialGen(c)
	if err != nil {
		b.Fatal(err)
	}
	defer hg.Close()
	base := BuildHostBase()
	var vPlain, vChecked, ePlain, eChecked []time.Duration
	timed := func(d *[]time.Duration, f func() error) {
		t0 := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		*d = append(*d, time.Since(t0))
	}
	for i := 0; b.Loop(); i++ {
		plainV := func() error { return verifySandbox(sb, &inner) }
		checkedV := func() error { return VerifySandbox(sb, sg, &inner) }
		plainE := func() error { _, err := readHostBase(c, base); return err }
		checkedE := func() error { return EnsureHostBase(c, hg) }
		if i%2 == 0 {
			timed(&vPlain, plainV)
			timed(&vChecked, checkedV)
			timed(&ePlain, plainE)
			timed(&eChecked, checkedE)
		} else {
			timed(&vChecked, checkedV)
			timed(&vPlain, plainV)
			timed(&eChecked, checkedE)
			timed(&ePlain, plainE)
		}
	}
	med := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	report := func(name string, plain, checked []time.Duration) {
		mp, mc := med(plain), med(checked)
		b.ReportMetric(float64(mp.Microseconds()), name+"-unchecked-median-µs")
		b.ReportMetric(float64(mc.Microseconds()), name+"-checked-median-µs")
		b.ReportMetric(float64(mc)/float64(mp), name+"-checked/unchecked")
	}
	report("verify-sandbox", vPlain, vChecked)
	report("host-base", ePlain, eChecked)
}
