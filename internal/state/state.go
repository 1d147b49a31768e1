// Package state owns IronClaw's runtime records on disk: one directory per
// sandbox, <root>/sandboxes/<key>, created before any kernel object of the
// sandbox exists and removed after the last one is gone.
//
// The process that owns a sandbox holds an exclusive flock(2) on the
// directory's lock file for the sandbox's whole life. The kernel drops the
// lock when that process dies, even by SIGKILL, so a directory whose lock
// can be taken belongs to a dead owner: GC reclaims it. Subsystems that make
// kernel objects write their own record into the directory before making
// the objects, and know how to reclaim them from it.
package state

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// DefaultRoot is the state directory used when none is given. It is usually
// on a tmpfs, like the kernel objects it describes; where /run is on disk,
// Open removes what an earlier boot left (see checkBoot).
const DefaultRoot = "/run/ironclaw"

const (
	lockFile   = "lock"
	recordFile = "sandbox.json"
	// bootFile holds the boot ID of the kernel the root's records belong
	// to; bootLock serialises checking and purging it.
	bootFile = "boot_id"
	bootLock = "boot.lock"
)

// bootIDPath is the kernel's random ID of the running boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// Root is an IronClaw state directory.
type Root struct {
	dir string
}

// Open creates (if needed) and opens the state directory dir.
func Open(dir string) (*Root, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("state root %q: not an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	// Whoever can write to the root or to a directory above it can swap
	// the API socket, plant symlinks where records go, and write the
	// records GC acts on (cgroups it empties with SIGKILL, processes it
	// kills): nothing is created or read before the path is checked.
	if err := checkPrivate("state root", dir, dir, dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "sandboxes"), 0o711); err != nil {
		return nil, fmt.Errorf("create state root: %w", err)
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("state root %s: %w", dir, err)
	}
	if err := checkPrivate("state root", dir, resolved, filepath.Join(resolved, "sandboxes")); err != nil {
		return nil, err
	}
	// A sandbox's init runs as an unprivileged host uid and mounts its
	// root on <dir>/sandboxes/<key>/root: every directory on the way must
	// be searchable by others.
	if err := checkBoot(dir); err != nil {
		return nil, err
	}
	for p := filepath.Join(dir, "sandboxes"); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("state root: %w", err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			return nil, fmt.Errorf("state root %s: directory %s is not searchable by other users (mode %v); sandboxes run as unprivileged uids and need o+x on it", dir, p, st.Mode().Perm())
		}
		if p == "/" {
			break
		}
	}
	return &Root{dir: dir}, nil
}

// checkPrivate checks that no user but root and this process's effective
// uid controls the directory dir (a state root, a data directory) or any directory above it, starting at
// p (dir or a path below it): each existing one must be owned by one of
// them (a symlink on the way too), and may be writable by group or others
// only above the root and only with the sticky bit (/tmp). Directories not
// made yet are skipped; Open checks the resolved path again once they
// exist. kind and shown name the directory in errors ("state root", and
// the path as the caller gave it).
func checkPrivate(kind, shown, dir, p string) error {
	euid := os.Geteuid()
	trusted := func(uid uint32) bool { return uid == 0 || int(uid) == euid }
	for ; ; p = filepath.Dir(p) {
		lst, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) && p != "/" {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", kind, shown, err)
		}
		if ls, ok := lst.Sys().(*syscall.Stat_t); ok && lst.Mode()&os.ModeSymlink != 0 && !trusted(ls.Uid) {
			return fmt.Errorf("%s %s: symlink %s is owned by uid %d (want root or uid %d): that user could point it elsewhere", kind, shown, p, ls.Uid, euid)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%s %s: %w", kind, shown, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		switch {
		case !ok:
			return fmt.Errorf("%s %s: stat %s: no owner information", kind, shown, p)
		case !fi.IsDir():
			return fmt.Errorf("%s %s: %s is not a directory", kind, shown, p)
		case !trusted(st.Uid):
			return fmt.Errorf("%s %s: directory %s is owned by uid %d (want root or uid %d): that user could replace the records and sockets below it", kind, shown, p, st.Uid, euid)
		}
		if fi.Mode().Perm()&0o022 != 0 {
			if p == dir || strings.HasPrefix(p, dir+"/") {
				return fmt.Errorf("%s %s: directory %s is writable by group or others (mode %v)", kind, shown, p, fi.Mode())
			}
			if fi.Mode()&os.ModeSticky == 0 {
				return fmt.Errorf("%s %s: directory %s is writable by group or others without the sticky bit (mode %v)", kind, shown, p, fi.Mode())
			}
		}
		if p == "/" {
			return nil
		}
	}
}

