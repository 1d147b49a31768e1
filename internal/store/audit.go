package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Decisions recorded in the audit log.
const (
	// DecisionAllowed: the call was classified green and ran.
	DecisionAllowed = "allowed"
	// DecisionApproved: the call was held and a person approved it.
	DecisionApproved = "approved"
	// DecisionDenied: the call was held and a person denied it.
	DecisionDenied = "denied"
	// DecisionTimeout: the call was held and nobody decided in time; it did not run.
	DecisionTimeout = "timeout"
	// DecisionBlocked: configuration forbids the tool; the call did not run.
	DecisionBlocked = "blocked"
	// DecisionCancelled: the caller went away while the call was held.
	DecisionCancelled = "cancelled"
)

// AuditRecord is one tools/call seen by a gateway. Arguments must already be
// redacted: the store writes what it is given.
type AuditRecord struct {
	ID          int64           `json:"id"`
	Time        time.Time       `json:"time"`
	Gateway     string          `json:"gateway,omitempty"`
	Session     string          `json:"session,omitempty"`
	Server      string          `json:"server"`
	Tool        string          `json:"tool"`
	Arguments   json.RawMessage `json:"arguments"`
	Class       string          `json:"class,omitempty"`
	Decision    string          `json:"decision"`
	Reason      string          `json:"reason,omitempty"`
	Approver    string          `json:"approver,omitempty"`
	Duration    time.Duration   `json:"duration_ns"`
	ResultBytes int64           `json:"result_bytes"`
	Error       string          `json:"error,omitempty"`
}

// AppendAudit writes r and returns its ID. A zero Time is set to now.
func (s *Store) AppendAudit(ctx context.Context, r *AuditRecord) (int64, error) {
	if r.Server == "" || r.Tool == "" || r.Decision == "" {
		return 0, fmt.Errorf("append audit record: server, tool and decision are required")
	}
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	args := string(r.Arguments)
	if args == "" {
		args = "{}"
	}
	if !json.Valid([]byte(args)) {
		return 0, fmt.Errorf("append audit record: arguments are not valid JSON")
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO audit
		(time_ns, gateway, session, server, tool, arguments, class, decision, reason, approver, duration_ns, result_bytes, error)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Time.UnixNano(), r.Gateway, r.Session, r.Server, r.Tool, args, r.Class, r.Decision, r.Reason,
		r.Approver, int64(r.Duration), r.ResultBytes, r.Error)
	if err != nil {
		return 0, fmt.Errorf("append audit record: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("append audit record: %w", err)
	}
	r.ID = id
	return id, nil
}

// AuditFilter selects audit records. Zero fields match everything.
type AuditFilter struct {
	Server   string
	Tool     string
	Decision string
	Since    time.Time
	Until    time.Time
	// AfterID returns only records with a larger ID (for following the log).
	AfterID int64
	// Limit caps the number of records, newest first; 0 means no limit.
	Limit int
}

// Audit returns the records f selects, oldest first.
func (s *Store) Audit(ctx context.Context, f AuditFilter) ([]AuditRecord, error) {
	var where []string
	var args []any
	add := func(cond string, v any) { where = append(where, cond); args = append(args, v) }
	if f.Server != "" {
		add("server = ?", f.Server)
	}
	if f.Tool != "" {
		add("tool = ?", f.Tool)
	}
	if f.Decision != "" {
		add("decision = ?", f.Decision)
	}
	if !f.Since.IsZero() {
		add("time_ns >= ?", f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		add("time_ns < ?", f.Until.UnixNano())
	}
	if f.AfterID > 0 {
		add("id > ?", f.AfterID)
	}
	q := `SELECT id, time_ns, gateway, session, server, tool, arguments, class, decision, reason, approver,
		duration_ns, result_bytes, error FROM audit`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC"
	if f.Limit > 0 {
		q += " LIMIT ?"
		args = append(args, f.Limit)
	}
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query audit log: %w", err)
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		var r AuditRecord
		var ts, dur int64
		var argText string
		if err := rows.Scan(&r.ID, &ts, &r.Gateway, &r.Session, &r.Server, &r.Tool, &argText, &r.Class,
			&r.Decision, &r.Reason, &r.Approver, &dur, &r.ResultBytes, &r.Error); err != nil {
			return nil, fmt.Errorf("query audit log: %w", err)
		}
		r.Time, r.Duration, r.Arguments = time.Unix(0, ts), time.Duration(dur), json.RawMessage(argText)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query audit log: %w", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}
