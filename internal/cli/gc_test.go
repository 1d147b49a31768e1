package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// TestLeanGCSaysRecordsStay: the lean gc, which cannot open the daemon's
// store, says that the records of what it reclaimed stay in it, where the
// store is, and how to drop them; without a store or without a reclaimed
// sandbox it says nothing.
func TestLeanGCSaysRecordsStay(t *testing.T) {
	dir := t.TempDir()
	keys := []sandbox.Key{"aaaaaaaaaaaaaaaaaaaaaaaaaa"}
	var b strings.Builder
	if err := keptRecords(&b, dir, keys); err != nil || b.Len() != 0 {
		t.Fatalf("no store: %v %q; want nothing said", err, b.String())
	}
	if err := os.WriteFile(datadir.Path(dir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := keptRecords(&b, dir, nil); err != nil || b.Len() != 0 {
		t.Fatalf("nothing reclaimed: %v %q; want nothing said", err, b.String())
	}
	if err := keptRecords(&b, dir, keys); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1 reclaimed sandbox(es)", filepath.Join(dir, "ironclaw.db"), "ironclawd gc", "next start"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("lean gc said %q; want it to contain %q", b.String(), want)
		}
	}
}