// CheckPrivate checks, as Open does for a state root, that no user but
// root and this process's effective uid controls the directory dir (which
// need not exist yet) or any directory above it: each must be owned by one
// of them and not writable by group or others (above dir, only with the
// sticky bit). kind names dir in errors ("data directory").
func CheckPrivate(kind, dir string) error {
	dir = filepath.Clean(dir)
	if err := checkPrivate(kind, dir, dir, dir); err != nil {
		return err
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", kind, dir, err)
	}
	return checkPrivate(kind, dir, resolved, resolved)
}

// Dir returns the state directory.
func (r *Root) Dir() string { return r.dir }

// Name returns the name the kernel objects of this root are grouped under:
// "ironclaw" for the default root and "ironclaw-<hash>" for any other, so
// that two IronClaw instances with different roots (two test suites, say)
// never share a cgroup parent.
func (r *Root) Name() string { return NameOf(r.dir) }

// NameOf is Root.Name of the state directory dir (absolute and clean), for
// callers that clean up after a root without opening it.
func NameOf(dir string) string {
	if dir == DefaultRoot {
		return "ironclaw"
	}
	sum := sha256.Sum256([]byte(dir))
	return "ironclaw-" + hex.EncodeToString(sum[:4])
}

// SandboxDir returns the directory of the sandbox with key k.
func (r *Root) SandboxDir(k sandbox.Key) string {
	return filepath.Join(r.dir, "sandboxes", string(k))
}

// Record is what the state directory knows about a sandbox regardless of
// backend.
type Record struct {
	ID      string    `json:"id"`
	Key     string    `json:"key"`
	Created time.Time `json:"created"`
	// OwnerPID is the process that holds the lock, for display only:
	// liveness is decided by the lock, never by the PID.
	OwnerPID int `json:"owner_pid"`
}

// Claim is an owned sandbox directory. The lock is held until Release.
type Claim struct {
	Dir    string
	Key    sandbox.Key
	Record Record
	lock   *os.File
}

// Claim creates the directory for the sandbox id and takes its lock. It
// fails with sandbox.ErrExists when a live owner holds the ID. A directory
// left behind by a dead owner is returned in leftover, still locked, for the
// caller to reclaim first and then Release; Claim must then be called again.
func (r *Root) Claim(id string) (c *Claim, leftover *Claim, err error) {
	if err := sandbox.ValidateID(id); err != nil {
		return nil, nil, err
	}
	k := sandbox.KeyOf(id)
	dir := r.SandboxDir(k)
	madeIt := false // this call created the directory at some attempt
	gcWait := time.Now().Add(5 * time.Second)
	for attempt, races := 0, 0; races < 10; attempt++ {
		fresh := true
		if err := os.Mkdir(dir, 0o711); err != nil {
			if !errors.Is(err, os.ErrExist) {
				return nil, nil, fmt.Errorf("create sandbox dir: %w", err)
			}
			fresh = false
		}
		madeIt = madeIt || fresh
		lock, err := lockDir(dir)
		if errors.Is(err, errLocked) && madeIt && time.Now().Before(gcWait) {
			// We made the directory, so no owner holds it: a concurrent
			// GC (Leaked) locked it before we could, and removes it as
			// a leftover. Wait for that and try again.
			time.Sleep(time.Duration(min(attempt+1, 10)) * time.Millisecond)
			continue
		}
		if errors.Is(err, errLocked) {
			return nil, nil, fmt.Errorf("%w: %q (held by a running ironclaw)", sandbox.ErrExists, id)
		}
		if errors.Is(err, errStale) || errors.Is(err, os.ErrNotExist) {
			races++
			continue // removed under us by a concurrent Release; retry
		}
		if err != nil {
			return nil, nil, err
		}
		cl := &Claim{Dir: dir, Key: k, lock: lock}
		if !fresh && hasRecord(dir) {
			rec, _ := readRecord(dir)
			cl.Record = rec
			return nil, cl, nil
		}
		cl.Record = Record{ID: id, Key: string(k), Created: time.Now().UTC(), OwnerPID: os.Getpid()}
		if err := writeJSON(filepath.Join(dir, recordFile), cl.Record); err != nil {
			_ = cl.Release()
			return nil, nil, err
		}
		return cl, nil, nil
	}
	return nil, nil, fmt.Errorf("claim sandbox dir %s: lost the race 10 times", dir)
}

