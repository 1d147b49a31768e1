package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/vm"
)

// Defaults of Config.
const (
	DefaultMaxSandboxes         = 4096
	DefaultMaxConcurrentCreates = 8
	DefaultMaxFileSize          = 1 << 30
	DefaultEventsKeep           = 100_000
	DefaultSweepInterval        = 500 * time.Millisecond
	DefaultGCInterval           = time.Minute
)

// tokenLen is the size of each sandbox's agent token, in random bytes.
const tokenLen = 32

// lockName is the daemon's lock file in the state root: one daemon per
// root. A daemon whose store is in a data directory other than the root
// holds the same lock there too: one daemon per store.
const lockName = "daemon.lock"

// Config wires a Manager.
type Config struct {
	// Root is the state root the jail backend records sandboxes in.
	Root *state.Root
	// Jail starts and attaches to jail sandboxes.
	Jail *jail.Jail
	// VM starts and attaches to micro-VM sandboxes; nil answers creates
	// with backend vm as unsupported (and auto picks the jail).
	VM *vm.Backend
	// AutoVM says whether backend "auto" picks a micro-VM (the cached KVM
	// boot probe passed: TCG is never chosen by auto) and why; nil means
	// never. It is asked at each auto create and should be cheap.
	AutoVM func(ctx context.Context) (bool, string)
	// Store holds the durable sandbox records and event log.
	Store *store.Store
	// DataDir is the directory of Store when it is not the root's (see
	// datadir.DirFor); the daemon locks it as it locks the root, so two
	// daemons never share one store's records. Empty means the root.
	DataDir string
	// Reclaim removes the kernel objects recorded in a dead sandbox's
	// state directory (backend first, then network); used by GC.
	Reclaim func(dir string) error
	// Logger receives the daemon's logs; nil discards.
	Logger *slog.Logger
	// Registry receives the manager's metrics; nil registers nowhere.
	Registry prometheus.Registerer
	// MaxSandboxes caps the sandboxes that exist at once (pool members
	// not counted).
	MaxSandboxes int
	// MaxConcurrentCreates caps backend starts running at once; further
	// creates wait for a slot (bounded by their context).
	MaxConcurrentCreates int
	// MaxFileSize caps uploads and downloads, in bytes.
	MaxFileSize int64
	// Pools are the warm pools to keep filled.
	Pools []PoolClass
	// SweepInterval is how often time-to-live and idle timeouts are checked.
	SweepInterval time.Duration
	// GCInterval is how often leftovers of dead owners are reclaimed.
	GCInterval time.Duration
	// EventsKeep bounds the stored event log.
	EventsKeep int
}

// Manager owns the daemon's sandboxes. It is safe for concurrent use.
type Manager struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File
	// dataLock is the daemon lock of Config.DataDir, nil when that is the
	// root.
	dataLock *os.File
	bus      *bus
	met      *metrics
	sem      chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	boxes map[string]*box // by user-visible ID
	pools map[string]*pool
	// shapes lists the pools of each shape (CreateOptions.shapeKey), in
	// the order of the configuration.
	shapes map[string][]*pool
	closed bool
}

// box is one sandbox of the manager.
type box struct {
	backendID string
	token     []byte
	class     string
	shape     string        // of a create: the pools it may take a member from
	gone      chan struct{} // closed when destroyed

	mu       sync.Mutex
	id       string // user ID; the pool ID while pooled
	opts     CreateOptions
	state    string
	fromPool bool
	created  time.Time
	started  time.Time
	inst     instance
	client   *agentapi.Client
	// dialing holds a token while a caller connects a new client (see
	// agent); made on first use.
	dialing    chan struct{}
	exit       *Exit
	lastActive time.Time
	execs      int // running execs
	busy       int // running execs and file transfers
	// attached marks a sandbox re-attached after a daemon restart: the
	// backend handle then has no network handle (see destroy).
	attached bool
	expiring bool
	// policyDone is set while a claimed pool member takes its user's
	// allow rules (see Manager.claim), and closed once they are in force
	// or have failed (policyErr). Nothing reaches the agent before.
	policyDone chan struct{}
	policyErr  error
	// addrs are the sandbox's and its gateway's addresses, when read
	// ahead of a network update (see Manager.claim).
	addrs []string

	destroyOnce sync.Once
	destroyErr  error
}

