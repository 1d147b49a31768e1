package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// ErrTooNew marks a store file written by a newer IronClaw, whose schema
// this binary does not know.
var ErrTooNew = errors.New("store schema is newer than this binary")

// Store is an open store. It is safe for concurrent use.
type Store struct {
	// db writes, through one connection: SQLite has one writer at a time,
	// and writers queued here hand over at once, where extra connections
	// would sleep in SQLite's busy handler (1 ms and up) and, beyond
	// database/sql's two idle ones, be closed and reopened (pragmas and
	// schema parsed again) around every burst of concurrent creates.
	db *sql.DB
	// rdb reads: WAL readers run beside the writer and never hold it up.
	rdb *sql.DB
	// The statements every create and destroy runs, parsed once.
	insertSandbox, setSandboxState, deleteSandbox *sql.Stmt
}

// maxReaders bounds the read connections of a Store.
const maxReaders = 4

// migration is one schema step. Applied migrations are never edited; new
// steps are appended with the next version.
type migration struct {
	version int
	name    string
	stmts   []string
}

// migrations is the schema history, in order. Version N is migrations[N-1].
var migrations = []migration{
	{1, "audit log", []string{
		`CREATE TABLE audit (
			id           INTEGER PRIMARY KEY AUTOINCREMENT,
			time_ns      INTEGER NOT NULL,
			gateway      TEXT NOT NULL DEFAULT '',
			session      TEXT NOT NULL DEFAULT '',
			server       TEXT NOT NULL,
			tool         TEXT NOT NULL,
			arguments    TEXT NOT NULL DEFAULT '{}',
			class        TEXT NOT NULL DEFAULT '',
			decision     TEXT NOT NULL,
			reason       TEXT NOT NULL DEFAULT '',
			approver     TEXT NOT NULL DEFAULT '',
			duration_ns  INTEGER NOT NULL DEFAULT 0,
			result_bytes INTEGER NOT NULL DEFAULT 0,
			error        TEXT NOT NULL DEFAULT ''
		)`,
		`CREATE INDEX audit_time ON audit(time_ns)`,
		`CREATE INDEX audit_server_tool ON audit(server, tool)`,
	}},
	{2, "daemon sandboxes and events", []string{
		// id is the user-visible ID; backend_id names the kernel objects
		// (sandbox.KeyOf(backend_id)). They differ for a sandbox taken
		// from the warm pool, which was made under its pool ID.
		`CREATE TABLE sandboxes (
			id          TEXT PRIMARY KEY,
			backend_id  TEXT NOT NULL UNIQUE,
			backend     TEXT NOT NULL,
			state       TEXT NOT NULL,
			spec        TEXT NOT NULL DEFAULT '{}',
			labels      TEXT NOT NULL DEFAULT '{}',
			token       BLOB NOT NULL,
			pool_class  TEXT NOT NULL DEFAULT '',
			ttl_ns      INTEGER NOT NULL DEFAULT 0,
			idle_ns     INTEGER NOT NULL DEFAULT 0,
			created_ns  INTEGER NOT NULL,
			started_ns  INTEGER NOT NULL DEFAULT 0,
			claimed_ns  INTEGER NOT NULL DEFAULT 0
		)`,
		`CREATE TABLE sandbox_events (
			seq      INTEGER PRIMARY KEY,
			time_ns  INTEGER NOT NULL,
			sandbox  TEXT NOT NULL,
			type     TEXT NOT NULL,
			data     TEXT NOT NULL DEFAULT '{}'
		)`,
		`CREATE INDEX sandbox_events_sandbox ON sandbox_events(sandbox, seq)`,
	}},
}

// SchemaVersion is the schema version this binary writes.
func SchemaVersion() int { return len(migrations) }

// Open opens (creating it with mode 0600 if needed) the store at path and
// brings its schema up to date. The parent directory must exist.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("open store: empty path")
	}
	// Create the file ourselves so its mode is 0600 from the first byte:
	// the audit log holds tool arguments.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	file := "file:" + (&url.URL{Path: path}).EscapedPath() + "?"
	db, err := sql.Open("sqlite", file+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&s.insertSandbox, insertSandboxSQL},
		{&s.setSandboxState, setSandboxStateSQL},
		{&s.deleteSandbox, deleteSandboxSQL},
	} {
		if *p.stmt, err = db.PrepareContext(ctx, p.sql); err != nil {
			db.Close()
			return nil, fmt.Errorf("open store %s: prepare: %w", path, err)
		}
	}
	q.Add("_pragma", "query_only(1)")
	if s.rdb, err = sql.Open("sqlite", file+q.Encode()); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s.rdb.SetMaxOpenConns(maxReaders)
	s.rdb.SetMaxIdleConns(maxReaders)
	return s, nil
}

// Close closes the store.
func (s *Store) Close() error {
	if err := errors.Join(s.insertSandbox.Close(), s.setSandboxState.Close(), s.deleteSandbox.Close(),
		s.db.Close(), s.rdb.Close()); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// Version returns the schema version of the open file.
func (s *Store) Version(ctx context.Context) (int, error) {
	var v int
	if err := s.rdb.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

func (s *Store) migrate(ctx context.Context) error {
	return applyMigrations(ctx, s.db, migrations)
}

func applyMigrations(ctx context.Context, db *sql.DB, ms []migration) error {
	for {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate: begin: %w", err)
		}
		var v int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate: read schema version: %w", err)
		}
		if v > len(ms) {
			tx.Rollback()
			return fmt.Errorf("%w: file has version %d, this binary knows up to %d", ErrTooNew, v, len(ms))
		}
		if v == len(ms) {
			return tx.Rollback()
		}
		m := ms[v]
		for _, stmt := range m.stmts {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				tx.Rollback()
				return fmt.Errorf("migrate to version %d (%s): %w", m.version, m.name, err)
			}
		}
		// PRAGMA does not take bind parameters; the version is an int.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", m.version)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate to version %d: set version: %w", m.version, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate to version %d: commit: %w", m.version, err)
		}
	}
}
