package store

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ironclaw.db")
	s, err := Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, p
}

func TestOpenCreatesPrivateFileAtCurrentVersion(t *testing.T) {
	s, p := openTemp(t)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	v, err := s.Version(context.Background())
	if err != nil || v != SchemaVersion() {
		t.Fatalf("version %d, %v; want %d", v, err, SchemaVersion())
	}
	// Reopening is a no-op migration.
	s.Close()
	s2, err := Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

func TestMigrationsApplyInOrderAndRefuseNewerFiles(t *testing.T) {
	ctx := context.Background()
	s, p := openTemp(t)
	extra := append(append([]migration{}, migrations...), migration{len(migrations) + 1, "test table", []string{
		`CREATE TABLE t (x INTEGER)`,
	}})
	if err := applyMigrations(ctx, s.db, extra); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatalf("table of the new migration missing: %v", err)
	}
	s.Close()
	// This binary only knows len(migrations): the file is now too new.
	_, err := Open(ctx, p)
	if !errors.Is(err, ErrTooNew) {
		t.Fatalf("open newer file: %v, want ErrTooNew", err)
	}
}

func TestFailedMigrationRollsBack(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	bad := append(append([]migration{}, migrations...), migration{len(migrations) + 1, "broken", []string{
		`CREATE TABLE half (x INTEGER)`,
		`THIS IS NOT SQL`,
	}})
	if err := applyMigrations(ctx, s.db, bad); err == nil {
		t.Fatal("broken migration applied")
	}
	if v, _ := s.Version(ctx); v != SchemaVersion() {
		t.Fatalf("version %d after failed migration, want %d", v, SchemaVersion())
	}
	var n int
	s.db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'half'`).Scan(&n)
	if n != 0 {
		t.Fatal("half-applied migration left a table behind")
	}
}

func TestAuditAppendAndFilter(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	base := time.Unix(1700000000, 0)
	recs := []AuditRecord{
		{Time: base, Server: "fs", Tool: "read_file", Arguments: json.RawMessage(`{"path":"/a"}`), Decision: DecisionAllowed, Duration: time.Millisecond, ResultBytes: 10},
		{Time: base.Add(time.Second), Server: "fs", Tool: "write_file", Decision: DecisionApproved, Approver: "uid 0 (root)"},
		{Time: base.Add(2 * time.Second), Server: "web", Tool: "fetch", Decision: DecisionDenied, Error: "denied"},
	}
	for i := range recs {
		if _, err := s.AppendAudit(ctx, &recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.Audit(ctx, AuditFilter{})
	if err != nil || len(all) != 3 {
		t.Fatalf("all: %d records, %v", len(all), err)
	}
	if all[0].Tool != "read_file" || string(all[0].Arguments) != `{"path":"/a"}` || all[0].Duration != time.Millisecond || !all[0].Time.Equal(base) {
		t.Errorf("round trip: %+v", all[0])
	}
	if string(all[1].Arguments) != "{}" {
		t.Errorf("empty arguments stored as %q", all[1].Arguments)
	}
	for _, tc := range []struct {
		f    AuditFilter
		want []string
	}{
		{AuditFilter{Server: "fs"}, []string{"read_file", "write_file"}},
		{AuditFilter{Decision: DecisionDenied}, []string{"fetch"}},
		{AuditFilter{Since: base.Add(time.Second)}, []string{"write_file", "fetch"}},
		{AuditFilter{Until: base.Add(time.Second)}, []string{"read_file"}},
		{AuditFilter{Limit: 2}, []string{"write_file", "fetch"}},
		{AuditFilter{AfterID: all[1].ID}, []string{"fetch"}},
		{AuditFilter{Tool: "nope"}, nil},
	} {
		got, err := s.Audit(ctx, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range got {
			names = append(names, r.Tool)
		}
		if len(names) != len(tc.want) {
			t.Errorf("%+v: got %v, want %v", tc.f, names, tc.want)
			continue
		}
		for i := range names {
			if names[i] != tc.want[i] {
				t.Errorf("%+v: got %v, want %v", tc.f, names, tc.want)
			}
		}
	}
	if _, err := s.AppendAudit(ctx, &AuditRecord{Server: "x", Tool: "y", Decision: "allowed", Arguments: json.RawMessage("{bad")}); err == nil {
		t.Error("invalid JSON arguments accepted")
	}
	if _, err := s.AppendAudit(ctx, &AuditRecord{Tool: "y", Decision: "allowed"}); err == nil {
		t.Error("record without server accepted")
	}
}

// TestConcurrentWritersAcrossHandles runs two handles on one file, as the
// gateway and the CLI do from different processes.
func TestConcurrentWritersAcrossHandles(t *testing.T) {
	ctx := context.Background()
	s1, p := openTemp(t)
	s2, err := Open(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var wg sync.WaitGroup
	for _, s := range []*Store{s1, s2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := s.AppendAudit(ctx, &AuditRecord{Server: "s", Tool: "t", Decision: DecisionAllowed}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got, err := s1.Audit(ctx, AuditFilter{})
	if err != nil || len(got) != 100 {
		t.Fatalf("%d records, %v; want 100", len(got), err)
	}
}
