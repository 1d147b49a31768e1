package testroot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestRemoveParentsFailsOnAGroupLeft: a group left in a root's parent is
// reported, naming it, and the parent is kept; once the group goes the
// parents go.
func TestRemoveParentsFailsOnAGroupLeft(t *testing.T) {
	testutil.RequireRoot(t)
	h, err := cgroup.Detect()
	if err != nil {
		t.Fatal(err)
	}
	testutil.Require(t, h.Available["pids"], "needs the pids controller")
	dir := testutil.SearchableTempDir(t)
	root, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := sandbox.Resources{Pids: 10}
	g, err := h.Create("/"+root.Name()+"/left", r)
	if err != nil {
		t.Fatal(err)
	}
	err = RemoveParents(dir)
	if err == nil || !strings.Contains(err.Error(), "group left") || !strings.Contains(err.Error(), "leaked") {
		t.Errorf("RemoveParents with a group left = %v, want it named as leaked", err)
	}
	if err := g.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := RemoveParents(dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range h.ParentDirs(root.Name()) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s remains (%v)", p, err)
		}
	}
}

// TestLeaked: a parent made after the snapshot is a leak once its root is
// gone, not while the root exists; one that existed before is not.
func TestLeaked(t *testing.T) {
	testutil.RequireRoot(t)
	h, err := cgroup.Detect()
	if err != nil {
		t.Fatal(err)
	}
	testutil.Require(t, h.Available["pids"], "needs the pids controller")
	before := Snapshot()
	dir := testutil.SearchableTempDir(t)
	root, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := h.Create("/"+root.Name()+"/g", sandbox.Resources{Pids: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Destroy(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, _, err := h.RemoveParents(root.Name()); err != nil {
			t.Error(err)
		}
	})
	// Other test binaries may leak meanwhile: only this root's parent
	// is looked for.
	if err := before.Leaked(); err != nil && strings.Contains(err.Error(), root.Name()) {
		t.Errorf("Leaked while the root exists: %v", err)
	}
	if err := os.RemoveAll(root.Dir()); err != nil {
		t.Fatal(err)
	}
	err = before.Leaked()
	if err == nil || !strings.Contains(err.Error(), root.Name()) {
		t.Errorf("Leaked after the root went = %v, want %s named", err, root.Name())
	}
	if err := Snapshot().Leaked(); err != nil && strings.Contains(err.Error(), root.Name()) {
		t.Errorf("a parent that was there at the snapshot counted: %v", err)
	}
}
