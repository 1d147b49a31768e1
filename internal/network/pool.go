package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"golang.org/x/sys/unix"
)

// The pool keeps prepared network slots under Root/net/slots, so that
// making a namespace and veth pair (about 11 ms here) and removing them
// (about 30 ms) happen off a sandbox's critical path:
//
//   - Fill prepares slots: namespace, veth pair, address, and a firewall:
//     the rulesets of Config.Prepare, or of an empty policy, which lets
//     nothing out. No process is in a free slot's namespace, so nothing
//     can use what its rules allow. Its file "for" names the prepared
//     policy's rules, its state file says "free".
//   - Claim takes a free slot under its flock, which the sandbox holds for
//     its whole life, writes "claimed KEY", and installs the sandbox's
//     policy (a rule install, well under a millisecond). It takes a slot
//     prepared for that policy first: its rules are only read back and
//     verified, with no commit (see Net.holds).
//   - When the sandbox ends the host side of its link is set down (see
//     shutSlot), and its slot is marked "used" and is never given to
//     another sandbox: a workload may have left state behind (conntrack
//     entries, neighbour entries, sockets of escaped processes), and no
//     check can prove a namespace clean. Maintain destroys used slots, and
//     claimed slots whose owner died (their flock is free), later: in a
//     background process or at the next `ironclaw gc`.
//
// Each slot is an ordinary network record (net.json) in its own directory,
// so the same removal code reclaims it.

const (
	slotLock  = "lock"
	slotState = "state"
	slotFor   = "for"
	stateFree = "free"
	stateUsed = "used"
)

// preparable returns the policy a slot is prepared with for p (see
// Config.Prepare): p itself if it has address rules only, else the empty
// policy.
func preparable(p firewall.Policy) firewall.Policy {
	if len(p.Domains) > 0 || !p.Networked() {
		return firewall.Policy{}
	}
	return p
}

// preparedFor is the content of a slot's "for" file for a slot prepared
// with p: its rules, one a line ("" for the empty policy).
func preparedFor(p firewall.Policy) string { return strings.Join(preparable(p).Rules(), "\n") }

func (c *Config) slotsDir() string { return filepath.Join(c.Root, "net", "slots") }

// slot is a claimed pool slot: its directory and the held flock.
type slot struct {
	dir  string
	lock *os.File
}

// release ends a sandbox's use of its slot: the slot is marked used (never
// reused) and its flock dropped. shut says whether the host side of the
// slot's link was closed (see shutSlot); a slot that could not be shut is
// destroyed at once rather than left open until Maintain. The sandbox's
// record that points at the slot goes last, only if all of that worked;
// otherwise it stays, so that Reclaim destroys the slot.
func (s *slot) release(sandboxDir string, key sandbox.Key, shut bool) error {
	err := writeState(filepath.Join(s.dir, slotState), stateUsed)
	err = errors.Join(err, s.lock.Close())
	if err == nil && !shut {
		_, err = destroySlot(s.dir, key, false)
	}
	if err != nil {
		return err
	}
	return removeRecord(sandboxDir)
}

// shutSlot closes the host side of a claimed slot's link as its sandbox
// ends: the slot, namespace and link stay until Maintain destroys them,
// and until then nothing may pass, not even replies on connections a
// process left behind in the namespace still holds (orphaned sockets
// still send what they had queued). It sets the host side of the veth
// pair down and reads it back, then the sandbox's side: a veth pair with
// one side down carries nothing either way. The host table keeps the slot's elements until the
// slot is destroyed; they cannot match while the link is down, and
// nothing else may set an IronClaw link up.
//
// It is not an nftables commit on purpose: the kernel destroys a commit's
// transaction after an RCU grace period (about 10 ms here), and closing
// any nftables socket before that waits for it (nft_rcv_nl_event). A
// commit here, this close to a short-lived process's exit, would hold
// the exit for most of a grace period.
func (n *Net) shutSlot() error {
	host, err := netns.Current()
	if err != nil {
		return fmt.Errorf("shut slot: %w", err)
	}
	defer host.Close()
	if err := netns.SetDown(host, n.rec.Names.HostIf); err != nil {
		return fmt.Errorf("shut slot: %w", err)
	}
	// The sandbox's side too: a host agent that brings links up
	// (networkd, NetworkManager, an admin) can reach the host side, not
	// a link inside the slot's namespace.
	if err := netns.SetDown(n.ns, SandboxIf); err != nil {
		return fmt.Errorf("shut slot: %w", err)
	}
	n.prevInner, n.prevPart = nil, nil
	return nil
}

