package store

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/datadir"
)

// TestStrandedMove writes a record into a store in a state root, finds it
// stranded once the data directory is elsewhere, runs the move command it
// suggests (on paths with a space and a quote), and reads the record back
// from the data directory.
func TestStrandedMove(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	root := filepath.Join(base, "run ic")
	data := filepath.Join(base, "var lib's", "ironclaw")
	if err := os.MkdirAll(root, 0o711); err != nil {
		t.Fatal(err)
	}
	if se, err := datadir.Stranded(root, root); se != nil || err != nil {
		t.Fatalf("datadir.Stranded(root, root) = %v, %v; want nothing", se, err)
	}
	if se, err := datadir.Stranded(root, data); se != nil || err != nil {
		t.Fatalf("Stranded with no store = %v, %v; want nothing", se, err)
	}
	st, err := Open(ctx, datadir.Path(root))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AppendAudit(ctx, &AuditRecord{Time: time.Now(), Server: "s", Tool: "before-upgrade", Decision: DecisionAllowed}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	se, err := datadir.Stranded(root, data)
	if err != nil || se == nil || se.Path != datadir.Path(root) || se.Both {
		t.Fatalf("Stranded = %+v, %v; want the root's store", se, err)
	}
	msg := se.Error()
	for _, want := range []string{datadir.Path(root), "stop every ironclaw daemon and gateway", se.MoveCommand(), "--data-dir"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if out, err := exec.Command("sh", "-c", se.MoveCommand()).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", se.MoveCommand(), err, out)
	}
	if se, err := datadir.Stranded(root, data); se != nil || err != nil {
		t.Fatalf("after the move: %+v, %v; want nothing stranded", se, err)
	}
	if fi, err := os.Stat(data); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir after the move: %v %v", fi, err)
	}
	st, err = Open(ctx, datadir.Path(data))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := st.Audit(ctx, AuditFilter{})
	st.Close()
	if err != nil || len(recs) != 1 || recs[0].Tool != "before-upgrade" {
		t.Fatalf("moved store holds %+v, %v", recs, err)
	}

	// A store in both places: the old one is moved aside, never over
	// the current one.
	st, err = Open(ctx, datadir.Path(root))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	se, err = datadir.Stranded(root, data)
	if err != nil || se == nil || !se.Both {
		t.Fatalf("Stranded with two stores = %+v, %v", se, err)
	}
	if out, err := exec.Command("sh", "-c", se.MoveCommand()).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", se.MoveCommand(), err, out)
	}
	if _, err := os.Stat(filepath.Join(data, "earlier", datadir.FileName)); err != nil {
		t.Errorf("old store not moved aside: %v", err)
	}
	st, err = Open(ctx, datadir.Path(data))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if recs, err := st.Audit(ctx, AuditFilter{}); err != nil || len(recs) != 1 {
		t.Errorf("current store after moving the old one aside: %+v, %v", recs, err)
	}
}
