package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/ironclaw/ironclaw/internal/store"
)

// subBuffer is how many events a subscriber may fall behind before it is
// cut off (its channel closed), so a slow reader never stalls the daemon.
const subBuffer = 1024

// maxEventArgs bounds what of an exec's argv goes into the event log.
const (
	maxEventArgs   = 32
	maxEventArgLen = 256
)

// bus assigns sequence numbers to events, fans them out to subscribers and
// writes them to the store in batches.
type bus struct {
	st   *store.Store
	log  *slog.Logger
	keep int

	mu      sync.Mutex
	seq     int64
	subs    map[*Subscription]struct{}
	pending []store.EventRow
	kick    chan struct{}
	flushMu sync.Mutex // one writer at a time
	written int64      // events written since the last trim
}

// Subscription is a live feed of events. C is closed when the
// subscription ends: Close, daemon shutdown, or the reader fell more than
// subBuffer events behind (Overflowed then reports true).
type Subscription struct {
	C       <-chan Event
	ch      chan Event
	sandbox string
	b       *bus
	over    bool
}

// Overflowed reports whether the subscription was cut off for falling behind.
func (s *Subscription) Overflowed() bool {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.over
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if _, ok := s.b.subs[s]; ok {
		delete(s.b.subs, s)
		close(s.ch)
	}
}

func newBus(ctx context.Context, st *store.Store, log *slog.Logger, keep int) (*bus, error) {
	last, err := st.LastEventSeq(ctx)
	if err != nil {
		return nil, err
	}
	return &bus{st: st, log: log, keep: keep, seq: last, subs: map[*Subscription]struct{}{}, kick: make(chan struct{}, 1)}, nil
}

// emit records an event and returns it.
func (b *bus) emit(sandboxID, typ string, d Detail) Event {
	if len(d.Argv) > maxEventArgs {
		d.Argv = append(d.Argv[:maxEventArgs:maxEventArgs], "…")
	}
	for i, a := range d.Argv {
		if len(a) > maxEventArgLen {
			d.Argv[i] = a[:maxEventArgLen] + "…"
		}
	}
	data, err := json.Marshal(d)
	if err != nil {
		data = []byte("{}") // Detail is plain data; never happens
	}
	b.mu.Lock()
	b.seq++
	ev := Event{Seq: b.seq, Time: time.Now().UTC(), Sandbox: sandboxID, Type: typ, Detail: d}
	b.pending = append(b.pending, store.EventRow{Seq: ev.Seq, Time: ev.Time, Sandbox: sandboxID, Type: typ, Data: data})
	for s := range b.subs {
		if s.sandbox != "" && s.sandbox != sandboxID {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			s.over = true
			delete(b.subs, s)
			close(s.ch)
		}
	}
	n := len(b.pending)
	b.mu.Unlock()
	if n >= 256 {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	return ev
}

// subscribe starts a feed of the events of sandboxID (all when empty).
func (b *bus) subscribe(sandboxID string) *Subscription {
	ch := make(chan Event, subBuffer)
	s := &Subscription{C: ch, ch: ch, sandbox: sandboxID, b: b}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// flush writes pending events to the store.
func (b *bus) flush(ctx context.Context) error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	b.mu.Lock()
	batch := b.pending
	b.pending = nil
	b.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if err := b.st.AppendEvents(ctx, batch); err != nil {
		// Put them back in front so that nothing is lost.
		b.mu.Lock()
		b.pending = append(batch, b.pending...)
		b.mu.Unlock()
		return err
	}
	b.written += int64(len(batch))
	if b.keep > 0 && b.written > int64(b.keep/10) {
		b.written = 0
		if _, err := b.st.TrimEvents(ctx, b.keep); err != nil {
			return err
		}
	}
	return nil
}

// run flushes every interval (or when many are pending) until ctx ends,
// then flushes once more and closes every subscription.
func (b *bus) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := b.flush(context.WithoutCancel(ctx)); err != nil {
				b.log.Error("write events", "err", err)
			}
			b.mu.Lock()
			for s := range b.subs {
				delete(b.subs, s)
				close(s.ch)
			}
			b.mu.Unlock()
			return
		case <-t.C:
		case <-b.kick:
		}
		if err := b.flush(ctx); err != nil {
			b.log.Error("write events", "err", err)
		}
	}
}

// history returns stored events of sandboxID (all when empty) after seq,
// the newest limit of them when limit > 0.
func (b *bus) history(ctx context.Context, sandboxID string, after int64, limit int) ([]Event, error) {
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	rows, err := b.st.Events(ctx, sandboxID, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(rows))
	for _, r := range rows {
		ev := Event{Seq: r.Seq, Time: r.Time.UTC(), Sandbox: r.Sandbox, Type: r.Type}
		if err := json.Unmarshal(r.Data, &ev.Detail); err != nil {
			ev.Detail = Detail{Error: "undecodable event data"}
		}
		out = append(out, ev)
	}
	return out, nil
}
