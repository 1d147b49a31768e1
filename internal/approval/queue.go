package approval

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Sentinel errors of the queue.
var (
	// ErrNotPending marks a decision on a request that is not (or no longer) pending.
	ErrNotPending = errors.New("no such pending approval")
)

// Outcomes of a held call, as recorded in the audit log.
const (
	OutcomeApproved  = "approved"
	OutcomeDenied    = "denied"
	OutcomeTimeout   = "timeout"
	OutcomeCancelled = "cancelled"
)

// Request is a held call waiting for a person.
type Request struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Deadline time.Time `json:"deadline"`
	Gateway  string    `json:"gateway,omitempty"`
	Server   string    `json:"server"`
	// Tool is the tool's name as the client sees it (server__tool).
	Tool    string  `json:"tool"`
	Verdict Verdict `json:"verdict"`
	Card    Card    `json:"card"`
}

// Decision is a person's answer to a Request.
type Decision struct {
	Approve bool   `json:"approve"`
	Note    string `json:"note,omitempty"`
	// By names who decided. The API server sets it from the peer's
	// credentials; whatever a client sends is ignored.
	By string `json:"by,omitempty"`
}

// Outcome is how a held call ended.
type Outcome struct {
	Result string // OutcomeApproved, OutcomeDenied, OutcomeTimeout or OutcomeCancelled
	By     string
	Note   string
}

// Approved reports whether the call may run.
func (o Outcome) Approved() bool { return o.Result == OutcomeApproved }

// Queue holds red calls until they are decided. It is safe for concurrent use.
type Queue struct {
	mu      sync.Mutex
	pending map[string]*held
	version uint64
	changed chan struct{} // closed and replaced on every change
	now     func() time.Time
}

type held struct {
	req    Request
	decide chan Decision // buffered 1; the first Decide wins
}

// NewQueue returns an empty queue.
func NewQueue() *Queue {
	return &Queue{pending: map[string]*held{}, changed: make(chan struct{}), now: time.Now}
}

func newRequestID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // never fails on Linux 3.17+
	}
	return base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding).EncodeToString(b[:])
}

// bump records a change; q.mu must be held.
func (q *Queue) bump() {
	q.version++
	close(q.changed)
	q.changed = make(chan struct{})
}

// Hold adds r to the queue and blocks until it is decided, timeout passes
// (deny), or ctx ends (cancelled). r.ID, Created and Deadline are set here.
// It never returns "approved" unless a Decide approved this very request.
func (q *Queue) Hold(ctx context.Context, r Request, timeout time.Duration) (Request, Outcome) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	h := &held{decide: make(chan Decision, 1)}
	q.mu.Lock()
	r.ID = newRequestID()
	r.Created = q.now()
	r.Deadline = r.Created.Add(timeout)
	h.req = r
	q.pending[r.ID] = h
	q.bump()
	q.mu.Unlock()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var out Outcome
	select {
	case d := <-h.decide:
		out = decisionOutcome(d)
	case <-timer.C:
		out = Outcome{Result: OutcomeTimeout, Note: fmt.Sprintf("no decision within %s", timeout)}
	case <-ctx.Done():
		out = Outcome{Result: OutcomeCancelled, Note: context.Cause(ctx).Error()}
	}
	q.mu.Lock()
	delete(q.pending, r.ID)
	q.bump()
	q.mu.Unlock()
	// Decide accepts a decision only while the request is in the map, and
	// removing it above closed that window: a decision accepted before the
	// timer won the race is final, so the decider is never told "ok" for a
	// call that then did not run. A caller that went away stays cancelled.
	if out.Result == OutcomeTimeout {
		select {
		case d := <-h.decide:
			out = decisionOutcome(d)
		default:
		}
	}
	return r, out
}

func decisionOutcome(d Decision) Outcome {
	if d.Approve {
		return Outcome{Result: OutcomeApproved, By: d.By, Note: d.Note}
	}
	return Outcome{Result: OutcomeDenied, By: d.By, Note: d.Note}
}

// Decide answers the pending request id. Only the first decision counts.
func (q *Queue) Decide(id string, d Decision) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	h, ok := q.pending[id]
	if !ok {
		return fmt.Errorf("decide %q: %w", id, ErrNotPending)
	}
	select {
	case h.decide <- d:
	default:
		return fmt.Errorf("decide %q: %w (already decided)", id, ErrNotPending)
	}
	// Remove now so a second decision, or a listing, does not see it.
	delete(q.pending, id)
	q.bump()
	return nil
}

// List returns the pending requests, oldest first, and the queue version.
func (q *Queue) List() ([]Request, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Request, 0, len(q.pending))
	for _, h := range q.pending {
		out = append(out, h.req)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, q.version
}

// Get returns one pending request.
func (q *Queue) Get(id string) (Request, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	h, ok := q.pending[id]
	if !ok {
		return Request{}, false
	}
	return h.req, true
}

// WaitChange blocks until the queue version differs from since or ctx ends,
// and returns the current version.
func (q *Queue) WaitChange(ctx context.Context, since uint64) uint64 {
	for {
		q.mu.Lock()
		v, ch := q.version, q.changed
		q.mu.Unlock()
		if v != since {
			return v
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return v
		}
	}
}