// lockFile opens path, creating it if needed, and takes its flock
// (waiting for it if block is set).
func lockFile(path string, block bool) (*os.File, error) {
	return flockPath(path, os.O_CREATE, block)
}

// lockSlot takes the flock of a slot's lock file without waiting. A
// destroyer removes the slot's state before its files (destroySlot), so a
// slot whose lock file is gone and whose state is gone too is being
// removed: lockSlot fails with os.ErrNotExist rather than make the lock
// file again, which would leave that removal with a directory that is not
// empty. A slot that has its state but no lock file was never being
// removed (a lock file deleted by hand): the file is made, as the maker
// would have.
func lockSlot(sdir string) (*os.File, error) {
	path := filepath.Join(sdir, slotLock)
	f, err := flockPath(path, 0, false)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(sdir, slotState)); serr == nil {
			return flockPath(path, os.O_CREATE, false)
		}
	}
	return f, err
}

func flockPath(path string, create int, block bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|create|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if !block {
		how |= unix.LOCK_NB
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// writeState replaces a slot's state file atomically (see writeRecord on
// why there is no fsync).
func writeState(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Fill prepares slots until n are free. It returns how many it made.
func Fill(ctx context.Context, cfg Config, n int) (int, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return 0, err
	}
	free, err := countFree(c)
	if err != nil {
		return 0, err
	}
	made := 0
	for ; free+made < n; made++ {
		if err := ctx.Err(); err != nil {
			return made, err
		}
		if err := prepareSlot(ctx, c); err != nil {
			return made, err
		}
	}
	return made, nil
}

// staleFree reports whether the free slot in sdir was prepared by a build
// of another firewall format. A record that cannot be read is not taken
// for stale here (a claim fails on it, and Maintain leaves free slots
// alone otherwise).
func staleFree(sdir string) bool {
	rec, err := readRecord(sdir, RecordFile)
	return err == nil && rec != nil && staleSlot(rec)
}

func countFree(c Config) (int, error) {
	ents, err := os.ReadDir(c.slotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list pool slots: %w", err)
	}
	n := 0
	for _, e := range ents {
		sdir := filepath.Join(c.slotsDir(), e.Name())
		b, err := os.ReadFile(filepath.Join(sdir, slotState))
		if err == nil && string(b) == stateFree && !staleFree(sdir) {
			n++
		}
	}
	return n, nil
}

func prepareSlot(ctx context.Context, c Config) error {
	dir, key, lock, err := newSlotDir(c)
	if err != nil {
		return fmt.Errorf("prepare slot: %w", err)
	}
	defer lock.Close()
	n := &Net{cfg: c, dir: dir, key: key, log: c.Logger, ready: readyNow()}
	policy := preparable(c.Prepare)
	if err := n.setup(ctx, policy); err != nil {
		// teardown removes the record only once the objects are gone;
		// a slot directory that still has one is left (not "free") for
		// Maintain to destroy.
		rerr := n.teardown()
		if rerr == nil {
			rerr = removeSlotDir(dir)
		}
		return fmt.Errorf("prepare slot: %w", errors.Join(err, rerr))
	}
	// A slot's rulesets are its prepared policy's, read back and verified
	// by setup (the empty policy's let nothing out); a claim for another
	// policy only rewrites what differs.
	err = c.injected("slot-rules")
	if err == nil {
		err = writeState(filepath.Join(dir, slotFor), preparedFor(policy))
	}
	err = errors.Join(err, n.closeConns(false))
	n.ns.Close()
	if err != nil {
		rerr := removeObjects(n.rec)
		if rerr == nil {
			rerr = removeSlotDir(dir)
		}
		return fmt.Errorf("prepare slot: %w", errors.Join(err, rerr))
	}
	return writeState(filepath.Join(dir, slotState), stateFree)
}

// newSlotPrefix starts the name of a slot directory that is still being
// made; Maintain removes one whose maker died (it holds no object).
const newSlotPrefix = ".new-"

// newSlotDir makes a slot directory with a fresh key and returns it with
// its flock held. The directory is made and locked under a temporary name
// and then renamed into place, so no other process ever sees a slot
// directory whose flock is free while its maker still works on it (a
// maintainer would destroy it). It holds nothing yet: the slot's record
// is written before any of its objects is made (see setup).
func newSlotDir(c Config) (string, sandbox.Key, *os.File, error) {
	var rb [16]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return "", "", nil, err
	}
	key := sandbox.KeyOf("slot:" + hex.EncodeToString(rb[:]))
	if err := os.MkdirAll(c.slotsDir(), 0o700); err != nil {
		return "", "", nil, err
	}
	tmp, err := os.MkdirTemp(c.slotsDir(), newSlotPrefix)
	if err != nil {
		return "", "", nil, err
	}
	// Blocking: a maintainer may hold this lock for a moment to see
	// whether the directory's maker is alive (removeStaleNew, lockHeld).
	lock, err := lockFile(filepath.Join(tmp, slotLock), true)
	if err != nil {
		os.RemoveAll(tmp)
		return "", "", nil, fmt.Errorf("lock: %w", err)
	}
	dir := filepath.Join(c.slotsDir(), string(key))
	if err := os.Rename(tmp, dir); err != nil {
		lock.Close()
		os.RemoveAll(tmp)
		return "", "", nil, err
	}
	return dir, key, lock, nil
}

// staleNewAge is how old a slot directory still under its temporary name
// must be before removeStaleNew takes it for a dead maker's: a live maker
// renames it within milliseconds.
const staleNewAge = time.Minute

// removeStaleNew removes a slot directory still under its temporary name
// (newSlotDir) whose maker is gone: it is older than staleNewAge and its
// flock, if it has a lock file yet, is free. Such a directory holds at
// most the lock file, never a record or an object. The lock file is
// never created here: a maker between its mkdir and its open must find
// its directory as it left it.
func removeStaleNew(dir string) error {
	st, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove unfinished slot directory %s: %w", dir, err)
	}
	if time.Since(st.ModTime()) < staleNewAge {
		return nil // its maker may be at work
	}
	f, err := os.OpenFile(filepath.Join(dir, slotLock), os.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("remove unfinished slot directory %s: %w", dir, err)
	default:
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil // its maker is still at work
			}
			return fmt.Errorf("remove unfinished slot directory %s: %w", dir, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove unfinished slot directory %s: %w", dir, err)
	}
	return nil
}