// New opens the manager: it takes the state root's daemon lock, recovers
// every sandbox recorded in the store (re-attaching survivors, reclaiming
// the rest), and starts the background work (events, timeouts, pools, GC).
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Root == nil || cfg.Jail == nil || cfg.Store == nil || cfg.Reclaim == nil {
		return nil, errors.New("daemon: Root, Jail, Store and Reclaim are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.MaxSandboxes <= 0 {
		cfg.MaxSandboxes = DefaultMaxSandboxes
	}
	if cfg.MaxConcurrentCreates <= 0 {
		cfg.MaxConcurrentCreates = DefaultMaxConcurrentCreates
	}
	if cfg.MaxFileSize <= 0 {
		cfg.MaxFileSize = DefaultMaxFileSize
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = DefaultGCInterval
	}
	if cfg.EventsKeep <= 0 {
		cfg.EventsKeep = DefaultEventsKeep
	}
	lock, err := lockRoot(cfg.Root.Dir())
	if err != nil {
		return nil, err
	}
	var dataLock *os.File
	if cfg.DataDir != "" && filepath.Clean(cfg.DataDir) != cfg.Root.Dir() {
		if dataLock, err = lockRoot(cfg.DataDir); err != nil {
			lock.Close()
			return nil, fmt.Errorf("data directory: %w", err)
		}
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, lock: lock, dataLock: dataLock, sem: make(chan struct{}, cfg.MaxConcurrentCreates),
		boxes: map[string]*box{}, pools: map[string]*pool{}, shapes: map[string][]*pool{}}
	fail := func(err error) (*Manager, error) {
		m.unlock()
		return nil, err
	}
	if m.bus, err = newBus(ctx, cfg.Store, cfg.Logger, cfg.EventsKeep); err != nil {
		return fail(err)
	}
	if m.met, err = newMetrics(cfg.Registry, m); err != nil {
		return fail(fmt.Errorf("register metrics: %w", err))
	}
	for _, pc := range cfg.Pools {
		if err := pc.Template.Validate(); err != nil {
			return fail(fmt.Errorf("pool %q: %w", pc.Name, err))
		}
		if pc.Template.Backend == BackendAuto {
			return fail(fmt.Errorf("pool %q: backend auto: name the backend of a pool (jail or vm): %w", pc.Name, sandbox.ErrInvalid))
		}
		if pc.Template.Backend == BackendVM && cfg.VM == nil {
			return fail(fmt.Errorf("pool %q: %w", pc.Name, errNoVM))
		}
		p := newPool(pc)
		if _, dup := m.pools[p.key]; dup {
			return fail(fmt.Errorf("pool %q: same class as another pool", pc.Name))
		}
		m.pools[p.key] = p
		shape := pc.Template.shapeKey()
		m.shapes[shape] = append(m.shapes[shape], p)
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.recover(ctx); err != nil {
		m.cancel()
		m.closeClients()
		return fail(fmt.Errorf("recover sandboxes: %w", err))
	}
	m.goBackground()
	return m, nil
}

// unlock releases the daemon locks.
func (m *Manager) unlock() error {
	err := m.lock.Close()
	if m.dataLock != nil {
		err = errors.Join(err, m.dataLock.Close())
	}
	return err
}

// lockRoot takes the daemon lock of dir (the root or the data directory)
// without blocking.
func lockRoot(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open daemon lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s)", ErrBusy, dir)
		}
		return nil, fmt.Errorf("lock daemon lock: %w", err)
	}
	return f, nil
}

func (m *Manager) goBackground() {
	m.wg.Add(3)
	go func() { defer m.wg.Done(); m.bus.run(m.ctx, 100*time.Millisecond) }()
	go func() { defer m.wg.Done(); m.sweep() }()
	go func() { defer m.wg.Done(); m.gcLoop() }()
	for _, p := range m.pools {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.fill(p) }()
	}
}

