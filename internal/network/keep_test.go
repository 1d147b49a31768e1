package network

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func poolNow(t testing.TB, cfg Config) PoolState {
	t.Helper()
	st, err := Pool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestDeferredRemoval: with DeferRemoval, a network Begin has to make on
// an empty pool is a slot of its own, claimed by the sandbox; it works
// like any network (real traffic), Close leaves it used and shut, and
// KeepPool destroys it and refills the pool, while a slot whose flock is
// held (claimed, or used but still locked) is never touched.
func TestDeferredRemoval(t *testing.T) {
	e := newEnv(t)
	t.Cleanup(func() {
		if err := Drain(context.Background(), e.cfg); err != nil {
			t.Error(err)
		}
	})
	cfg := e.cfg
	cfg.DeferRemoval = true
	wakes := 0
	cfg.Wake = func() { wakes++ }
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	dir, key := e.sandboxDir(t, "deferred")
	n, err := Begin(t.Context(), cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	if n.slot == nil {
		t.Fatal("Begin with DeferRemoval on an empty pool did not make a slot")
	}
	if st := slotStates(t, cfg)[filepath.Base(n.slot.dir)]; st != "claimed "+string(key) {
		t.Fatalf("inline slot state %q", st)
	}
	runProbes(t, "inline slot", &testutil.Probe{NS: n.ns}, []probe{
		tcp("allowed", peerA, 8080, true),
		tcp("other port", peerA, 9090, false),
		tcp("other host", peerB, 8080, false),
	})
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatal(err, rep.Err)
	}
	if st, err := Inspect(t.Context(), dir); err != nil || st.Report.Err != nil || st.Slot != n.slot.dir {
		t.Fatalf("inspect an inline slot's sandbox: %+v %v", st, err)
	}
	sdir, names := n.slot.dir, n.rec.Names
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if wakes != 2 {
		t.Errorf("Wake called %d times, want 2 (Begin, Close)", wakes)
	}
	if st := slotStates(t, cfg)[filepath.Base(sdir)]; st != stateUsed {
		t.Fatalf("closed inline slot is %q, want used", st)
	}
	if rec, _ := readRecord(dir, RecordFile); rec != nil {
		t.Fatal("the sandbox's record survives Close")
	}
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if ok, err := netns.LinkExists(host, names.HostIf); err != nil || !ok {
		t.Fatalf("the used slot's link should wait for the maintainer: %v %v", ok, err)
	}

	// A claimed slot, and a used one whose flock someone holds.
	if made, err := Fill(t.Context(), cfg, 2); err != nil || made != 2 {
		t.Fatalf("fill: %d %v", made, err)
	}
	dir2, key2 := e.sandboxDir(t, "claimed")
	held, err := Claim(t.Context(), cfg, dir2, key2, p)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	dir3, key3 := e.sandboxDir(t, "used-held")
	n3, err := Claim(t.Context(), cfg, dir3, key3, p)
	if err != nil {
		t.Fatal(err)
	}
	usedHeld := n3.slot.dir
	if err := n3.Close(); err != nil {
		t.Fatal(err)
	}
	lock, err := lockFile(filepath.Join(usedHeld, slotLock), false)
	if err != nil {
		t.Fatal(err)
	}
	if got := poolNow(t, cfg); got != (PoolState{Used: 1, Claimed: 2}) {
		t.Fatalf("pool before maintenance: %+v", got)
	}
	kept, err := KeepPool(t.Context(), cfg, 2)
	if err != nil || kept.Busy || kept.Destroyed != 1 || kept.Made != 2 {
		t.Fatalf("keep: %+v %v, want the inline slot destroyed and 2 made", kept, err)
	}
	if _, err := os.Stat(sdir); !os.IsNotExist(err) {
		t.Fatalf("used inline slot survives KeepPool: %v", err)
	}
	if ok, _ := netns.LinkExists(host, names.HostIf); ok {
		t.Fatal("used inline slot's link survives KeepPool")
	}
	if st := slotStates(t, cfg)[filepath.Base(held.slot.dir)]; st != "claimed "+string(key2) {
		t.Fatalf("claimed slot is %q after KeepPool", st)
	}
	runProbes(t, "claimed slot after maintenance", &testutil.Probe{NS: held.ns}, []probe{tcp("allowed", peerA, 8080, true)})
	if _, err := os.Stat(filepath.Join(usedHeld, RecordFile)); err != nil {
		t.Fatalf("a used slot whose flock is held was destroyed: %v", err)
	}
	if got := poolNow(t, cfg); got != (PoolState{Free: 2, Claimed: 2}) {
		t.Fatalf("pool after maintenance: %+v", got)
	}
	lock.Close()
	if kept, err := KeepPool(t.Context(), cfg, 2); err != nil || kept.Destroyed != 1 || kept.Made != 0 {
		t.Fatalf("keep after the flock went: %+v %v", kept, err)
	}
}

// TestKeepPoolOneAtATime: a maintainer finds the lock held and does
// nothing; two at once prepare the pool once between them.
func TestKeepPoolOneAtATime(t *testing.T) {
	e := newEnv(t)
	t.Cleanup(func() {
		if err := Drain(context.Background(), e.cfg); err != nil {
			t.Error(err)
		}
	})
	if err := os.MkdirAll(filepath.Join(e.cfg.Root, "net"), 0o700); err != nil {
		t.Fatal(err)
	}
	lock, err := lockFile(filepath.Join(e.cfg.Root, "net", MaintainLock), false)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := KeepPool(t.Context(), e.cfg, 2)
	if err != nil || !kept.Busy || kept.Made != 0 {
		t.Fatalf("keep while another holds the lock: %+v %v", kept, err)
	}
	if got := poolNow(t, e.cfg); got != (PoolState{}) {
		t.Fatalf("a busy maintainer touched the pool: %+v", got)
	}
	lock.Close()
	var wg sync.WaitGroup
	res := make([]Kept, 2)
	errs := make([]error, 2)
	for i := range res {
		wg.Go(func() { res[i], errs[i] = KeepPool(t.Context(), e.cfg, 2) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if res[0].Made+res[1].Made != 2 {
		t.Fatalf("two maintainers at once made %d and %d slots, want 2 between them", res[0].Made, res[1].Made)
	}
	if got := poolNow(t, e.cfg); got != (PoolState{Free: 2}) {
		t.Fatalf("pool: %+v", got)
	}
	if _, err := KeepPool(t.Context(), e.cfg, -1); err == nil {
		t.Fatal("KeepPool accepted a negative size")
	}
}

// TestKillDuringDeferredSetup SIGKILLs a process while Begin makes a
// network as a slot of its own (DeferRemoval, empty pool), at every step,
// and checks that gc's path (Reclaim of the sandbox, then Maintain)
// leaves nothing: no slot directory, record, link or namespace.
func TestKillDuringDeferredSetup(t *testing.T) {
	e := newEnv(t)
	for _, step := range []string{"slot-dir", "slot-claimed", "record", "lease", "netns", "veth", "sandbox-rules", "host-rules", "done"} {
		t.Run(step, func(t *testing.T) {
			dir, key := e.sandboxDir(t, "deferred-killed-at-"+step)
			runKilledHelper(t, helperSpec{Root: e.cfg.Root, NetnsDir: e.cfg.NetnsDir, Resolver: e.cfg.Resolver,
				Dir: dir, Key: string(key), KillAt: step, Rules: []string{"203.0.113.0/24"}, Deferred: true})
			if st := poolNow(t, e.cfg); st.Orphaned != 1 {
				t.Fatalf("after a kill at %s: pool %+v, want one orphaned slot", step, st)
			}
			if err := Reclaim(dir); err != nil {
				t.Fatalf("reclaim: %v", err)
			}
			if _, err := Maintain(t.Context(), e.cfg); err != nil {
				t.Fatalf("maintain: %v", err)
			}
			ents, _ := os.ReadDir(e.cfg.slotsDir())
			mounts, _ := os.ReadDir(e.cfg.NetnsDir)
			links, err := testutil.LeakedLinks(IfPrefix)
			if err != nil {
				t.Fatal(err)
			}
			if rec, _ := readRecord(dir, RecordFile); rec != nil || len(ents) > 0 || len(mounts) > 0 || len(links) > 0 {
				t.Fatalf("left after a kill at %s and gc: record %v, slots %v, namespaces %v, links %v", step, rec, ents, mounts, links)
			}
		})
	}
}

// TestStaleNewSlotDir: a slot directory still under its temporary name
// whose maker died is removed by Maintain; one whose maker still holds its
// flock is left alone.
func TestStaleNewSlotDir(t *testing.T) {
	testutil.RequireHostNetNS(t)
	cfg := Config{Root: t.TempDir()}
	c, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.slotsDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	dead, live := filepath.Join(c.slotsDir(), newSlotPrefix+"dead"), filepath.Join(c.slotsDir(), newSlotPrefix+"live")
	for _, d := range []string{dead, live} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dead, slotLock), nil, 0o600)
	lock, err := lockFile(filepath.Join(live, slotLock), false)
	if err != nil {
		t.Fatal(err)
	}
	// Old enough to be a dead maker's; a fresh unlocked one (a maker
	// between its mkdir and its lock) must stay.
	old := time.Now().Add(-2 * staleNewAge)
	for _, d := range []string{dead, live} {
		if err := os.Chtimes(d, old, old); err != nil {
			t.Fatal(err)
		}
	}
	fresh := filepath.Join(c.slotsDir(), newSlotPrefix+"fresh")
	if err := os.Mkdir(fresh, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Maintain(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("a dead maker's unfinished slot directory survives Maintain: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("Maintain removed a slot directory its maker still holds: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("Maintain removed a fresh slot directory its maker may still be making: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fresh, slotLock)); !os.IsNotExist(err) {
		t.Errorf("Maintain created a lock file in a slot directory being made: %v", err)
	}
	if err := os.Chtimes(fresh, old, old); err != nil {
		t.Fatal(err)
	}
	lock.Close()
	if err := Drain(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(c.slotsDir()); len(ents) > 0 {
		t.Errorf("Drain left %v", ents)
	}
}

// TestMaintainLeavesASlotFreedMeanwhile: Maintain reads a slot's state
// before it takes the slot's lock; a slot that is free by the time it
// holds the lock (its maker finished in between) is left alone.
func TestMaintainLeavesASlotFreedMeanwhile(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg
	e.fillPool(t, 1)
	c, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(c.slotsDir())
	if err != nil || len(ents) != 1 {
		t.Fatalf("slots %v %v", ents, err)
	}
	sdir := filepath.Join(c.slotsDir(), ents[0].Name())
	if destroyed, err := destroySlot(sdir, "", true); destroyed || err != nil {
		t.Fatalf("Maintain's destroy of a free slot: destroyed %t, %v", destroyed, err)
	}
	if st := poolNow(t, cfg); st != (PoolState{Free: 1}) {
		t.Errorf("pool %+v, want the one free slot", st)
	}
}
