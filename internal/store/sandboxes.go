package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrConflict marks a sandbox row whose ID is taken, or a pool member that
// is no longer free to bind.
var ErrConflict = errors.New("sandbox record conflict")

// ErrNoRow marks a sandbox row that does not exist.
var ErrNoRow = errors.New("no such sandbox record")

// Sandbox states as the daemon records them.
const (
	StateCreating = "creating" // the backend start has not finished
	StatePooled   = "pooled"   // a warm pool member nobody has claimed
	StateRunning  = "running"  // started and handed to a user
	StateExited   = "exited"   // its init ended; kernel objects are gone
)

// SandboxRow is the daemon's durable record of one long-lived sandbox.
// Token authenticates the daemon to the sandbox's agent: the file is 0600
// and the token is never logged.
type SandboxRow struct {
	ID        string
	BackendID string
	Backend   string
	State     string
	// Spec is the daemon's create request as JSON, opaque to the store.
	Spec      json.RawMessage
	Labels    map[string]string
	Token     []byte
	PoolClass string
	TTL       time.Duration
	Idle      time.Duration
	Created   time.Time
	Started   time.Time
	Claimed   time.Time
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func labelsJSON(l map[string]string) (string, error) {
	if len(l) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(l)
	return string(b), err
}

func specText(s json.RawMessage) string {
	if len(s) == 0 {
		return "{}"
	}
	return string(s)
}

// The statements of the create and destroy path (prepared at Open).
const (
	insertSandboxSQL = `INSERT INTO sandboxes
		(id, backend_id, backend, state, spec, labels, token, pool_class, ttl_ns, idle_ns, created_ns, started_ns, claimed_ns)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	setSandboxStateSQL = `UPDATE sandboxes SET state = ?,
		started_ns = CASE WHEN ? = 0 THEN started_ns ELSE ? END WHERE id = ?`
	deleteSandboxSQL = `DELETE FROM sandboxes WHERE id = ?`
)

// InsertSandbox records a new sandbox. It fails with ErrConflict when the
// ID or the backend ID is taken.
func (s *Store) InsertSandbox(ctx context.Context, r *SandboxRow) error {
	if r.ID == "" || r.BackendID == "" || r.Backend == "" || r.State == "" || len(r.Token) == 0 {
		return fmt.Errorf("insert sandbox record: id, backend id, backend, state and token are required")
	}
	labels, err := labelsJSON(r.Labels)
	if err != nil {
		return fmt.Errorf("insert sandbox record %q: labels: %w", r.ID, err)
	}
	_, err = s.insertSandbox.ExecContext(ctx,
		r.ID, r.BackendID, r.Backend, r.State, specText(r.Spec), labels, r.Token, r.PoolClass,
		int64(r.TTL), int64(r.Idle), unixNano(r.Created), unixNano(r.Started), unixNano(r.Claimed))
	if err != nil {
		if isConstraint(err) {
			return fmt.Errorf("insert sandbox record %q: %w", r.ID, ErrConflict)
		}
		return fmt.Errorf("insert sandbox record %q: %w", r.ID, err)
	}
	return nil
}

func isConstraint(err error) bool {
	return strings.Contains(err.Error(), "UNIQUE constraint") || strings.Contains(err.Error(), "PRIMARY KEY")
}

// SetSandboxState moves the sandbox id to state; a non-zero started is
// recorded as its start time.
func (s *Store) SetSandboxState(ctx context.Context, id, state string, started time.Time) error {
	res, err := s.setSandboxState.ExecContext(ctx, state, unixNano(started), unixNano(started), id)
	if err != nil {
		return fmt.Errorf("set state of sandbox record %q: %w", id, err)
	}
	return oneRow(res, "set state of sandbox record "+id)
}

// BindSandbox hands the pool member poolID to a user: in one statement the
// row takes r's ID, spec, labels, time limits and state, only if it is
// still a free pool member. The backend ID (and so every kernel object
// name) stays the pool ID's. It fails with ErrConflict when the member is
// gone or r.ID is taken.
func (s *Store) BindSandbox(ctx context.Context, poolID string, r *SandboxRow) error {
	labels, err := labelsJSON(r.Labels)
	if err != nil {
		return fmt.Errorf("bind sandbox record %q: labels: %w", r.ID, err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE sandboxes SET id = ?, spec = ?, labels = ?, ttl_ns = ?, idle_ns = ?,
		state = ?, claimed_ns = ? WHERE id = ? AND state = ?`,
		r.ID, specText(r.Spec), labels, int64(r.TTL), int64(r.Idle), r.State, unixNano(r.Claimed), poolID, StatePooled)
	if err != nil {
		if isConstraint(err) {
			return fmt.Errorf("bind sandbox record %q: %w", r.ID, ErrConflict)
		}
		return fmt.Errorf("bind sandbox record %q: %w", r.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("bind sandbox record %q: %w", r.ID, err)
	}
	if n != 1 {
		return fmt.Errorf("bind pool member %q to %q: %w", poolID, r.ID, ErrConflict)
	}
	return nil
}

// DeleteSandbox removes the record of id; a missing record is not an error.
func (s *Store) DeleteSandbox(ctx context.Context, id string) error {
	if _, err := s.deleteSandbox.ExecContext(ctx, id); err != nil {
		return fmt.Errorf("delete sandbox record %q: %w", id, err)
	}
	return nil
}

// DeleteSandboxRecord deletes the record r was read from, and not a newer
// record that took the same ID since (a sandbox re-created under its ID):
// it matches the backend ID and the creation time too. It reports whether
// a record was deleted.
func (s *Store) DeleteSandboxRecord(ctx context.Context, r *SandboxRow) (bool, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM sandboxes WHERE id = ? AND backend_id = ? AND created_ns = ?`,
		r.ID, r.BackendID, unixNano(r.Created))
	if err != nil {
		return false, fmt.Errorf("delete sandbox record %q: %w", r.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("delete sandbox record %q: %w", r.ID, err)
	}
	return n > 0, nil
}

// Sandbox returns the record of id, or ErrNoRow.
func (s *Store) Sandbox(ctx context.Context, id string) (*SandboxRow, error) {
	rows, err := s.querySandboxes(ctx, " WHERE id = ?", id)
	if err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("sandbox record %q: %w", id, ErrNoRow)
	}
	return &rows[0], nil
}

// Sandboxes returns every sandbox record, oldest first.
func (s *Store) Sandboxes(ctx context.Context) ([]SandboxRow, error) {
	return s.querySandboxes(ctx, "")
}

func (s *Store) querySandboxes(ctx context.Context, where string, args ...any) ([]SandboxRow, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, backend_id, backend, state, spec, labels, token, pool_class,
		ttl_ns, idle_ns, created_ns, started_ns, claimed_ns FROM sandboxes`+where+` ORDER BY created_ns, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("query sandbox records: %w", err)
	}
	defer rows.Close()
	var out []SandboxRow
	for rows.Next() {
		var r SandboxRow
		var spec, labels string
		var ttl, idle, created, started, claimed int64
		if err := rows.Scan(&r.ID, &r.BackendID, &r.Backend, &r.State, &spec, &labels, &r.Token, &r.PoolClass,
			&ttl, &idle, &created, &started, &claimed); err != nil {
			return nil, fmt.Errorf("query sandbox records: %w", err)
		}
		r.Spec = json.RawMessage(spec)
		if err := json.Unmarshal([]byte(labels), &r.Labels); err != nil {
			return nil, fmt.Errorf("sandbox record %q: labels: %w", r.ID, err)
		}
		r.TTL, r.Idle = time.Duration(ttl), time.Duration(idle)
		r.Created, r.Started, r.Claimed = fromNano(created), fromNano(started), fromNano(claimed)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query sandbox records: %w", err)
	}
	return out, nil
}

func oneRow(res sql.Result, op string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", op, ErrNoRow)
	}
	return nil
}

// EventRow is one entry of the daemon's per-sandbox event log. Seq is
// assigned by the daemon and increases across all sandboxes.
type EventRow struct {
	Seq     int64
	Time    time.Time
	Sandbox string
	Type    string
	// Data is the event's details as a JSON object.
	Data json.RawMessage
}

// AppendEvents writes events in one transaction.
func (s *Store) AppendEvents(ctx context.Context, evs []EventRow) error {
	if len(evs) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO sandbox_events (seq, time_ns, sandbox, type, data) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		tx.Rollback()
		return fmt.Errorf("append events: %w", err)
	}
	defer stmt.Close()
	for _, e := range evs {
		data := string(e.Data)
		if data == "" {
			data = "{}"
		}
		if _, err := stmt.ExecContext(ctx, e.Seq, e.Time.UnixNano(), e.Sandbox, e.Type, data); err != nil {
			tx.Rollback()
			return fmt.Errorf("append event %d: %w", e.Seq, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append events: commit: %w", err)
	}
	return nil
}

// Events returns, oldest first, the events of sandbox (all sandboxes when
// empty) with a sequence number above after; with limit > 0 only the
// newest limit of them.
func (s *Store) Events(ctx context.Context, sandbox string, after int64, limit int) ([]EventRow, error) {
	q := `SELECT seq, time_ns, sandbox, type, data FROM sandbox_events WHERE seq > ?`
	args := []any{after}
	if sandbox != "" {
		q += ` AND sandbox = ?`
		args = append(args, sandbox)
	}
	q += ` ORDER BY seq DESC`
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query events: %w", err)
	}
	defer rows.Close()
	var out []EventRow
	for rows.Next() {
		var e EventRow
		var ts int64
		var data string
		if err := rows.Scan(&e.Seq, &ts, &e.Sandbox, &e.Type, &data); err != nil {
			return nil, fmt.Errorf("query events: %w", err)
		}
		e.Time, e.Data = time.Unix(0, ts), json.RawMessage(data)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query events: %w", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// LastEventSeq returns the largest event sequence number, 0 when none.
func (s *Store) LastEventSeq(ctx context.Context) (int64, error) {
	var n sql.NullInt64
	if err := s.rdb.QueryRowContext(ctx, `SELECT MAX(seq) FROM sandbox_events`).Scan(&n); err != nil {
		return 0, fmt.Errorf("read last event: %w", err)
	}
	return n.Int64, nil
}

// TrimEvents keeps the newest keep events and deletes the rest, so the log
// stays bounded. It returns how many it deleted.
func (s *Store) TrimEvents(ctx context.Context, keep int) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM sandbox_events WHERE seq <= (SELECT MAX(seq) FROM sandbox_events) - ?`, keep)
	if err != nil {
		return 0, fmt.Errorf("trim events: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("trim events: %w", err)
	}
	return n, nil
}

// SetSandboxSpec replaces the recorded spec of id (after a network policy
// update, say).
func (s *Store) SetSandboxSpec(ctx context.Context, id string, spec json.RawMessage) error {
	res, err := s.db.ExecContext(ctx, `UPDATE sandboxes SET spec = ? WHERE id = ?`, specText(spec), id)
	if err != nil {
		return fmt.Errorf("set spec of sandbox record %q: %w", id, err)
	}
	return oneRow(res, "set spec of sandbox record "+id)
}
