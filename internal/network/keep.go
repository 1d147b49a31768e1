package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A pool that maintains itself: after a networked sandbox takes a slot or
// leaves a used one, something must destroy the used slots and prepare
// free ones again, off every sandbox's critical path. KeepPool is that
// work, done once: the embedded CLI runs it in a detached process (`ironclaw
// net pool maintain`), the daemon in a goroutine (Keeper). One maintainer
// per root works at a time: KeepPool holds a flock on Root/net/maintain.lock
// and another one returns at once.

// MaintainLock is the name of the maintainers' flock under Root/net.
const MaintainLock = "maintain.lock"

// maxKeepPasses bounds the passes of one KeepPool: each pass destroys the
// used slots and fills the pool; a pass that has nothing to do ends it
// sooner.
const maxKeepPasses = 8

// Kept is what one KeepPool did.
type Kept struct {
	// Busy: another maintainer held the lock; this one did nothing.
	Busy bool
	// Destroyed and Made count the slots destroyed and prepared.
	Destroyed, Made int
}

// KeepPool is one run of pool maintenance: it destroys used slots and
// claimed slots whose owner is gone (Maintain), and prepares slots until
// free are free (Fill), pass after pass until a pass has nothing to do
// (sandboxes may claim or release slots meanwhile), at most maxKeepPasses.
// It never touches a slot whose flock is held, and it returns when its
// work is done or ctx ends. If another maintainer of the root is at work
// it returns at once with Busy. After it drops the lock it looks once
// more, and takes the lock again if work arrived that a maintainer
// turned away while it held the lock would have done.
func KeepPool(ctx context.Context, cfg Config, free int) (Kept, error) {
	var k Kept
	c, err := cfg.withDefaults()
	if err != nil {
		return k, err
	}
	if free < 0 {
		return k, fmt.Errorf("keep pool: %d free slots: want 0 or more", free)
	}
	dir := filepath.Join(c.Root, "net")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return k, fmt.Errorf("keep pool: %w", err)
	}
	for attempt := 0; attempt < 3; attempt++ {
		lock, err := lockFile(filepath.Join(dir, MaintainLock), false)
		if errors.Is(err, unix.EWOULDBLOCK) {
			k.Busy = attempt == 0
			return k, nil
		}
		if err != nil {
			return k, fmt.Errorf("keep pool: lock: %w", err)
		}
		err = keepPasses(ctx, c, free, &k)
		lock.Close()
		if err != nil {
			return k, err
		}
		if more, err := pending(c, free); err != nil || !more || ctx.Err() != nil {
			return k, err
		}
	}
	return k, nil
}

func keepPasses(ctx context.Context, c Config, free int, k *Kept) error {
	for pass := 0; pass < maxKeepPasses; pass++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		// A slot it cannot destroy must not stop the refill: the pool
		// would stay empty for every later sandbox. Slots only: removing
		// an earlier IronClaw's firewall layout (a one-time migration, a
		// dozen netlink dumps) is left to Maintain, which `ironclaw gc`
		// runs; this runs after every networked run.
		destroyed, merr := destroyUnused(ctx, c)
		k.Destroyed += destroyed
		made, ferr := Fill(ctx, c, free)
		k.Made += made
		if err := errors.Join(merr, ferr); err != nil {
			return fmt.Errorf("keep pool: %w", err)
		}
		if destroyed == 0 && made == 0 {
			break
		}
	}
	// With slots kept, forwarding stays on; with none (--free 0) the
	// root may have no network left.
	if free == 0 {
		if err := restoreForwarding(c.Root); err != nil {
			return fmt.Errorf("keep pool: %w", err)
		}
	}
	return nil
}

// pending reports whether the pool has work for a maintainer: fewer than
// free free slots, or a slot that is neither free nor held (used, or its
// owner is gone).
func pending(c Config, free int) (bool, error) {
	st, err := poolState(c)
	if err != nil {
		return false, err
	}
	return st.Free < free || st.Used > 0 || st.Orphaned > 0, nil
}

// PoolState counts the slots of a root's pool by state.
type PoolState struct {
	// Free slots wait for a claim.
	Free int
	// Prepared counts the free slots prepared with allow rules (see
	// Config.Prepare); the others let nothing out.
	Prepared int
	// Claimed slots belong to running sandboxes (their flock is held),
	// or are being prepared.
	Claimed int
	// Used slots are done with and wait for a maintainer (their flock
	// is free); free slots of another firewall format (see
	// firewall.Format), which no claim takes, count here too.
	Used int
	// Orphaned slots were claimed or prepared by a process that is gone
	// (flock free): a maintainer destroys them like used ones.
	Orphaned int
}

// Pool counts the slots of cfg's pool by state (for `ironclaw net pool`
// and tests).
func Pool(cfg Config) (PoolState, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return PoolState{}, err
	}
	return poolState(c)
}

func poolState(c Config) (PoolState, error) {
	var st PoolState
	ents, err := os.ReadDir(c.slotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("list pool slots: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), newSlotPrefix) {
			continue // still being made: not a slot yet
		}
		sdir := filepath.Join(c.slotsDir(), e.Name())
		b, _ := os.ReadFile(filepath.Join(sdir, slotState))
		if string(b) == stateFree {
			if staleFree(sdir) {
				st.Used++ // of another firewall format: never claimed
			} else {
				st.Free++
				if b, err := os.ReadFile(filepath.Join(sdir, slotFor)); err == nil && len(b) > 0 {
					st.Prepared++
				}
			}
			continue
		}
		held, err := lockHeld(filepath.Join(sdir, slotLock))
		switch {
		case err != nil:
			return st, err
		case held:
			st.Claimed++
		case string(b) == stateUsed:
			st.Used++
		default:
			st.Orphaned++
		}
	}
	return st, nil
}

// lockHeld reports whether another open file description holds the flock
// of path. It takes the lock for a moment if it is free; a missing file
// (the slot is being removed) counts as held.
func lockHeld(path string) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("pool slot lock: %w", err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("pool slot lock: %w", err)
	}
	return false, nil
}

// Keeper keeps a root's pool at a number of free slots from inside a
// long-lived process (the daemon): Run maintains the pool (KeepPool)
// whenever Wake was called since its last pass. Wake is Config.Wake for
// the process's sandbox networks.
type Keeper struct {
	cfg    Config
	free   int
	wake   chan struct{}
	settle time.Duration
}

// NewKeeper returns a Keeper of cfg's pool that keeps free slots free.
func NewKeeper(cfg Config, free int) *Keeper {
	return &Keeper{cfg: cfg, free: free, wake: make(chan struct{}, 1), settle: 50 * time.Millisecond}
}

// Wake asks for a round of maintenance; it never blocks.
func (k *Keeper) Wake() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// Run maintains the pool after each Wake, until ctx ends. It waits a
// moment after a Wake before it starts, so that the sandbox that woke it
// finishes its own setup or teardown first. Failures are logged; the
// next Wake tries again.
func (k *Keeper) Run(ctx context.Context) {
	log := k.cfg.Logger
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.wake:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(k.settle):
		}
		kept, err := KeepPool(ctx, k.cfg, k.free)
		if err != nil && ctx.Err() == nil && log != nil {
			log.Warn("network pool maintenance", "err", err, "destroyed", kept.Destroyed, "prepared", kept.Made)
		} else if log != nil && (kept.Destroyed > 0 || kept.Made > 0) {
			log.Debug("network pool maintained", "destroyed", kept.Destroyed, "prepared", kept.Made, "busy", kept.Busy)
		}
	}
}