// spawn runs f in the background, counted in the work Close waits for,
// and reports false, without running it, once Close has begun.
func (m *Manager) spawn(f func()) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

// Close stops the background work and disconnects from the agents. The
// sandboxes (and pool members) keep running: the next daemon re-attaches
// them.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	m.closeClients()
	return m.unlock()
}

func (m *Manager) closeClients() {
	m.mu.Lock()
	var all []*box
	for _, b := range m.boxes {
		all = append(all, b)
	}
	for _, p := range m.pools {
		all = append(all, p.ready...)
	}
	m.mu.Unlock()
	for _, b := range all {
		b.mu.Lock()
		if b.client != nil {
			b.client.Close()
			b.client = nil
		}
		b.mu.Unlock()
	}
}

// Subscribe starts a feed of live events of sandboxID (all when empty).
func (m *Manager) Subscribe(sandboxID string) *Subscription { return m.bus.subscribe(sandboxID) }

// Events returns stored events of sandboxID (all when empty) with a
// sequence number above after, the newest limit of them when limit > 0,
// oldest first.
func (m *Manager) Events(ctx context.Context, sandboxID string, after int64, limit int) ([]Event, error) {
	return m.bus.history(ctx, sandboxID, after, limit)
}

// Logs returns the newest limit events of the sandbox id (exec records and
// lifecycle events), oldest first. The sandbox must exist.
func (m *Manager) Logs(ctx context.Context, id string, limit int) ([]Event, error) {
	if _, err := m.lookup(id); err != nil {
		return nil, err
	}
	return m.bus.history(ctx, id, 0, limit)
}

// MaxFileSize is the upload and download limit in bytes.
func (m *Manager) MaxFileSize() int64 { return m.cfg.MaxFileSize }

// Create makes a sandbox from o: from a warm pool member of the same class
// when one is ready (unless o.NoPool), else with a cold start. It returns
// once the sandbox's agent answers.
func (m *Manager) Create(ctx context.Context, o CreateOptions) (*Info, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := m.resolveBackend(ctx, &o); err != nil {
		return nil, err
	}
	if o.ID == "" {
		o.ID = sandbox.NewID()
	}
	t0 := time.Now()
	b := &box{backendID: o.ID, id: o.ID, opts: o, state: StateCreating, created: t0.UTC(), class: o.classKey(), shape: o.shapeKey(), gone: make(chan struct{})}
	m.mu.Lock()
	switch {
	case m.closed:
		m.mu.Unlock()
		return nil, ErrClosed
	case m.boxes[o.ID] != nil:
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", sandbox.ErrExists, o.ID)
	case len(m.boxes) >= m.cfg.MaxSandboxes:
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %d sandboxes exist, the maximum (--max-sandboxes)", ErrLimit, m.cfg.MaxSandboxes)
	}
	m.boxes[o.ID] = b
	m.mu.Unlock()

	if !o.NoPool {
		if mb, err := m.claim(ctx, b); err != nil {
			m.unreserve(b)
			return nil, err
		} else if mb != nil {
			m.observeCreate(o.Backend, "pool", t0)
			return m.info(mb, false), nil
		}
	}
	if err := m.acquire(ctx); err != nil {
		m.unreserve(b)
		return nil, err
	}
	err := m.start(ctx, b, StateRunning)
	m.release()
	if err != nil {
		m.unreserve(b)
		return nil, err
	}
	m.observeCreate(o.Backend, "cold", t0)
	m.watch(b)
	return m.info(b, false), nil
}

func (m *Manager) acquire(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for a create slot (%d creates running, --max-creates): %w", cap(m.sem), ctx.Err())
	}
}

func (m *Manager) release() { <-m.sem }

func (m *Manager) unreserve(b *box) {
	m.mu.Lock()
	if m.boxes[b.id] == b {
		delete(m.boxes, b.id)
	}
	m.mu.Unlock()
}

