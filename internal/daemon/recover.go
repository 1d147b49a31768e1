package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/vm"
)

// maxReattach bounds how many sandboxes recovery re-attaches at once.
// Each may wait out its agent's handshake timeout (a guest that stalls
// it); side by side, N such guests hold the daemon's start for about one
// timeout, not N.
const maxReattach = 8

// ownerWait bounds how long recovery waits for the init of a sandbox whose
// create was cut short to exit (it exits when it loses its host).
const ownerWait = 10 * time.Second

// recover rebuilds the manager's tables from the store after a start:
// every recorded sandbox whose init still runs is re-attached and its
// agent reconnected; every other one is reclaimed and its record removed;
// live persistent sandboxes of this root without a record are destroyed;
// and leftovers of dead owners are collected. Nothing is leaked.
func (m *Manager) recover(ctx context.Context) error {
	rows, err := m.cfg.Store.Sandboxes(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	// Re-attaches run concurrently (at most maxReattach): each touches
	// only its own sandbox, and the manager's tables under m.mu.
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxReattach)
	for _, r := range rows {
		known[r.BackendID] = true
		var o CreateOptions
		if err := json.Unmarshal(r.Spec, &o); err != nil {
			m.log.Error("undecodable sandbox record: reclaiming it", "sandbox", r.ID, "err", err)
			m.reclaimRow(ctx, r, "undecodable record")
			continue
		}
		switch r.State {
		case store.StateRunning, store.StatePooled:
			slots <- struct{}{}
			wg.Go(func() {
				defer func() { <-slots }()
				m.reattach(ctx, r, o)
			})
		case store.StateExited:
			b := &box{backendID: r.BackendID, token: r.Token, class: r.PoolClass, gone: make(chan struct{}),
				id: r.ID, opts: o, state: StateExited, fromPool: !r.Claimed.IsZero(), created: r.Created, started: r.Started,
				lastActive: r.Started, exit: &Exit{Reason: "exited before the daemon restarted"}}
			m.mu.Lock()
			m.boxes[r.ID] = b
			m.mu.Unlock()
		default:
			// The daemon died while creating it: the user never got it.
			m.reclaimRow(ctx, r, "the daemon stopped during the create")
		}
	}
	wg.Wait()
	live, err := m.cfg.Root.Live()
	if err != nil {
		return err
	}
	for _, rec := range live {
		if known[rec.ID] {
			continue
		}
		// Only a persistent sandbox attaches: one of `ironclaw run` is
		// owned by its live process and is left alone.
		inst, err := m.attach(ctx, BackendJail, rec.ID)
		if err != nil && m.cfg.VM != nil {
			inst, err = m.attach(ctx, BackendVM, rec.ID)
		}
		if err != nil {
			continue
		}
		m.log.Warn("destroying a persistent sandbox without a record", "backend_id", rec.ID)
		if err := inst.Close(); err != nil {
			m.log.Error("destroy orphan sandbox", "backend_id", rec.ID, "err", err)
		}
	}
	if n, err := m.cfg.Root.Collect(m.cfg.Reclaim); err != nil {
		m.log.Warn("reclaim leftovers", "err", err)
	} else if n > 0 {
		m.log.Info("reclaimed leftovers of dead sandboxes", "count", n)
	}
	return nil
}