// setupSlot is Setup for a network that becomes a pool slot of its own
// (Config.DeferRemoval): Begin found no free slot, so it makes one for
// this sandbox, claimed by it from the start and installed with its policy
// directly. At Close it is shut and left used, like any claimed slot, and
// a maintainer destroys it off the sandbox's exit path.
//
// Order, so that a SIGKILL at any point leaves nothing gc cannot reclaim:
// the slot directory appears locked; its state says "claimed KEY" (never
// "free", so no claim takes it; Maintain destroys it once the flock is
// free); the sandbox's record points at the slot (Reclaim destroys it
// through reclaimSlot); then the slot's own record is written before each
// of its objects (setup).
func setupSlot(ctx context.Context, c Config, dir string, key sandbox.Key, policy firewall.Policy) (*Net, error) {
	sdir, skey, lock, err := newSlotDir(c)
	if err != nil {
		return nil, fmt.Errorf("network setup: new slot: %w", err)
	}
	s := &slot{dir: sdir, lock: lock}
	c.at("slot-dir")
	if err := writeState(filepath.Join(sdir, slotState), "claimed "+string(key)); err != nil {
		return nil, fmt.Errorf("network setup: %w", errors.Join(err, lock.Close(), removeSlotDir(sdir)))
	}
	rec := &record{Version: 1, Key: string(key), Names: NamesOf(skey), NetnsDir: c.NetnsDir, Slot: sdir, Format: firewall.Format}
	if err := writeRecord(dir, RecordFile, rec); err != nil {
		return nil, fmt.Errorf("network setup: %w", errors.Join(err, lock.Close(), removeSlotDir(sdir)))
	}
	c.at("slot-claimed")
	n := &Net{cfg: c, dir: sdir, key: skey, log: c.Logger.With("sandbox_key", string(key)), ready: readyNow()}
	if err := n.setup(ctx, policy); err != nil {
		rerr := n.teardown()
		if rerr == nil {
			rerr = errors.Join(lock.Close(), removeSlotDir(sdir), removeRecord(dir))
		} else {
			// Left for Maintain (the slot is not free and its flock
			// goes) and for Reclaim (the sandbox's record stays).
			rerr = errors.Join(rerr, writeState(filepath.Join(sdir, slotState), stateUsed), lock.Close())
		}
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
		}
		return nil, fmt.Errorf("network setup: %w", err)
	}
	// From here on the network is the sandbox's claimed slot: its record
	// (the slot's names, the applied target) goes to the sandbox's
	// directory, as a claim's does.
	srec := *n.rec
	srec.Key, srec.Slot = string(key), sdir
	n.rec, n.dir, n.key, n.slot = &srec, dir, key, s
	if err := writeRecord(dir, RecordFile, n.rec); err != nil {
		return nil, fmt.Errorf("network setup: %w", errors.Join(err, n.teardown()))
	}
	return n, nil
}