// start records b in the store, starts it with its backend and connects
// to its agent; on error everything is undone.
func (m *Manager) start(ctx context.Context, b *box, final string) (err error) {
	tok, err := newToken(b.opts.Backend)
	if err != nil {
		return err
	}
	b.token = tok
	specJSON, err := json.Marshal(b.opts)
	if err != nil {
		return fmt.Errorf("encode spec: %w", err)
	}
	row := &store.SandboxRow{ID: b.id, BackendID: b.backendID, Backend: b.opts.Backend, State: store.StateCreating, Spec: specJSON,
		Labels: b.opts.Labels, Token: tok, TTL: b.opts.TTL, Idle: b.opts.IdleTimeout, Created: b.created}
	if final == statePooled {
		row.PoolClass = b.class
	}
	if err := m.cfg.Store.InsertSandbox(ctx, row); err != nil {
		m.met.createFail.WithLabelValues("record").Inc()
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("%w: %q", sandbox.ErrExists, b.id)
		}
		return err
	}
	if final != statePooled {
		m.bus.emit(b.id, EventCreated, Detail{})
	}
	defer func() {
		if err != nil {
			if derr := m.cfg.Store.DeleteSandbox(context.WithoutCancel(ctx), b.id); derr != nil {
				m.log.Error("delete record of failed sandbox", "sandbox", b.id, "err", derr)
			}
			if final != statePooled {
				m.bus.emit(b.id, EventFailed, Detail{Step: startStep(err), Error: err.Error()})
				m.bus.emit(b.id, EventDestroyed, Detail{Reason: "create failed"})
			}
		}
	}()
	spec := b.opts.Spec
	spec.ID, spec.Command = b.backendID, nil
	inst, c, err := m.launch(ctx, b, spec, tok)
	if err != nil {
		m.met.createFail.WithLabelValues(startStep(err)).Inc()
		return err
	}
	now := time.Now().UTC()
	st := store.StateRunning
	if final == statePooled {
		st = store.StatePooled
	}
	if err := m.cfg.Store.SetSandboxState(ctx, b.id, st, now); err != nil {
		m.met.createFail.WithLabelValues("record").Inc()
		c.Close()
		if cerr := inst.Close(); cerr != nil {
			m.log.Error("roll back sandbox", "sandbox", b.id, "err", cerr)
		}
		return err
	}
	b.mu.Lock()
	b.inst, b.client, b.state, b.started, b.lastActive = inst, c, final, now, now
	b.mu.Unlock()
	if final != statePooled {
		m.bus.emit(b.id, EventStarted, Detail{})
		m.log.Info("sandbox started", "sandbox", b.id, "backend", b.opts.Backend, "pid", inst.PID())
	}
	return nil
}

// watch turns the exit of b's init into an exited sandbox.
func (m *Manager) watch(b *box) {
	b.mu.Lock()
	inst := b.inst
	b.mu.Unlock()
	go func() {
		select {
		case <-inst.Done():
			m.onExit(b)
		case <-b.gone:
		}
	}()
}

// onExit handles a sandbox whose init ended without being destroyed: OOM
// of init, a kill from outside. Its kernel objects are removed at once;
// the record stays (state exited) until it is destroyed or expires.
func (m *Manager) onExit(b *box) {
	b.mu.Lock()
	prev := b.state
	if prev != StateRunning && prev != statePooled {
		b.mu.Unlock()
		return
	}
	b.state = StateExited
	inst, c, id := b.inst, b.client, b.id
	b.client = nil
	b.mu.Unlock()
	var oom bool
	if n, err := inst.Group().OOMKills(); err == nil && n > 0 {
		oom = true
	}
	if c != nil {
		c.Close()
	}
	if err := inst.Close(); err != nil {
		m.log.Error("remove exited sandbox", "sandbox", id, "err", err)
	}
	if prev == statePooled {
		m.log.Warn("warm pool member exited", "pool_id", id, "oom", oom)
		m.destroy(b, "pool member exited")
		return
	}
	reason := "init exited"
	if oom {
		reason = "out of memory"
	}
	ex := &Exit{Time: time.Now().UTC(), OOMKilled: oom, Reason: reason}
	b.mu.Lock()
	b.exit = ex
	b.mu.Unlock()
	if err := m.cfg.Store.SetSandboxState(m.ctx, id, store.StateExited, time.Time{}); err != nil {
		m.log.Error("record exited sandbox", "sandbox", id, "err", err)
	}
	m.bus.emit(id, EventExited, Detail{Reason: reason, OOMKilled: oom})
	if oom {
		m.bus.emit(id, EventOOM, Detail{})
	}
	m.log.Warn("sandbox exited", "sandbox", id, "reason", reason)
}

