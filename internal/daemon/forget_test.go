package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/store"
)

// TestForgetReclaimedDataDir: gc forgets the rows of reclaimed sandboxes
// in the data directory's store, not the root's; and leaves them alone
// while a daemon holds the lock of the root or of the data directory (a
// daemon of another root sharing the store).
func TestForgetReclaimedDataDir(t *testing.T) {
	ctx := context.Background()
	root, data := t.TempDir(), t.TempDir()
	st, err := store.Open(ctx, datadir.Path(data))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	for _, id := range []string{"dead", "alive"} {
		if err := st.InsertSandbox(ctx, &store.SandboxRow{ID: id, BackendID: id, Backend: BackendJail, State: store.StateRunning,
			Token: []byte("0123456789abcdef"), Created: now}); err != nil {
			t.Fatal(err)
		}
	}
	keys := []sandbox.Key{sandbox.KeyOf("dead")}
	rows := func() []string {
		t.Helper()
		rs, err := st.Sandboxes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range rs {
			ids = append(ids, r.ID)
		}
		return ids
	}

	// The root has no store: nothing to forget there.
	if n, err := ForgetReclaimed(ctx, root, root, keys); n != 0 || err != nil {
		t.Fatalf("forget in the root: %d, %v", n, err)
	}
	if _, err := os.Stat(datadir.Path(root)); !os.IsNotExist(err) {
		t.Fatalf("forget made a store in the root: %v", err)
	}
	for _, dir := range []string{root, data} {
		lock, err := lockRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		n, err := ForgetReclaimed(ctx, root, data, keys)
		lock.Close()
		if n != 0 || err != nil {
			t.Fatalf("forget beside a daemon holding %s: %d, %v", filepath.Base(dir), n, err)
		}
		if got := rows(); len(got) != 2 {
			t.Fatalf("rows beside a daemon holding %s: %v", filepath.Base(dir), got)
		}
	}
	if n, err := ForgetReclaimed(ctx, root, data, keys); n != 1 || err != nil {
		t.Fatalf("forget: %d, %v; want 1", n, err)
	}
	if got := rows(); len(got) != 1 || got[0] != "alive" {
		t.Errorf("rows after forget: %v, want alive only", got)
	}
}