// removeSlotDir removes a slot directory whose objects are all gone.
func removeSlotDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove slot directory: %w", err)
	}
	return nil
}

// Claim is Setup from a prepared slot of the pool: it takes a free slot and
// installs policy on it, verified. It fails with ErrPoolEmpty when no slot
// is free (the caller then uses Setup). Policies that allow nothing need no
// slot: use Setup.
func Claim(ctx context.Context, cfg Config, dir string, key sandbox.Key, policy firewall.Policy) (*Net, error) {
	n, err := claim(ctx, cfg, dir, key, policy)
	if err != nil {
		return nil, err
	}
	if err := n.Wait(ctx); err != nil {
		return nil, fmt.Errorf("network claim: %w", errors.Join(err, n.Close()))
	}
	return n, nil
}

// claim takes a free slot and starts installing policy on it in the
// background (see Begin).
func claim(ctx context.Context, cfg Config, dir string, key sandbox.Key, policy firewall.Policy) (*Net, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if !key.Valid() || !policy.Networked() {
		return nil, fmt.Errorf("network claim: need a valid key and a networked policy")
	}
	ents, err := os.ReadDir(c.slotsDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("network claim: %w", err)
	}
	// A slot prepared for this policy first, then one prepared with no
	// rules (whose rules let nothing out until the claim's are in), then
	// any. The search for the first ends at the maxMismatched'th free slot
	// prepared otherwise (a pool kept for other rules would cost a read of
	// every slot); the slots seen are tried next, then the rest in order.
	want := preparedFor(policy)
	var plain, others []string
	i := 0
	for ; i < len(ents) && len(plain)+len(others) < maxMismatched; i++ {
		sdir := filepath.Join(c.slotsDir(), ents[i].Name())
		// The state is read before the flock is tried, so that used
		// slots (most of the directory on a busy host) cost one read;
		// it is read again under the flock.
		if b, err := os.ReadFile(filepath.Join(sdir, slotState)); err != nil || string(b) != stateFree {
			continue
		}
		// A slot of a build before prepared slots has no "for": it
		// was prepared with no rules.
		b, err := os.ReadFile(filepath.Join(sdir, slotFor))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			others = append(others, sdir)
			continue
		}
		if string(b) != want {
			if len(b) == 0 {
				plain = append(plain, sdir)
			} else {
				others = append(others, sdir)
			}
			continue
		}
		if n, ok, err := tryClaim(ctx, c, sdir, dir, key, policy); ok {
			return n, err
		}
	}
	for _, sdir := range append(plain, others...) {
		if n, ok, err := tryClaim(ctx, c, sdir, dir, key, policy); ok {
			return n, err
		}
	}
	for _, e := range ents[i:] {
		sdir := filepath.Join(c.slotsDir(), e.Name())
		if b, err := os.ReadFile(filepath.Join(sdir, slotState)); err != nil || string(b) != stateFree {
			continue
		}
		if n, ok, err := tryClaim(ctx, c, sdir, dir, key, policy); ok {
			return n, err
		}
	}
	return nil, ErrPoolEmpty
}

