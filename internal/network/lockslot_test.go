package network

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// TestSlotLockNeverRecreated: a claim or a destroyer that finds a slot
// directory without its lock file and without its state (another
// destroyer's RemoveAll is under way: it removes the state first) passes it
// by and does not make the lock file again, which would leave that removal
// with a directory that is not empty. A slot that still has its state but
// lost its lock file is locked and destroyed as usual.
func TestSlotLockNeverRecreated(t *testing.T) {
	cfg := Config{Root: t.TempDir()}
	c, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	slot := func(name string, files ...string) string {
		sdir := filepath.Join(cfg.slotsDir(), string(sandbox.KeyOf(name)))
		if err := os.MkdirAll(sdir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(sdir, f), []byte(stateFree), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return sdir
	}
	p := policyOf(t, "203.0.113.10:8080/tcp")

	removing := slot("slot:being-removed", slotFor)
	if n, ok, err := tryClaim(t.Context(), c, removing, t.TempDir(), sandbox.KeyOf("claimer"), p); ok || n != nil || err != nil {
		t.Fatalf("claim of a slot being removed: %v %v %v", n, ok, err)
	}
	if _, err := os.Stat(filepath.Join(removing, slotLock)); !os.IsNotExist(err) {
		t.Fatalf("a claim made the lock file of a slot being removed again: %v", err)
	}
	if destroyed, err := destroySlot(removing, "", false); destroyed || err != nil {
		t.Fatalf("destroy of a slot being removed: %v %v", destroyed, err)
	}
	if _, err := os.Stat(filepath.Join(removing, slotLock)); !os.IsNotExist(err) {
		t.Fatalf("a destroyer made the lock file of a slot being removed again: %v", err)
	}
	if _, err := Claim(t.Context(), cfg, t.TempDir(), sandbox.KeyOf("claimer"), p); !errors.Is(err, ErrPoolEmpty) {
		t.Fatalf("claim from a pool whose only slot is being removed: %v, want ErrPoolEmpty", err)
	}

	lost := slot("slot:lost-its-lock", slotState)
	if destroyed, err := destroySlot(lost, "", false); !destroyed || err != nil {
		t.Fatalf("destroy of a slot that lost its lock file: %v %v", destroyed, err)
	}
	if _, err := os.Stat(lost); !os.IsNotExist(err) {
		t.Fatalf("slot that lost its lock file survives its destruction: %v", err)
	}
}
