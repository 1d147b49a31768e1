package network

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func slotStates(t testing.TB, cfg Config) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, _ := os.ReadDir(filepath.Join(cfg.Root, "net", "slots"))
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(cfg.Root, "net", "slots", e.Name(), slotState))
		out[e.Name()] = string(b)
	}
	return out
}

// TestPool claims prepared slots, proves the policy on them with traffic,
// and checks that a used slot is never handed out again and is destroyed
// by Maintain, and that a crashed owner's slot is reclaimed.
func TestPool(t *testing.T) {
	e := newEnv(t)
	e.fillPool(t, 2)
	// A free slot lets nothing out.
	for name := range slotStates(t, e.cfg) {
		rec, err := readRecord(filepath.Join(e.cfg.Root, "net", "slots", name), RecordFile)
		if err != nil {
			t.Fatal(err)
		}
		tgt, err := rec.target()
		if err != nil {
			t.Fatal(err)
		}
		if tgt.Policy.Networked() {
			t.Fatalf("free slot has policy %v", tgt.Policy.Rules())
		}
		ns, err := netns.Open(rec.netnsPath())
		if err != nil {
			t.Fatal(err)
		}
		runProbes(t, "free slot", &testutil.Probe{NS: ns}, []probe{tcp("public peer", peerA, 8080, false), udp("public peer", peerA, 9090, false)})
		ns.Close()
	}
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	dir, key := e.sandboxDir(t, "pooled")
	n, err := Claim(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	runProbes(t, "pooled", &testutil.Probe{NS: n.ns}, []probe{
		tcp("allowed", peerA, 8080, true),
		tcp("other host", peerB, 8080, false),
		tcp("metadata", peerMeta, 8080, false),
	})
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatal(err, rep.Err)
	}
	used := filepath.Base(n.slot.dir)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if st := slotStates(t, e.cfg)[used]; st != stateUsed {
		t.Fatalf("closed slot is %q, want %q", st, stateUsed)
	}

	dir2, key2 := e.sandboxDir(t, "pooled-2")
	n2, err := Claim(t.Context(), e.cfg, dir2, key2, p)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(n2.slot.dir) == used {
		t.Fatal("a used slot was handed out again")
	}
	if _, err := Claim(t.Context(), e.cfg, t.TempDir(), key2, p); !errors.Is(err, ErrPoolEmpty) {
		t.Fatalf("claim from an empty pool: %v, want ErrPoolEmpty", err)
	}
	// Acquire falls back to Setup on an empty pool.
	dir3, key3 := e.sandboxDir(t, "acquired")
	n3, err := Acquire(t.Context(), e.cfg, dir3, key3, p)
	if err != nil {
		t.Fatal(err)
	}
	if n3.slot != nil || n3.File() == nil {
		t.Fatal("Acquire on an empty pool did not fall back to Setup")
	}
	if err := n3.Close(); err != nil {
		t.Fatal(err)
	}
	if destroyed, err := Maintain(t.Context(), e.cfg); err != nil || destroyed != 1 {
		t.Fatalf("maintain: destroyed %d, %v; want the one used slot", destroyed, err)
	}
	if _, ok := slotStates(t, e.cfg)[used]; ok {
		t.Fatal("used slot still exists after Maintain")
	}
	// While the slot's flock is held, Reclaim cannot destroy it, so it
	// must keep the sandbox's record (and say so).
	if err := Reclaim(dir2); !errors.Is(err, errSlotBusy) {
		t.Fatalf("Reclaim of a sandbox whose slot is held: %v, want errSlotBusy", err)
	}
	if rec, err := readRecord(dir2, RecordFile); err != nil || rec == nil {
		t.Fatalf("Reclaim dropped the record of a slot it could not destroy: %v %v", rec, err)
	}
	// n2's owner "dies": its flock goes, and GC reclaims the sandbox dir.
	slotDir := n2.slot.dir
	n2.slot.lock.Close()
	n2.eg = nil
	if err := Reclaim(dir2); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(slotDir); !os.IsNotExist(err) {
		t.Fatalf("crashed owner's slot survives Reclaim: %v", err)
	}
	if rec, _ := readRecord(dir2, RecordFile); rec != nil {
		t.Fatal("sandbox record survives Reclaim")
	}
}