// reattach takes over a sandbox that was running when the daemon stopped.
func (m *Manager) reattach(ctx context.Context, r store.SandboxRow, o CreateOptions) {
	inst, err := m.attach(ctx, r.Backend, r.BackendID)
	if err != nil {
		m.log.Warn("sandbox did not survive the daemon restart", "sandbox", r.ID, "backend", r.Backend, "err", err)
		m.bus.emit(r.ID, EventExited, Detail{Reason: "ended while the daemon was down"})
		m.reclaimRow(ctx, r, "ended while the daemon was down")
		return
	}
	c, err := inst.connect(ctx, r.Token)
	if err != nil {
		m.log.Error("reconnect to the agent: destroying the sandbox", "sandbox", r.ID, "err", err)
		if cerr := inst.Close(); cerr != nil {
			m.log.Error("destroy sandbox", "sandbox", r.ID, "err", cerr)
		}
		m.dropRow(ctx, r.ID, "agent unreachable after the daemon restart")
		return
	}
	now := time.Now().UTC()
	b := &box{backendID: r.BackendID, token: r.Token, class: r.PoolClass, gone: make(chan struct{}),
		id: r.ID, opts: o, fromPool: !r.Claimed.IsZero(), created: r.Created, started: r.Started,
		inst: inst, client: c, lastActive: now, attached: true}
	if !r.Claimed.IsZero() {
		b.created = r.Claimed
	}
	if r.State == store.StatePooled {
		p := m.pools[r.PoolClass]
		m.mu.Lock()
		full := p == nil || len(p.ready) >= p.class.Size
		if !full {
			b.state = statePooled
			p.ready = append(p.ready, b)
		}
		m.mu.Unlock()
		if full {
			c.Close()
			if err := inst.Close(); err != nil {
				m.log.Error("destroy surplus pool member", "pool_id", r.ID, "err", err)
			}
			m.dropRow(ctx, r.ID, "")
			return
		}
		m.watch(b)
		return
	}
	b.state = StateRunning
	m.mu.Lock()
	m.boxes[r.ID] = b
	m.mu.Unlock()
	m.watch(b)
	m.bus.emit(r.ID, EventReattached, Detail{})
	m.log.Info("re-attached sandbox", "sandbox", r.ID, "backend", r.Backend, "pid", inst.PID())
}

// reclaimRow removes what a recorded sandbox that is not running left,
// and its record.
func (m *Manager) reclaimRow(ctx context.Context, r store.SandboxRow, reason string) {
	if inst, err := m.attach(ctx, r.Backend, r.BackendID); err == nil {
		if err := inst.Close(); err != nil {
			m.log.Error("destroy sandbox", "sandbox", r.ID, "err", err)
		}
	} else {
		m.reclaimBackend(r, err)
		// Its init may still be on its way out (it exits when its host
		// goes before the start finished); Collect takes the directory
		// once nobody holds it.
		waitOwnerGone(m.cfg.Root.SandboxDir(sandbox.KeyOf(r.BackendID)), ownerWait)
	}
	if r.State != store.StatePooled {
		m.dropRow(ctx, r.ID, reason)
		return
	}
	m.dropRow(ctx, r.ID, "")
}

// reclaimBackend removes, from its records, a micro-VM of r that could
// not be attached (attachErr) although it may run: a create the previous
// daemon did not finish, or a VM whose QMP did not answer. A persistent
// QEMU holds its state directory's lock, so GC would never take the
// directory; but the row proves this daemon's root owns it, and nothing
// else runs under its key: kill the recorded QEMU, empty its cgroup, drop
// its network. GC then removes the directory once the lock is gone.
func (m *Manager) reclaimBackend(r store.SandboxRow, attachErr error) {
	if r.Backend != BackendVM {
		return
	}
	dir := m.cfg.Root.SandboxDir(sandbox.KeyOf(r.BackendID))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return
	}
	m.log.Info("reclaiming micro-VM from its records", "sandbox", r.ID, "attach_err", attachErr)
	if err := vm.Reclaim(dir); err != nil {
		m.log.Error("reclaim micro-VM", "sandbox", r.ID, "err", err)
	}
}

func (m *Manager) dropRow(ctx context.Context, id, reason string) {
	if err := m.cfg.Store.DeleteSandbox(ctx, id); err != nil {
		m.log.Error("delete sandbox record", "sandbox", id, "err", err)
	}
	if reason != "" {
		m.bus.emit(id, EventDestroyed, Detail{Reason: reason})
	}
}

// waitOwnerGone waits until nobody holds the lock of the sandbox state
// directory dir (or it is gone), up to timeout.
func waitOwnerGone(dir string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		f, err := os.Open(filepath.Join(dir, "lock"))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err == nil {
			lerr := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			f.Close() // drops the lock if we got it
			if lerr == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
