// Package datadir locates IronClaw's durable data directory, where the
// store (internal/store) lives: the default, the --data-dir flag, a store
// an earlier IronClaw left in the state root, and the directory's
// permissions. It links no database, so the lean ironclaw binary resolves
// --data-dir without the store's SQLite.
package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ironclaw/ironclaw/internal/state"
)

// FileName is the store's file name inside the data directory.
const FileName = "ironclaw.db"

// Path returns the store path inside the data directory dir.
func Path(dir string) string { return filepath.Join(dir, FileName) }

// DefaultDir is the data directory of the default state root. The state
// root (state.DefaultRoot, /run/ironclaw) is usually a tmpfs emptied at
// every boot, like the kernel objects it describes; the store (the audit
// log above all) must outlive a reboot, so it lives on disk here.
const DefaultDir = "/var/lib/ironclaw"

// DirFor returns the data directory to use for the state root root when
// none is given: DefaultDir for the default root, and the root itself for
// any other, so that a custom root (a test's, say) stays one
// self-contained directory.
func DirFor(root string) string { return dirFor(root, state.DefaultRoot, DefaultDir) }

// dirFor is DirFor with the defaults as parameters.
func dirFor(root, defaultRoot, defaultDir string) string {
	if filepath.Clean(root) == filepath.Clean(defaultRoot) {
		return defaultDir
	}
	return filepath.Clean(root)
}

// ResolveDir returns the data directory given by flag (absolute, cleaned),
// or DirFor(root) when flag is empty.
//
// With no flag, a store an earlier IronClaw left in the state root is used
// where it is as long as the data directory has none (an upgrade then
// loses no record and stops nothing; the StrandedError returned says how
// to move it). An explicit --data-dir is always taken as given.
func ResolveDir(flag, root string) (string, *StrandedError, error) {
	return resolveDir(flag, root, state.DefaultRoot, DefaultDir)
}

// resolveDir is ResolveDir with the defaults as parameters.
func resolveDir(flag, root, defaultRoot, defaultDir string) (string, *StrandedError, error) {
	if flag == "" {
		dir := dirFor(root, defaultRoot, defaultDir)
		se, err := Stranded(root, dir)
		if err != nil {
			return "", nil, err
		}
		if se != nil && !se.Both {
			return filepath.Clean(root), se, nil
		}
		return dir, nil, nil
	}
	if !filepath.IsAbs(flag) {
		return "", nil, fmt.Errorf("data directory %q: not an absolute path", flag)
	}
	return filepath.Clean(flag), nil, nil
}

// MakeDir creates the data directory dir with mode 0700 (its parents too)
// when it is missing; an existing one keeps its mode. The store holds
// tool arguments: only its owner reads it. A directory that another user
// controls (state.CheckPrivate: owned by them, or writable by group or
// others, it or one above it) is refused, before and after it is made:
// that user could swap in a store of their own.
func MakeDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("create data directory %q: not an absolute path", dir)
	}
	if err := state.CheckPrivate("data directory", dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	return state.CheckPrivate("data directory", dir)
}

// Stranded looks for a store left in the state root root by an IronClaw
// that kept it there, when the data directory dir is elsewhere: that store
// is no longer read or written. It returns nil when there is none (or dir
// is the root).
func Stranded(root, dir string) (*StrandedError, error) {
	if filepath.Clean(root) == filepath.Clean(dir) {
		return nil, nil
	}
	p := Path(root)
	if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("look for a store in the state root: %w", err)
	}
	e := &StrandedError{Path: p, Dir: filepath.Clean(dir)}
	if _, err := os.Lstat(Path(dir)); err == nil {
		e.Both = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("look for a store in the data directory: %w", err)
	}
	return e, nil
}

// StrandedError explains a store found in the state root while the data
// directory is elsewhere, and says how to move it. IronClaw never moves it
// itself: a process of the older version may have the WAL database open,
// and moving (or copying) it then loses or corrupts records.
type StrandedError struct {
	Path string // the stranded store
	Dir  string // the data directory
	Both bool   // the data directory holds a store too
}

func (e *StrandedError) Error() string {
	if e.Both {
		return fmt.Sprintf("a store from an earlier IronClaw remains at %s and is no longer read (the store is in the data directory %s, --data-dir); "+
			"stop every ironclaw daemon and gateway, then move it out of the state root with its -wal and -shm files: %s "+
			"(ironclaw audit --store %s reads it there)",
			e.Path, e.Dir, e.MoveCommand(), shellQuote(filepath.Join(e.target(), FileName)))
	}
	return fmt.Sprintf("a store from an earlier IronClaw is at %s, but the store now lives in the data directory %s (--data-dir); "+
		"stop every ironclaw daemon and gateway, then move it with its -wal and -shm files: %s "+
		"(or keep it where it is with --data-dir %s)",
		e.Path, e.Dir, e.MoveCommand(), shellQuote(filepath.Dir(e.Path)))
}

// target is the directory MoveCommand moves the stranded store to: the data
// directory, or, when that holds a store already, "earlier" inside it.
func (e *StrandedError) target() string {
	if e.Both {
		return filepath.Join(e.Dir, "earlier")
	}
	return e.Dir
}

// MoveCommand returns the shell command that moves the stranded store, and
// its -wal and -shm files, out of the state root (see target). It never
// overwrites a file (mv -n).
func (e *StrandedError) MoveCommand() string {
	t := shellQuote(e.target())
	return fmt.Sprintf("mkdir -p -m 0700 %s && mv -n %s* %s/", t, shellQuote(e.Path), t)
}

// shellQuote quotes s for a POSIX shell when it holds anything but safe
// characters.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:@,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