// TestLoopbackOnly: a policy that allows nothing needs no network objects;
// the jail makes a private namespace itself.
func TestLoopbackOnly(t *testing.T) {
	e := newEnv(t)
	dir, key := e.sandboxDir(t, "offline")
	n, err := Acquire(t.Context(), e.cfg, dir, key, firewall.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if n.File() != nil || n.Addr().IsValid() {
		t.Fatal("a loopback-only sandbox got a namespace or an address")
	}
	if err := n.Update(t.Context(), firewall.Policy{}); !errors.Is(err, sandbox.ErrUnsupported) {
		t.Fatalf("Update of a loopback-only sandbox: %v, want ErrUnsupported", err)
	}
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatal(err, rep.Err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, e, dir, NamesOf(key)); len(left) > 0 {
		t.Fatalf("left: %v", left)
	}
	if _, err := Setup(t.Context(), e.cfg, dir, "not-a-key", firewall.Policy{}); err == nil {
		t.Fatal("Setup accepted an invalid key")
	}
}

// TestUsedSlotIsShut: once its sandbox ends, a used slot (which lives on
// until Maintain destroys it) lets nothing through: neither new
// connections from its namespace nor one a process left open.
func TestUsedSlotIsShut(t *testing.T) {
	e := newEnv(t)
	serveEcho(t, e.inet.NS, netip.AddrPortFrom(peerA, 7000))
	e.fillPool(t, 1)
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp", "203.0.113.10:7000/tcp"})
	dir, key := e.sandboxDir(t, "shut")
	n, err := Claim(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	srec, err := readRecord(n.slot.dir, RecordFile)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.Open(srec.netnsPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	left, err := dialIn(ns, "tcp", netip.AddrPortFrom(peerA, 7000).String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer left.Close()
	if err := echo(left, "before"); err != nil {
		t.Fatal(err)
	}
	runProbes(t, "claimed", &testutil.Probe{NS: ns}, []probe{tcp("allowed", peerA, 8080, true)})
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	runProbes(t, "used", &testutil.Probe{NS: ns}, []probe{tcp("allowed while claimed", peerA, 8080, false)})
	if err := echo(left, "after"); err == nil {
		t.Error("a connection left open in a used slot still works")
	}
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if down, err := netns.IsDown(host, srec.Names.HostIf); err != nil || !down {
		t.Errorf("used slot's host link: down %v, %v", down, err)
	}
	// Set back up from the host (as a host agent could), the host side
	// alone reopens nothing: the sandbox's side stays down.
	if down, err := netns.IsDown(ns, SandboxIf); err != nil || !down {
		t.Errorf("used slot's sandbox link: down %v, %v", down, err)
	}
	h, err := host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(srec.Names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	runProbes(t, "host side up again", &testutil.Probe{NS: ns}, []probe{tcp("allowed while claimed", peerA, 8080, false)})
}

// TestBeginWaitsForRules: Begin returns a pool slot's namespace before its
// policy is installed; Wait does not return until the rules are applied
// and verified, and reports a failed installation, after which Close
// leaves nothing behind.
func TestBeginWaitsForRules(t *testing.T) {
	e := newEnv(t)
	e.fillPool(t, 2)
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})

	t.Run("held installation", func(t *testing.T) {
		release := make(chan struct{})
		cfg := e.cfg
		// Held before either ruleset is committed: the slot's prepared
		// rules are all there is.
		cfg.step = func(name string) {
			if name == "rules-built" {
				<-release
			}
		}
		dir, key := e.sandboxDir(t, "begin")
		n, err := Begin(t.Context(), cfg, dir, key, p)
		if err != nil {
			close(release)
			t.Fatal(err)
		}
		if n.File() == nil || !n.Addr().IsValid() || !strings.Contains(string(n.ResolvConf()), "no DNS") {
			t.Errorf("a pending network has no namespace, address or resolv.conf: %v %v %q", n.File(), n.Addr(), n.ResolvConf())
		}
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		err = n.Wait(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Wait returned %v while the installation was held, want a timeout", err)
		}
		// Nothing gets out of a pending network, not even to what the
		// policy being installed allows.
		runProbes(t, "pending", &testutil.Probe{NS: n.ns}, []probe{
			tcp("allowed once installed", peerA, 8080, false),
			tcp("other host", peerB, 8080, false),
		})
		close(release)
		if err := n.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		runProbes(t, "installed", &testutil.Probe{NS: n.ns}, []probe{
			tcp("allowed", peerA, 8080, true),
			tcp("other host", peerB, 8080, false),
		})
		if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
			t.Fatal(err, rep.Err)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("failed installation", func(t *testing.T) {
		cfg := e.cfg
		cfg.fail = failOnce("applied")
		dir, key := e.sandboxDir(t, "begin-fails")
		n, err := Begin(t.Context(), cfg, dir, key, p)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Wait(t.Context()); !errors.Is(err, errInjected) {
			t.Fatalf("Wait: %v, want the injected failure", err)
		}
		if _, err := n.Verify(t.Context()); err == nil {
			t.Error("Verify of a network whose installation failed succeeded")
		}
		slot := n.slot.dir
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if st := slotStates(t, e.cfg)[filepath.Base(slot)]; st != stateUsed {
			t.Errorf("slot of a failed installation is %q, want %q", st, stateUsed)
		}
		if _, err := os.Stat(filepath.Join(dir, RecordFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("record left after Close: %v", err)
		}
	})
}