// maxMismatched bounds the free slots prepared for other rules that a
// claim reads before it settles for one of them.
const maxMismatched = 8

// tryClaim claims the slot sdir, which was free when its state was read,
// for key. ok is false when the slot is no longer free or is of another
// firewall format: the caller tries the next.
func tryClaim(ctx context.Context, c Config, sdir, dir string, key sandbox.Key, policy firewall.Policy) (_ *Net, ok bool, _ error) {
	lock, err := lockSlot(sdir)
	if err != nil {
		return nil, false, nil // held (being prepared or in use), or being removed
	}
	b, err := os.ReadFile(filepath.Join(sdir, slotState))
	if err != nil || string(b) != stateFree {
		lock.Close()
		return nil, false, nil
	}
	n, err := claimSlot(ctx, c, sdir, lock, dir, key, policy)
	if errors.Is(err, errStaleSlot) {
		// Marked used: the maintainer destroys it and prepares a
		// fresh one. One that could not be marked stays claimed by
		// this sandbox, which Maintain destroys once the sandbox is
		// gone.
		if errors.Is(err, errSlotRelease) {
			c.Logger.Warn("pool slot of another firewall format skipped, not released", "slot", sdir, "err", err)
		} else {
			c.Logger.Info("pool slot of another firewall format skipped", "slot", sdir, "why", err)
		}
		c.wake()
		return nil, false, nil
	}
	if err != nil {
		return nil, true, fmt.Errorf("network claim: %w", err)
	}
	return n, true, nil
}

// errStaleSlot marks a free slot prepared by a build of another firewall
// format (see firewall.Format): its rulesets are not the ones this build
// makes and verifies, and no claim takes it.
var errStaleSlot = errors.New("pool slot of another firewall format")

// errSlotRelease marks a stale slot that a claim could not release.
var errSlotRelease = errors.New("release pool slot")

// staleSlot reports whether a slot's record is of another firewall format
// than this build's.
func staleSlot(rec *record) bool { return rec.Format != firewall.Format }

// claimSlot marks the slot claimed by key and opens its namespace, then
// installs policy in the background. Until the installation is done the
// slot's rules are the ones it was prepared with; the sandbox's workload
// starts only once the installation is verified (Net.Wait).
func claimSlot(ctx context.Context, c Config, sdir string, lock *os.File, dir string, key sandbox.Key, policy firewall.Policy) (*Net, error) {
	s := &slot{dir: sdir, lock: lock}
	c.at("slot-dir")
	if err := writeState(filepath.Join(sdir, slotState), "claimed "+string(key)); err != nil {
		lock.Close()
		return nil, err
	}
	srec, err := readRecord(sdir, RecordFile)
	if err == nil && (srec == nil || srec.Lease == nil) {
		err = errors.New("slot record incomplete")
	}
	if err == nil && staleSlot(srec) {
		// Nothing was installed: the slot is released as used, for
		// Maintain to destroy.
		if rerr := s.release(dir, key, true); rerr != nil {
			return nil, fmt.Errorf("slot %s: %w; %w: %w", sdir, errStaleSlot, errSlotRelease, rerr)
		}
		return nil, fmt.Errorf("slot %s (format %d, want %d): %w", sdir, srec.Format, firewall.Format, errStaleSlot)
	}
	var ns *netns.NS
	if err == nil {
		ns, err = netns.Open(srec.netnsPath())
	}
	if err != nil {
		// Nothing was installed and no process joined the slot: it
		// still holds the rules it was prepared with, and goes to
		// Maintain as used.
		return nil, errors.Join(err, s.release(dir, key, true))
	}
	rec := *srec
	rec.Key, rec.Slot = string(key), sdir
	lease := *srec.Lease
	n := &Net{cfg: c, dir: dir, key: key, log: c.Logger.With("sandbox_key", string(key)), rec: &rec, ns: ns, slot: s,
		ready:   make(chan struct{}),
		pending: &firewall.Target{Policy: policy, SandboxAddr: lease.Sandbox.Addr(), HostAddr: lease.Host.Addr(), HostIf: rec.Names.HostIf},
	}
	go func() {
		defer close(n.ready)
		n.installErr = n.installSlot(ctx, srec, lease, policy)
	}()
	return n, nil
}

