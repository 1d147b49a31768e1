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

// refillDelay is how long a full pool waits after a claim before it starts
// a new member. Starting one takes both CPUs of a small host for some 20
// ms (namespaces, cgroup, root, network); the delay keeps that work off
// the claimed sandbox's first moments, when its user is waiting for the
// first exec (`ironclaw run` through the daemon is a claim and one exec).
// Once refilling, a pool starts members back to back until it is full
// again, so a steady stream of claims does not hold its refill back.
const refillDelay = 50 * time.Millisecond

// pool is one warm pool. ready and claimed are guarded by Manager.mu.
type pool struct {
	class PoolClass
	key   string
	// policy is the policyKey of the template's allow rules (policyOK
	// false when they do not parse), which every member has.
	policy   string
	policyOK bool
	ready    []*box
	claimed  time.Time // the last claim
	kick     chan struct{}
}

// newPool makes the pool of class pc.
func newPool(pc PoolClass) *pool {
	p := &pool{class: pc, key: pc.Template.classKey(), kick: make(chan struct{}, 1)}
	p.policy, p.policyOK = policyKey(pc.Template.Spec.Network.Allow)
	return p
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
	refilling := false
	for {
		m.mu.Lock()
		need := p.class.Size - len(p.ready)
		wait := refillDelay - time.Since(p.claimed)
		m.mu.Unlock()
		if need <= 0 {
			refilling = false
			select {
			case <-m.ctx.Done():
				return
			case <-p.kick:
				continue
			}
		}
		if !refilling && wait > 0 {
			select {
			case <-m.ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		refilling = true
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

// takePolicy gives the claimed member mb the allow rules its user asked
// for (box.retarget). It runs while the create's answer goes out and the
// first request comes in: every use of the agent, and so every command,
// waits for it (box.waitPolicy), and a member whose rules could not be
// applied is destroyed, so nothing ever runs under the template's rules.
// A daemon's shutdown does not cut it short: the network update is a
// few milliseconds.
func (m *Manager) takePolicy(mb *box, allow []string) {
	t0 := time.Now()
	// Not cut short by the daemon's shutdown, but bounded.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(m.ctx), policyTimeout)
	defer cancel()
	err := mb.retarget(ctx, allow, func(id string) {
		m.bus.emit(id, EventNetworkUpdated, Detail{Allow: allow})
	})
	if err != nil {
		m.log.Error("warm pool member could not take its user's network policy; destroying it", "pool_id", mb.backendID, "err", err)
		_ = m.destroy(mb, "network policy failed")
		return
	}
	m.log.Debug("warm pool member took its user's network policy", "pool_id", mb.backendID, "took", time.Since(t0))
}

// policyTimeout bounds a claimed member's network update (a few
// milliseconds, read back and verified).
const policyTimeout = 30 * time.Second

// retarget applies allow to b's network and verifies it in the kernel
// (network.Net.UpdateUnused), calls applied (when not nil) with b's ID
// once the rules are in force, then releases what waits in waitPolicy.
func (b *box) retarget(ctx context.Context, allow []string, applied func(id string)) error {
	b.mu.Lock()
	inst, id := b.inst, b.id
	b.mu.Unlock()
	// The member has run no command: only init and the agent, which
	// open no connections, so there are none to cut.
	err := inst.UpdateUnusedNetwork(ctx, allow)
	if err != nil {
		err = fmt.Errorf("%w: %q is being destroyed: its network policy could not be applied: %w", ErrNotRunning, id, err)
	} else if applied != nil {
		applied(id)
	}
	b.release(err)
	return err
}

// release ends the wait for b's policy: with nil, the rules are in force;
// with an error, the sandbox will never be usable.
func (b *box) release(err error) {
	b.mu.Lock()
	b.policyErr = err
	done := b.policyDone
	b.mu.Unlock()
	close(done)
}

// waitPolicy waits until the allow rules a claim gave b are in force (at
// once for every other sandbox), and returns why not if they never will.
func (b *box) waitPolicy(ctx context.Context) error {
	b.mu.Lock()
	done := b.policyDone
	b.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("wait for the network policy of %q: %w", b.id, ctx.Err())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.policyErr
}

// takeReady takes a ready member for b out of its pool: one of b's own
// class first, then one of a pool of b's shape whose template's rules are
// b's spelled otherwise, then one of the first pool of b's shape that has
// one. retarget says the member's rules are not b's: it must be given
// them (members of one shape differ only in their allow rules, see
// shapeKey).
func (m *Manager) takeReady(b *box) (mb *box, p *pool, retarget bool) {
	want, wantOK := policyKey(b.opts.Spec.Network.Allow)
	same := func(p *pool) bool { return wantOK && p.policyOK && p.policy == want }
	shaped := m.shapes[b.shape]
	order := make([]*pool, 0, 1+2*len(shaped))
	order = append(order, m.pools[b.class])
	for _, p := range shaped {
		if same(p) {
			order = append(order, p)
		}
	}
	order = append(order, shaped...)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range order {
		if p != nil && len(p.ready) > 0 {
			mb := p.ready[0]
			p.ready = p.ready[1:]
			p.claimed = time.Now()
			return mb, p, !same(p)
		}
	}
	return nil, nil, false
}

// claim hands a ready member of b's class, or of its shape (takeReady), to
// b's user: the store binds the user's ID, labels and limits to the
// member's record in one statement, the member takes b's place, and it
// starts taking the user's allow rules when they are not its own
// (takePolicy), which its first command waits for. It returns nil when no
// member is ready.
func (m *Manager) claim(ctx context.Context, b *box) (*box, error) {
	for {
		mb, p, retarget := m.takeReady(b)
		if mb == nil {
			return nil, nil
		}
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
		o := b.opts
		now := time.Now().UTC()
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
		if retarget {
			// Set before the member is visible under its new ID. Its
			// addresses are read now: the network is locked while it
			// takes the policy, and the create's answer names them.
			mb.policyDone = make(chan struct{})
			if n := mb.inst.Network(); n != nil {
				mb.addrs = []string{n.Addr().String(), n.Gateway().String()}
			}
		}
		mb.id, mb.opts, mb.fromPool, mb.state, mb.created, mb.lastActive = b.id, o, true, StateRunning, now, now
		mb.mu.Unlock()
		m.mu.Lock()
		m.boxes[b.id] = mb
		m.mu.Unlock()
		m.bus.emit(b.id, EventCreated, Detail{PoolID: poolID, Pool: p.class.Name})
		m.bus.emit(b.id, EventStarted, Detail{PoolID: poolID, Pool: p.class.Name})
		m.log.Info("sandbox started from the warm pool", "sandbox", b.id, "pool_id", poolID, "pool", p.class.Name)
		if retarget {
			// After the member took b's place (a failure destroys it
			// under the user's ID) and its create events. A member
			// that needs rules is never persistent (it has a network),
			// so a daemon that stops or dies before they are in force
			// takes it along: no record outlives it with the
			// template's rules in force.
			allow := o.Spec.Network.Allow
			if !m.spawn(func() { m.takePolicy(mb, allow) }) {
				mb.release(fmt.Errorf("%w: %q: the daemon is shutting down", ErrClosed, b.id))
			}
		}
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
