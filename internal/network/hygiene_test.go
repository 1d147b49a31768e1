package network

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ironclaw/ironclaw/internal/firewall"
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