// installSlot installs policy on a claimed slot whose record, as prepared,
// is srec.
func (n *Net) installSlot(ctx context.Context, srec *record, lease netns.Lease, policy firewall.Policy) error {
	// What the slot was prepared with, so the claim rewrites only the
	// chains that differ (everything is verified afterwards).
	n.ver = srec.version()
	if st, err := srec.target(); err == nil {
		inner, ierr := firewall.BuildSandbox(st)
		if part, err := firewall.BuildHost(st, n.ver); err == nil && ierr == nil {
			n.prevInner, n.prevPart = &inner, &part
		}
	}
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	return n.install(ctx, host, lease, policy)
}

// Maintain destroys used slots and claimed slots whose owner is gone, and
// returns how many it destroyed. It never touches a slot whose flock is
// held. Then, if the root has no sandbox network left, it puts back the
// uplink forwarding IronClaw turned on (see restoreForwarding), and it
// removes what an earlier IronClaw's host firewall layout left unused
// (firewall.RemoveOldLayout).
func Maintain(ctx context.Context, cfg Config) (int, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return 0, err
	}
	n, err := destroyUnused(ctx, c)
	return n, errors.Join(err, restoreForwarding(c.Root), removeOldLayout(c))
}

// destroyUnused is Maintain's slot part: it destroys used slots and
// claimed slots whose owner is gone, and unfinished slot directories of
// dead makers.
func destroyUnused(ctx context.Context, c Config) (int, error) {
	ents, err := os.ReadDir(c.slotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("pool maintenance: %w", err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		if ctx.Err() != nil {
			break
		}
		sdir := filepath.Join(c.slotsDir(), e.Name())
		if strings.HasPrefix(e.Name(), newSlotPrefix) {
			if err := removeStaleNew(sdir); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		b, _ := os.ReadFile(filepath.Join(sdir, slotState))
		if string(b) == stateFree && !staleFree(sdir) {
			continue
		}
		destroyed, err := destroySlot(sdir, "", true)
		if err != nil && !errors.Is(err, errSlotBusy) {
			errs = append(errs, err)
		}
		if destroyed {
			n++
		}
	}
	return n, errors.Join(errs...)
}

// SweepHost removes the host table's elements of links that no longer
// exist (as interfaces of this network namespace), and returns their
// names. A sandbox's link exists before its first elements are added and
// is deleted before they are removed, so elements without a link are
// left-overs: of an owner killed between deleting its link and its
// elements, or of a removal by an earlier build, whose read of the shared
// sets a concurrent commit could cut short (reads are now checked against
// the ruleset generation, see firewall's gen.go). They match no
// traffic, but a later link of the same name would inherit them until
// its first install. `ironclaw gc` runs this.
func SweepHost() ([]string, error) {
	hc, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("sweep host firewall: %w", err)
	}
	links, err := firewall.HostLinks(hc)
	if err != nil || len(links) == 0 {
		return nil, err
	}
	host, err := netns.Current()
	if err != nil {
		return nil, fmt.Errorf("sweep host firewall: %w", err)
	}
	defer host.Close()
	var gone []string
	var errs []error
	for _, l := range links {
		ok, err := netns.LinkExists(host, l)
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep host firewall: %w", err))
			continue
		}
		if ok {
			continue
		}
		if err := firewall.RemoveHost(hc, l); err != nil {
			errs = append(errs, fmt.Errorf("sweep host firewall: %w", err))
			continue
		}
		gone = append(gone, l)
	}
	return gone, errors.Join(errs...)
}

