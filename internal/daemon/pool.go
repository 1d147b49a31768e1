package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/store"
)

// PoolIDPrefix starts the ID of every warm pool member. A member's kernel
// objects are named after its pool ID for its whole life, also once a
// user's create has claimed it under another ID; the store records both.
const PoolIDPrefix = "pool-"

// pool is one warm pool. ready is guarded by Manager.mu.
type pool struct {
	class PoolClass
	key   string
	ready []*box
	kick  chan struct{}
}

func (p *pool) remove(b *box) {
	for i, r := range p.ready {
		if r == b {
			p.ready = append(p.ready[:i], p.ready[i+1:]...)
			return
		}
	}
}

func (p *pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// fill keeps p at its size until the manager closes, one start at a time,
// backing off when starts fail.
func (m *Manager) fill(p *pool) {
	backoff := time.Second
	for {
		m.mu.Lock()
		need := p.class.Size - len(p.ready)
		m.mu.Unlock()
		if need <= 0 {
			select {
			case <-m.ctx.Done():
				return
			case <-p.kick:
				continue
			}
		}
		if err := m.addMember(p); err != nil {
			if m.ctx.Err() != nil {
				return
			}
			m.met.poolRefills.WithLabelValues(p.class.Name, "error").Inc()
			m.log.Error("fill warm pool", "pool", p.class.Name, "err", err, "retry_in", backoff)
			select {
			case <-m.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		m.met.poolRefills.WithLabelValues(p.class.Name, "ok").Inc()
	}
}

// addMember starts one sandbox for p under a fresh pool ID.
func (m *Manager) addMember(p *pool) error {
	id := PoolIDPrefix + sandbox.NewID()[len("ic-"):]
	o := p.class.Template
	o.ID, o.Labels, o.TTL, o.IdleTimeout, o.NoPool = id, nil, 0, 0, false
	if o.Backend == "" {
		o.Backend = BackendJail
	}
	b := &box{backendID: id, id: id, opts: o, state: StateCreating, created: time.Now().UTC(), class: p.key, gone: make(chan struct{})}
	if err := m.acquire(m.ctx); err != nil {
		return err
	}
	err := m.start(m.ctx, b, statePooled)
	m.release()
	if err != nil {
		return err
	}
	m.mu.Lock()
	p.ready = append(p.ready, b)
	m.mu.Unlock()
	m.watch(b)
	return nil
}

// claim hands a ready member of b's class to b's user: the store binds the
// user's ID, labels and limits to the member's record in one statement,
// and the member takes b's place. It returns nil when no member is ready.
func (m *Manager) claim(ctx context.Context, b *box) (*box, error) {
	p := m.pools[b.class]
	if p == nil {
		return nil, nil
	}
	for {
		m.mu.Lock()
		if len(p.ready) == 0 {
			m.mu.Unlock()
			return nil, nil
		}
		mb := p.ready[0]
		p.ready = p.ready[1:]
		m.mu.Unlock()
		p.wake()

		mb.mu.Lock()
		alive := mb.state == statePooled
		if alive {
			mb.state = StateCreating // claimed: no longer a free member
		}
		poolID, inst := mb.id, mb.inst
		mb.mu.Unlock()
		if !alive {
			continue
		}
		now := time.Now().UTC()
		o := b.opts
		specJSON, err := json.Marshal(o)
		if err != nil {
			go m.destroy(mb, "claim failed")
			return nil, fmt.Errorf("encode spec: %w", err)
		}
		row := &store.SandboxRow{ID: b.id, Spec: specJSON, Labels: o.Labels, TTL: o.TTL, Idle: o.IdleTimeout,
			State: store.StateRunning, Claimed: now}
		if err := m.cfg.Store.BindSandbox(ctx, poolID, row); err != nil {
			// Unused, but its record may be half-bound: never hand it out.
			go m.destroy(mb, "claim failed")
			if errors.Is(err, store.ErrConflict) {
				return nil, fmt.Errorf("%w: %q", sandbox.ErrExists, b.id)
			}
			return nil, err
		}
		mb.mu.Lock()
		mb.id, mb.opts, mb.fromPool, mb.state, mb.created, mb.lastActive = b.id, o, true, StateRunning, now, now
		mb.mu.Unlock()
		m.mu.Lock()
		m.boxes[b.id] = mb
		m.mu.Unlock()
		m.bus.emit(b.id, EventCreated, Detail{PoolID: poolID})
		m.bus.emit(b.id, EventStarted, Detail{PoolID: poolID})
		m.log.Info("sandbox started from the warm pool", "sandbox", b.id, "pool_id", poolID)
		// An exit while the member was being claimed was ignored by the
		// watcher: handle it now.
		select {
		case <-inst.Done():
			go m.onExit(mb)
		default:
		}
		return mb, nil
	}
}