// LockFile returns the open lock file. Passing it to a process that
// outlives the caller (a persistent sandbox's init) keeps the sandbox
// claimed for as long as that process lives.
func (c *Claim) LockFile() *os.File { return c.lock }

// TakeOver claims the directory of key once its current holders are gone,
// waiting up to timeout for them to let go. A daemon uses it to release a
// persistent sandbox it re-attached to after killing the sandbox's init.
func (r *Root) TakeOver(k sandbox.Key, timeout time.Duration) (*Claim, error) {
	if !k.Valid() {
		return nil, fmt.Errorf("take over sandbox: invalid key %q", k)
	}
	dir := r.SandboxDir(k)
	deadline := time.Now().Add(timeout)
	for delay := 200 * time.Microsecond; ; delay = min(2*delay, 20*time.Millisecond) {
		lock, err := lockDir(dir)
		if err == nil {
			c := &Claim{Dir: dir, Key: k, lock: lock}
			c.Record, _ = readRecord(dir)
			return c, nil
		}
		if !errors.Is(err, errLocked) {
			return nil, fmt.Errorf("take over sandbox %s: %w", k, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("take over sandbox %s: still held after %s", k, timeout)
		}
		time.Sleep(delay)
	}
}

// Abandon drops the lock but keeps the directory and its records: a
// cleanup failed and something the records name may remain, so GC must
// find it. It is idempotent.
func (c *Claim) Abandon() {
	if c.lock != nil {
		c.lock.Close()
		c.lock = nil
	}
}

// Release removes the sandbox directory and drops the lock. Callers must
// have removed every kernel object first.
func (c *Claim) Release() error {
	if c.lock == nil {
		return nil
	}
	// Unlink while locked: a GC that opened the old lock file will find
	// the inode stale once it gets the lock, and back off.
	err := removeTree(c.Dir)
	c.lock.Close()
	c.lock = nil
	if err != nil {
		return fmt.Errorf("remove sandbox dir: %w", err)
	}
	return nil
}

// Leaked returns the sandbox directories whose owner is dead, each locked
// for the caller to reclaim and Release. Directories with live owners, and
// entries that are not IronClaw sandbox directories, are left alone.
func (r *Root) Leaked() ([]*Claim, error) {
	ents, err := os.ReadDir(filepath.Join(r.dir, "sandboxes"))
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	var out []*Claim
	for _, e := range ents {
		k := sandbox.Key(e.Name())
		if !e.IsDir() || !k.Valid() {
			continue
		}
		dir := r.SandboxDir(k)
		lock, err := lockDir(dir)
		if err != nil {
			continue // live, or gone meanwhile
		}
		c := &Claim{Dir: dir, Key: k, lock: lock}
		c.Record, _ = readRecord(dir)
		out = append(out, c)
	}
	return out, nil
}

// Sandboxes returns how many sandbox directories the root holds: live
// sandboxes', ones being made, and ones a GC could not reclaim.
func (r *Root) Sandboxes() (int, error) {
	ents, err := os.ReadDir(filepath.Join(r.dir, "sandboxes"))
	if err != nil {
		return 0, fmt.Errorf("list sandboxes: %w", err)
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() && sandbox.Key(e.Name()).Valid() {
			n++
		}
	}
	return n, nil
}

// Live returns the records of sandboxes whose owner is alive.
func (r *Root) Live() ([]Record, error) {
	ents, err := os.ReadDir(filepath.Join(r.dir, "sandboxes"))
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	var out []Record
	for _, e := range ents {
		k := sandbox.Key(e.Name())
		if !e.IsDir() || !k.Valid() {
			continue
		}
		dir := r.SandboxDir(k)
		lock, err := lockDir(dir)
		if err == nil {
			lock.Close() // dead owner: not live
			continue
		}
		if !errors.Is(err, errLocked) {
			continue
		}
		if rec, err := readRecord(dir); err == nil {
			out = append(out, rec)
		}
	}
	return out, nil
}

var (
	errLocked = errors.New("locked by a live owner")
	errStale  = errors.New("lock file replaced while waiting")
)

// lockDir takes the exclusive lock of dir without blocking and checks that
// the locked file is still the one at the path.
func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	var held, now syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &held); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat lock: %w", err)
	}
	if err := syscall.Stat(p, &now); err != nil || now.Ino != held.Ino || now.Dev != held.Dev {
		f.Close()
		return nil, errStale
	}
	return f, nil
}