// removeOldLayout removes the unused objects of an earlier host firewall
// layout and logs what it removed. Entries of its maps for links that no
// longer exist (sandboxes of an earlier IronClaw that died without cleaning
// up) go first: while any entry is left, EnsureHostBase refuses to rewrite
// the table (firewall.ErrOldLayoutInUse).
func removeOldLayout(c Config) error {
	hc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("remove old host firewall layout: %w", err)
	}
	links, err := firewall.OldLayoutLinks(hc)
	if err != nil {
		return fmt.Errorf("remove old host firewall layout: %w", err)
	}
	if len(links) > 0 {
		host, err := netns.Current()
		if err != nil {
			return fmt.Errorf("remove old host firewall layout: %w", err)
		}
		var dead []string
		for _, l := range links {
			ok, err := netns.LinkExists(host, l)
			if err != nil {
				host.Close()
				return fmt.Errorf("remove old host firewall layout: %w", err)
			}
			if !ok {
				dead = append(dead, l)
			}
		}
		host.Close()
		if err := firewall.DeleteOldLayoutLinks(hc, dead); err != nil {
			return fmt.Errorf("remove old host firewall layout: %w", err)
		}
		if len(dead) > 0 {
			c.Logger.Info("removed an earlier host firewall layout's entries of links that are gone", "links", dead)
		}
	}
	removed, err := firewall.RemoveOldLayout(hc)
	if len(removed) > 0 {
		c.Logger.Info("removed the unused objects of an earlier host firewall layout", "objects", removed)
	}
	return err
}

// Drain destroys every slot that is not in use, free ones included (for
// `ironclaw gc --all` and tests).
func Drain(ctx context.Context, cfg Config) error {
	c, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(c.slotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return restoreForwarding(c.Root)
	}
	if err != nil {
		return fmt.Errorf("drain pool: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), newSlotPrefix) {
			if err := removeStaleNew(filepath.Join(c.slotsDir(), e.Name())); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if _, err := destroySlot(filepath.Join(c.slotsDir(), e.Name()), "", false); err != nil && !errors.Is(err, errSlotBusy) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, restoreForwarding(c.Root))
	return errors.Join(errs...)
}

// reclaimSlot destroys the pool slot that rec (the record in the sandbox
// state directory dir, Root/sandboxes/<key>) says the dead sandbox
// claimed. The slot must be a slot of the same Root (Root/net/slots/<valid
// key>) that was claimed by this sandbox or is used, so a damaged or forged
// record cannot aim it at any other directory. A slot that is already gone
// is not an error; one whose flock is held is (errSlotBusy).
func reclaimSlot(dir string, rec *record) error {
	root, sdir := rootOf(dir), filepath.Clean(rec.Slot)
	if !sandbox.Key(rec.Key).Valid() || root == "" || filepath.Base(dir) != rec.Key {
		return fmt.Errorf("reclaim slot %q: sandbox directory %s is not <root>/sandboxes/%s, so the pool's root is unknown", rec.Slot, dir, rec.Key)
	}
	if sdir != filepath.Join(root, "net", "slots", filepath.Base(sdir)) {
		return fmt.Errorf("reclaim slot %q: not a slot directory of the pool under %s", rec.Slot, root)
	}
	_, err := destroySlot(sdir, sandbox.Key(rec.Key), false)
	return err
}

// errSlotBusy is destroySlot's answer for a slot whose flock is held.
var errSlotBusy = errors.New("slot in use")

// destroySlot removes a slot's objects and directory if its flock is free
// (errSlotBusy if not). It reports whether it destroyed the slot: false
// and no error when the slot no longer exists. sdir must be
// Root/net/slots/<valid key>. A non-empty owner restricts it to a slot
// claimed by owner, or used. With skipFree it leaves a slot that is free
// by the time it holds the lock.
func destroySlot(sdir string, owner sandbox.Key, skipFree bool) (bool, error) {
	if filepath.Base(filepath.Dir(sdir)) != "slots" || !sandbox.Key(filepath.Base(sdir)).Valid() || !filepath.IsAbs(sdir) {
		return false, fmt.Errorf("destroy slot: %q is not a pool slot directory", sdir)
	}
	lock, err := lockSlot(sdir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // being removed, or gone
	}
	if err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return false, fmt.Errorf("destroy slot %s: %w", sdir, errSlotBusy)
		}
		return false, fmt.Errorf("destroy slot %s: %w", sdir, err)
	}
	defer lock.Close()
	if skipFree {
		// Read again under the lock: the caller read the state before
		// taking it, and a maker may have finished the slot since. A
		// free slot of another firewall format goes too.
		if b, _ := os.ReadFile(filepath.Join(sdir, slotState)); string(b) == stateFree && !staleFree(sdir) {
			return false, nil
		}
	}
	if owner != "" {
		b, err := os.ReadFile(filepath.Join(sdir, slotState))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("destroy slot %s: %w", sdir, err)
		}
		if st := string(b); st != "claimed "+string(owner) && st != stateUsed {
			return false, fmt.Errorf("destroy slot %s: it is %q, not claimed by %s", sdir, st, owner)
		}
	}
	// The state goes first: a claim that opened this slot's lock file
	// before RemoveAll below unlinked it takes the flock once this one
	// is dropped, and must not find the slot free.
	if err := os.Remove(filepath.Join(sdir, slotState)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("destroy slot %s: %w", sdir, err)
	}
	rec, err := readRecord(sdir, RecordFile)
	if err != nil {
		return false, fmt.Errorf("destroy slot: %w", err)
	}
	if rec != nil {
		if rec.Key != filepath.Base(sdir) {
			return false, fmt.Errorf("destroy slot %s: record names key %s", sdir, rec.Key)
		}
		if err := removeObjects(rec); err != nil {
			return false, fmt.Errorf("destroy slot: %w", err)
		}
	}
	if err := os.RemoveAll(sdir); err != nil {
		return false, fmt.Errorf("destroy slot: %w", err)
	}
	return true, nil
}

