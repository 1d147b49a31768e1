package network

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"golang.org/x/sys/unix"
)

var errInjected = errors.New("injected failure")

// blockNetnsRemoval makes the namespace bind mount at path impossible to
// remove (netns.Remove fails): it unmounts it and puts a non-empty
// directory in its place. The returned func clears the obstacle.
func blockNetnsRemoval(t *testing.T, path string) func() {
	t.Helper()
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "busy"), 0o700); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.RemoveAll(path); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFailedCloseKeepsRecord: when Close cannot remove every object its
// record names, the record (and the lease it names) stays, so that Reclaim
// can finish the job later; once the obstacle is gone, Reclaim leaves
// nothing.
func TestFailedCloseKeepsRecord(t *testing.T) {
	e := newEnv(t)
	dir, key := e.sandboxDir(t, "stuck")
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	n, err := Setup(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	clear := blockNetnsRemoval(t, n.Path())
	if err := n.Close(); err == nil {
		clear()
		Reclaim(dir)
		t.Fatal("Close succeeded although the namespace could not be removed")
	}
	rec, err := readRecord(dir, RecordFile)
	if err != nil {
		t.Fatal(err)
	}
	if rec == nil || rec.Lease == nil {
		clear()
		t.Fatalf("a failed Close removed the record (%+v): what it names can never be reclaimed", rec)
	}
	if _, err := os.Stat(rec.Lease.Path); err != nil {
		t.Errorf("lease of a network whose removal failed: %v", err)
	}
	clear()
	if err := Reclaim(dir); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, e, dir, NamesOf(key)); len(left) > 0 {
		t.Fatalf("left behind after Reclaim: %v", left)
	}
}

// TestFailedSlotPrepareKeepsSlot: a pool slot whose preparation fails and
// whose objects cannot all be removed keeps its directory and record (it
// is not "free", so nobody claims it) until Maintain destroys it.
func TestFailedSlotPrepareKeepsSlot(t *testing.T) {
	for _, step := range []string{"applied", "slot-rules"} {
		t.Run(step, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg
			var clear func()
			cfg.fail = func(name string) error {
				if name != step || clear != nil {
					return nil
				}
				mounts, err := filepath.Glob(filepath.Join(cfg.NetnsDir, "ic-*"))
				if err != nil || len(mounts) != 1 {
					t.Fatalf("slot namespace: %v %v", mounts, err)
				}
				clear = blockNetnsRemoval(t, mounts[0])
				return errInjected
			}
			if _, err := Fill(t.Context(), cfg, 1); !errors.Is(err, errInjected) {
				t.Fatalf("Fill: %v, want the injected failure", err)
			}
			if clear == nil {
				t.Fatalf("setup never reached %q", step)
			}
			ents, err := os.ReadDir(cfg.slotsDir())
			if err != nil || len(ents) != 1 {
				clear()
				Drain(t.Context(), e.cfg)
				t.Fatalf("a slot whose removal failed lost its directory: %v %v", ents, err)
			}
			if rec, err := readRecord(filepath.Join(cfg.slotsDir(), ents[0].Name()), RecordFile); err != nil || rec == nil {
				clear()
				t.Fatalf("slot record: %v %v", rec, err)
			}
			if st := slotStates(t, cfg)[ents[0].Name()]; st == stateFree {
				t.Fatal("a failed slot is marked free")
			}
			clear()
			if destroyed, err := Maintain(t.Context(), e.cfg); err != nil || destroyed != 1 {
				t.Fatalf("Maintain: destroyed %d, %v; want the failed slot", destroyed, err)
			}
			if ents, err := os.ReadDir(cfg.slotsDir()); err != nil || len(ents) != 0 {
				t.Fatalf("slots left: %v %v", ents, err)
			}
			if leases, err := os.ReadDir(filepath.Join(cfg.Root, "net", "leases")); err != nil || len(leases) != 0 {
				t.Fatalf("leases left: %v %v", leases, err)
			}
		})
	}
}

// TestReclaimRefusesForeignSlot: a sandbox record whose slot field was
// tampered with cannot make Reclaim destroy a directory that is not a
// slot of this root claimed by this sandbox; the record stays.
func TestReclaimRefusesForeignSlot(t *testing.T) {
	e := newEnv(t)
	dir, key := e.sandboxDir(t, "tampered")
	other := sandbox.KeyOf("other")
	// decoy makes a directory that looks like a free-to-lock slot whose
	// state says claimed by claimer.
	decoy := func(slotsDir string, claimer sandbox.Key) string {
		skey := sandbox.KeyOf("decoy:" + slotsDir + string(claimer))
		sdir := filepath.Join(slotsDir, string(skey))
		if err := os.MkdirAll(sdir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := writeRecord(sdir, RecordFile, &record{Version: 1, Key: string(skey), Names: NamesOf(skey), NetnsDir: e.cfg.NetnsDir}); err != nil {
			t.Fatal(err)
		}
		if err := writeState(filepath.Join(sdir, slotState), "claimed "+string(claimer)); err != nil {
			t.Fatal(err)
		}
		return sdir
	}
	for _, c := range []struct {
		name string
		slot string
	}{
		{"another root's slots", decoy(filepath.Join(t.TempDir(), "net", "slots"), key)},
		{"anywhere named slots", decoy(filepath.Join(t.TempDir(), "slots"), key)},
		{"a slot of this root claimed by another sandbox", decoy(e.cfg.slotsDir(), other)},
		{"not a slot key", func() string {
			p := filepath.Join(e.cfg.slotsDir(), "not-a-key")
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
			return p
		}()},
		{"relative path", filepath.Join("..", "..", "net", "slots", string(other))},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := &record{Version: 1, Key: string(key), Names: NamesOf(key), NetnsDir: e.cfg.NetnsDir, Slot: c.slot}
			if err := writeRecord(dir, RecordFile, rec); err != nil {
				t.Fatal(err)
			}
			if err := Reclaim(dir); err == nil {
				t.Error("Reclaim accepted a record naming a foreign slot")
			}
			if !filepath.IsAbs(c.slot) {
				return
			}
			if _, err := os.Stat(c.slot); err != nil {
				t.Errorf("Reclaim destroyed %s: %v", c.slot, err)
			}
			if got, err := readRecord(dir, RecordFile); err != nil || got == nil {
				t.Errorf("record gone after a refused Reclaim: %v %v", got, err)
			}
		})
	}
	if err := removeRecord(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(e.cfg.slotsDir(), "not-a-key")); err != nil {
		t.Fatal(err)
	}
	if err := Drain(t.Context(), e.cfg); err != nil {
		t.Fatal(err)
	}
}