func hasRecord(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, recordFile))
	return err == nil
}

func readRecord(dir string) (Record, error) {
	var rec Record
	err := ReadJSON(filepath.Join(dir, recordFile), &rec)
	return rec, err
}

// WriteJSON writes v as JSON to path atomically (write to a temporary file,
// then rename), so a reader never sees a half-written record.
//
// It does not fsync: records must survive the death of the process that
// wrote them (the page cache does), not the death of the kernel. Every
// object a record names (process, mount, cgroup, network namespace,
// nftables rule) dies with the kernel, and Open purges the records of an
// earlier boot without reading them. An fsync cost 0.2 ms per record on
// this machine's ext4, three of them on every start.
func WriteJSON(path string, v any) error { return writeJSON(path, v) }

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", filepath.Base(path), err)
	}
	return nil
}

// ReadJSON reads a record written by WriteJSON into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// Collect reclaims every sandbox directory of a dead owner: reclaim removes
// the kernel objects the directory's records name, then the directory goes.
// A directory whose reclaim fails is kept (and its error returned) so that
// a later run can try again; nothing without a record is touched.
func (r *Root) Collect(reclaim func(dir string) error) (int, error) {
	leaked, err := r.Leaked()
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, c := range leaked {
		if err := reclaim(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("reclaim %s (%q): %w", c.Key, c.Record.ID, err))
			c.Abandon()
			continue
		}
		if err := c.Release(); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// checkBoot makes sure the records under the root dir belong to the running
// kernel. A root whose boot_id names an earlier boot (a state directory on
// a disk rather than a tmpfs, as on hosts whose /run persists) describes
// objects that died with that kernel: its sandbox directories and its
// network records (pool slots, address leases, the uplink forwarding
// record, whose stale "previous value" would otherwise be written back to
// the host) are removed unread. Records are not fsynced (see WriteJSON), so
// after a crash they may be torn; this is what makes that harmless.
func checkBoot(dir string) error {
	cur, err := os.ReadFile(bootIDPath)
	if err != nil {
		return fmt.Errorf("state root: read boot ID: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, bootLock), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("state root: lock %s: %w", bootLock, err)
	}
	prev, err := os.ReadFile(filepath.Join(dir, bootFile))
	switch {
	case err == nil && string(prev) == string(cur):
		return nil
	case err == nil:
		if err := purgeEarlierBoot(dir); err != nil {
			return fmt.Errorf("state root: remove the records of an earlier boot: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("state root: %w", err)
	}
	// A new root, or one written before boot IDs were kept: its records
	// are reclaimed the usual way.
	tmp := filepath.Join(dir, bootFile+".tmp")
	if err := os.WriteFile(tmp, cur, 0o644); err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, bootFile)); err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	return nil
}

// purgeEarlierBoot removes the sandbox directories and network records of
// the root dir, whose kernel objects died with an earlier boot. Anything
// else in the root (the daemon's store among it) is kept, and so is a
// sandbox directory whose lock is held: its owner lives, so the boot ID was
// wrong, not the directory; the network records are then kept too.
func purgeEarlierBoot(dir string) error {
	var errs []error
	live := false
	sb := filepath.Join(dir, "sandboxes")
	ents, err := os.ReadDir(sb)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, e := range ents {
		k := sandbox.Key(e.Name())
		if !e.IsDir() || !k.Valid() {
			continue
		}
		lock, err := lockDir(filepath.Join(sb, e.Name()))
		if err != nil {
			live = true
			continue
		}
		errs = append(errs, removeTree(filepath.Join(sb, e.Name())))
		lock.Close()
	}
	if !live {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, "net")))
	}
	return errors.Join(errs...)
}