// lookup returns the sandbox id.
func (m *Manager) lookup(id string) (*box, error) {
	m.mu.Lock()
	b := m.boxes[id]
	m.mu.Unlock()
	if b == nil {
		return nil, fmt.Errorf("%w: %q", sandbox.ErrNotFound, id)
	}
	return b, nil
}

// running returns the sandbox id if it is running, with its backend handle.
func (m *Manager) running(id string) (*box, instance, error) {
	b, err := m.lookup(id)
	if err != nil {
		return nil, nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != StateRunning {
		return nil, nil, fmt.Errorf("%w: %q is %s", ErrNotRunning, id, b.state)
	}
	return b, b.inst, nil
}

// agent returns a connected client of b's agent, reconnecting if the
// previous connection broke. A reconnect may wait long (a micro-VM guest
// is hostile: it can drop its session and then stall the handshake), so
// it runs without b.mu, which guards the state that List, Get, destroy
// and the sweep read; concurrent callers wait for the one connect under
// way, each within its own context.
func (b *box) agent(ctx context.Context) (*agentapi.Client, error) {
	if err := b.waitPolicy(ctx); err != nil {
		return nil, err
	}
	c, dialing, err := b.liveClient()
	if c != nil || err != nil {
		return c, err
	}
	select {
	case dialing <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("connect to the agent of %q: wait for the connect under way: %w", b.id, ctx.Err())
	}
	defer func() { <-dialing }()
	// Another caller may have connected while this one waited.
	c, _, err = b.liveClient()
	if c != nil || err != nil {
		return c, err
	}
	b.mu.Lock()
	inst, tok := b.inst, b.token
	b.mu.Unlock()
	c, err = inst.connect(ctx, tok)
	if err != nil {
		return nil, fmt.Errorf("connect to the agent of %q: %w", b.id, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != StateRunning {
		// Destroyed (or exited) while connecting.
		c.Close()
		return nil, fmt.Errorf("%w: %q is %s", ErrNotRunning, b.id, b.state)
	}
	b.client = c
	return c, nil
}

// liveClient returns b's connected client, or the semaphore a caller
// takes to connect a new one; an error when b is not running.
func (b *box) liveClient() (*agentapi.Client, chan struct{}, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != StateRunning {
		return nil, nil, fmt.Errorf("%w: %q is %s", ErrNotRunning, b.id, b.state)
	}
	if b.client != nil {
		select {
		case <-b.client.Done():
			b.client = nil
		default:
			return b.client, nil, nil
		}
	}
	if b.dialing == nil {
		b.dialing = make(chan struct{}, 1)
	}
	return nil, b.dialing, nil
}

func (b *box) touch() {
	b.mu.Lock()
	b.lastActive = time.Now().UTC()
	b.mu.Unlock()
}

// Get returns the sandbox id, with its live resource usage and addresses.
func (m *Manager) Get(ctx context.Context, id string) (*Info, error) {
	b, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	return m.info(b, true), nil
}

// List returns every sandbox whose labels include all of labels, oldest first.
func (m *Manager) List(ctx context.Context, labels map[string]string) []Info {
	m.mu.Lock()
	all := make([]*box, 0, len(m.boxes))
	for _, b := range m.boxes {
		all = append(all, b)
	}
	m.mu.Unlock()
	out := make([]Info, 0, len(all))
	for _, b := range all {
		i := m.info(b, false)
		if matches(i.Labels, labels) {
			out = append(out, *i)
		}
	}
	sort.Slice(out, func(a, c int) bool {
		if !out[a].Created.Equal(out[c].Created) {
			return out[a].Created.Before(out[c].Created)
		}
		return out[a].ID < out[c].ID
	})
	return out
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

func (m *Manager) info(b *box, full bool) *Info {
	b.mu.Lock()
	i := &Info{
		ID: b.id, Backend: b.opts.Backend, State: b.state, BackendID: b.backendID, Key: sandbox.KeyOf(b.backendID),
		Labels: b.opts.Labels, Created: b.created, Started: b.started, TTL: b.opts.TTL, IdleTimeout: b.opts.IdleTimeout,
		LastActive: b.lastActive, FromPool: b.fromPool, Spec: b.opts.Spec, ActiveExecs: b.execs, Exit: b.exit,
	}
	i.Spec.ID = b.id
	if b.opts.TTL > 0 {
		i.ExpiresAt = b.created.Add(b.opts.TTL)
	}
	inst, addrs := b.inst, b.addrs
	b.mu.Unlock()
	if inst != nil && i.State == StateRunning {
		i.InitPID = inst.PID()
		if u, err := inst.Group().Usage(); err == nil {
			i.Usage = &u
		}
		if addrs != nil {
			i.Addresses = append(i.Addresses, addrs...)
		} else if n := inst.Network(); n != nil {
			i.Addresses = append(i.Addresses, n.Addr().String(), n.Gateway().String())
		} else if full {
			// Re-attached: the record has the addresses.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if st, err := network.Inspect(ctx, inst.stateDir()); err == nil && st.Networked {
				i.Addresses = append(i.Addresses, st.SandboxAddr.String(), st.HostAddr.String())
			}
			cancel()
		}
	}
	return i
}

type poolStat struct {
	name          string
	ready, target int
}

// counts returns the number of sandboxes by state and the pools' fill.
func (m *Manager) counts() (map[string]int, []poolStat) {
	m.mu.Lock()
	all := make([]*box, 0, len(m.boxes))
	for _, b := range m.boxes {
		all = append(all, b)
	}
	var pools []poolStat
	for _, p := range m.pools {
		pools = append(pools, poolStat{p.class.Name, len(p.ready), p.class.Size})
	}
	m.mu.Unlock()
	c := map[string]int{}
	for _, b := range all {
		b.mu.Lock()
		c[b.state]++
		b.mu.Unlock()
	}
	for _, p := range pools {
		c[statePooled] += p.ready
	}
	return c, pools
}

// Destroy kills the sandbox id and removes everything it had. Concurrent
// calls wait for the same teardown.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	b, err := m.lookup(id)
	if err != nil {
		return err
	}
	b.mu.Lock()
	creating := b.state == StateCreating
	b.mu.Unlock()
	if creating {
		return fmt.Errorf("%w: %q is still being created", ErrNotRunning, id)
	}
	done := make(chan error, 1)
	go func() { done <- m.destroy(b, "destroyed by request") }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// destroy tears b down once; later calls wait for the first.
func (m *Manager) destroy(b *box, reason string) error {
	b.destroyOnce.Do(func() {
		t0 := time.Now()
		b.mu.Lock()
		id, inst, c, attached := b.id, b.inst, b.client, b.attached
		b.state, b.client = StateDestroying, nil
		b.mu.Unlock()
		if c != nil {
			c.Close()
		}
		if inst != nil && attached && inst.Network() == nil {
			// A re-attached handle knows nothing of the network;
			// remove it from its record before Close removes the record.
			if err := network.Reclaim(inst.stateDir()); err != nil {
				b.destroyErr = fmt.Errorf("destroy %q: %w", id, err)
				m.log.Error("remove network of re-attached sandbox", "sandbox", id, "err", err)
			}
		}
		if inst != nil {
			if err := inst.Close(); err != nil {
				// The state directory stays; GC reclaims it from its records.
				b.destroyErr = fmt.Errorf("destroy %q: %w", id, err)
				m.log.Error("destroy sandbox", "sandbox", id, "err", err)
			}
		}
		if err := m.cfg.Store.DeleteSandbox(context.Background(), id); err != nil {
			m.log.Error("delete sandbox record", "sandbox", id, "err", err)
		}
		m.mu.Lock()
		if m.boxes[id] == b {
			delete(m.boxes, id)
		}
		for _, p := range m.pools {
			p.remove(b)
		}
		m.mu.Unlock()
		close(b.gone)
		m.met.destroy.Observe(time.Since(t0).Seconds())
		m.bus.emit(id, EventDestroyed, Detail{Reason: reason})
		m.log.Info("sandbox destroyed", "sandbox", id, "reason", reason)
	})
	<-b.gone
	return b.destroyErr
}

// networkUpdater is a sandbox whose egress policy can change while it runs.
type networkUpdater interface {
	UpdateNetwork(ctx context.Context, allow []string) error
}

// UpdateNetwork replaces the egress allow rules of the running sandbox id.
func (m *Manager) UpdateNetwork(ctx context.Context, id string, allow []string) (*Info, error) {
	b, inst, err := m.running(id)
	if err != nil {
		return nil, err
	}
	// The rules a claim is still applying come first.
	if err := b.waitPolicy(ctx); err != nil {
		return nil, err
	}
	b.mu.Lock()
	attached := b.attached
	b.mu.Unlock()
	if attached && inst.Network() == nil {
		if st, err := network.Inspect(ctx, inst.stateDir()); err == nil && st.Networked {
			return nil, fmt.Errorf("update network of %q: the sandbox was re-attached after a daemon restart and cannot take over its network yet: %w", id, sandbox.ErrUnsupported)
		}
	}
	var u networkUpdater = inst
	if err := u.UpdateNetwork(ctx, allow); err != nil {
		return nil, fmt.Errorf("update network of %q: %w", id, err)
	}
	b.mu.Lock()
	b.opts.Spec.Network.Allow = append([]string(nil), allow...)
	specJSON, err := json.Marshal(b.opts)
	b.mu.Unlock()
	if err == nil {
		err = m.cfg.Store.SetSandboxSpec(ctx, id, specJSON)
	}
	if err != nil {
		m.log.Error("record network policy", "sandbox", id, "err", err)
	}
	m.bus.emit(id, EventNetworkUpdated, Detail{Allow: allow})
	b.touch()
	return m.info(b, true), nil
}

// sweep enforces time-to-live and idle timeouts, and ends exited sandboxes
// whose time-to-live has passed.
func (m *Manager) sweep() {
	t := time.NewTicker(m.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		m.mu.Lock()
		var due []*box
		var reasons []string
		for _, b := range m.boxes {
			b.mu.Lock()
			reason := ""
			switch {
			case b.expiring || (b.state != StateRunning && b.state != StateExited):
			case b.opts.TTL > 0 && now.Sub(b.created) >= b.opts.TTL:
				reason = "ttl"
			case b.state == StateRunning && b.opts.IdleTimeout > 0 && b.busy == 0 && now.Sub(b.lastActive) >= b.opts.IdleTimeout:
				reason = "idle"
			}
			if reason != "" {
				b.expiring = true
				due = append(due, b)
				reasons = append(reasons, reason)
			}
			b.mu.Unlock()
		}
		m.mu.Unlock()
		for i, b := range due {
			b.mu.Lock()
			id := b.id
			b.mu.Unlock()
			m.met.timeouts.WithLabelValues(reasons[i]).Inc()
			m.bus.emit(id, EventTimeout, Detail{Reason: reasons[i]})
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				_ = m.destroy(b, "timeout: "+reasons[i])
			}()
		}
	}
}

// gcLoop reclaims, now and then, what sandboxes of dead owners left.
func (m *Manager) gcLoop() {
	t := time.NewTicker(m.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		if n, err := m.cfg.Root.Collect(m.cfg.Reclaim); err != nil {
			m.log.Warn("reclaim leftovers", "err", err)
		} else if n > 0 {
			m.log.Info("reclaimed leftovers of dead sandboxes", "count", n)
		}
	}
}