// Acquire gives the sandbox its network the fastest way available: a
// claimed pool slot, or Setup when the pool has none free (or the policy
// allows nothing, which needs no slot, or the network is a micro-VM's:
// pool slots have no tap).
func Acquire(ctx context.Context, cfg Config, dir string, key sandbox.Key, policy firewall.Policy) (*Net, error) {
	n, err := Begin(ctx, cfg, dir, key, policy)
	if err != nil {
		return nil, err
	}
	if err := n.Wait(ctx); err != nil {
		return nil, fmt.Errorf("network claim: %w", errors.Join(err, n.Close()))
	}
	return n, nil
}

// Begin is Acquire that returns as soon as the sandbox's namespace is
// known. From a pool slot it returns before the policy is installed and
// installs it in the background, while the caller starts the sandbox's
// init in the namespace: until the policy's rules are applied and
// verified, the slot has the rules it was prepared with (none, which let
// nothing out, or another policy's; a claim takes one of those only when
// no slot prepared for its own rules or with none is free). Only the
// sandbox's own init runs meanwhile: the caller must not start the
// workload before Wait returned nil. Close waits for the installation. Any other network is complete when Begin returns.
func Begin(ctx context.Context, cfg Config, dir string, key sandbox.Key, policy firewall.Policy) (*Net, error) {
	if policy.Networked() && cfg.Link == LinkVeth {
		// The pool has one slot fewer, or none: time to maintain it.
		cfg.wake()
		n, err := claim(ctx, cfg, dir, key, policy)
		if !errors.Is(err, ErrPoolEmpty) {
			return n, err
		}
		if cfg.DeferRemoval {
			c, err := cfg.withDefaults()
			if err != nil {
				return nil, err
			}
			if !key.Valid() {
				return nil, fmt.Errorf("network setup: invalid sandbox key %q", key)
			}
			return setupSlot(ctx, c, dir, key, policy)
		}
	}
	return Setup(ctx, cfg, dir, key, policy)
}
