package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/store"
)

// ForgetReclaimed removes from the daemon store in the data directory
// dataDir (see datadir.DirFor) the records of the sandboxes whose state
// directories `ironclaw gc` reclaimed from the state root root (by their
// keys), and returns how many it removed. A data directory without a store
// has nothing to forget. While a daemon serves the root or the data
// directory it does nothing: that daemon owns its records and drops those
// of sandboxes that died.
// Only records of reclaimed directories go: a reclaimed directory's
// sandbox is dead, so its record can never be re-attached.
func ForgetReclaimed(ctx context.Context, root, dataDir string, keys []sandbox.Key) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	path := datadir.Path(dataDir)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("forget reclaimed sandboxes: %w", err)
	}
	dirs := []string{root}
	if filepath.Clean(dataDir) != filepath.Clean(root) {
		dirs = append(dirs, dataDir)
	}
	for _, d := range dirs {
		lock, err := lockRoot(d)
		if errors.Is(err, ErrBusy) {
			return 0, nil
		}
		if err != nil {
			return 0, fmt.Errorf("forget reclaimed sandboxes: %w", err)
		}
		// Released at once: a daemon that starts meanwhile may read
		// these rows, finds their sandboxes gone and drops them too,
		// which is the same outcome; holding the lock would fail its
		// start instead.
		lock.Close()
	}
	st, err := store.Open(ctx, path)
	if err != nil {
		return 0, fmt.Errorf("forget reclaimed sandboxes: %w", err)
	}
	defer st.Close()
	rows, err := st.Sandboxes(ctx)
	if err != nil {
		return 0, fmt.Errorf("forget reclaimed sandboxes: %w", err)
	}
	gone := make(map[sandbox.Key]bool, len(keys))
	for _, k := range keys {
		gone[k] = true
	}
	n := 0
	var errs []error
	for _, r := range rows {
		if !gone[sandbox.KeyOf(r.BackendID)] {
			continue
		}
		// Guarded: a daemon may have started meanwhile, dropped this
		// row and let a client re-create the ID.
		deleted, err := st.DeleteSandboxRecord(ctx, &r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if deleted {
			n++
		}
	}
	return n, errors.Join(errs...)
}
