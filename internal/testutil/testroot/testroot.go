// Package testroot gives a test a temporary IronClaw state root and, when
// the test ends, removes the parent cgroups the root's sandboxes were made
// under (state.NameOf of the root, at the top of each cgroup hierarchy).
// A parent that still holds a group or a process fails the test: a sandbox
// of the root outlived it. Snapshot and Parents.Leaked find, for a whole
// test binary, the parents of roots that are gone.
//
// It is a package of its own because it needs state and cgroup, whose
// tests use testutil.
package testroot

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// unifiedMount is where a hybrid host mounts its cgroup v2 hierarchy. Tests
// make parents there through a v2 cgroup.Host of it.
const unifiedMount = "/sys/fs/cgroup/unified"

// busyWait is how long RemoveParents waits for a parent to empty: a
// sandbox's teardown may still be under way in a process the test stopped
// (a daemon, an `ironclaw run`).
const busyWait = 5 * time.Second

// New returns a fresh, empty state root directory for t, searchable by the
// sandboxes' unprivileged uids, short enough for the Unix sockets made in
// it. When t ends (after every cleanup registered later: its daemons and
// sandboxes), the root's parent cgroups are removed, and then the root.
func New(t testing.TB) string {
	t.Helper()
	dir := testutil.SearchableTempDir(t)
	Track(t, dir)
	return dir
}

// Track removes, when t ends, the parent cgroups of the state root dir (an
// absolute path), for a root the test places itself, such as one that the
// command under test must create. A parent still holding a group or a
// process fails t. Call it before starting anything on the root: cleanups
// run last registered first.
func Track(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() {
		if err := RemoveParents(dir); err != nil {
			t.Errorf("state root %s: %v", dir, err)
		}
	})
}

// RemoveParents removes the parent cgroups of the state root dir on every
// cgroup hierarchy of this host, the unified one of a hybrid host included.
// A parent that still holds a group or a process after a short wait is an
// error naming what is in it.
func RemoveParents(dir string) error {
	hosts, err := hosts()
	if err != nil {
		return err
	}
	name := state.NameOf(filepath.Clean(dir))
	var errs []error
	for _, h := range hosts {
		deadline := time.Now().Add(busyWait)
		for {
			_, inUse, err := h.RemoveParents(name)
			if err != nil {
				errs = append(errs, err)
				break
			}
			if len(inUse) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("cgroup parents still in use after the test (leaked): %s", describe(inUse)))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// hosts returns the cgroup hierarchies parents can be made in here: the
// detected one, and a hybrid host's unified mount. None without cgroups.
func hosts() ([]*cgroup.Host, error) {
	h, err := cgroup.Detect()
	if err != nil {
		return nil, nil // no cgroup file system: no parents
	}
	hs := []*cgroup.Host{h}
	if h.Version == cgroup.V1 {
		if _, err := os.Stat(filepath.Join(unifiedMount, "cgroup.controllers")); err == nil {
			u, err := cgroup.NewHost(cgroup.V2, unifiedMount, "hybrid")
			if err != nil {
				return nil, err
			}
			hs = append(hs, u)
		}
	}
	return hs, nil
}

// describe names the groups and processes in the parent directories dirs.
func describe(dirs []string) string {
	var out []string
	for _, d := range dirs {
		var in []string
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.IsDir() {
				in = append(in, "group "+e.Name())
			}
		}
		if pids, err := cgroup.Procs(d); err == nil && len(pids) > 0 {
			in = append(in, fmt.Sprintf("processes %v", pids))
		}
		out = append(out, fmt.Sprintf("%s (%s)", d, strings.Join(in, ", ")))
	}
	return strings.Join(out, "; ")
}

// cgroupMounts are the directories whose top-level "ironclaw-*" groups are
// state roots' parents: one v1 hierarchy per controller IronClaw uses, the
// v2 mount, and a hybrid host's unified mount.
var cgroupMounts = []string{
	"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu",
	"/sys/fs/cgroup", unifiedMount,
}

// Parents is the set of parent cgroups of non-default state roots
// ("ironclaw-*" at the top of a hierarchy) on this host at one moment.
type Parents map[string]bool

// Snapshot lists the parents on this host now. A test binary takes one
// before its tests and checks Leaked after them.
func Snapshot() Parents {
	p := Parents{}
	for _, m := range cgroupMounts {
		ds, _ := filepath.Glob(filepath.Join(m, "ironclaw-*"))
		for _, d := range ds {
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				p[d] = true
			}
		}
	}
	return p
}

// Leaked reports the parents made since the snapshot p that no state root
// uses any more: a leak of the tests that ran since. Other test binaries
// and IronClaw instances run on this host meanwhile, so a new parent counts
// only when its root is gone: no state root below the temporary directory
// has its name, and no live process names it (an "ironclaw-init <name>", or
// an ironclaw whose --root has it). A test removes its root's parents
// before the root (New, testutil.Leaks), so a parent found with its root
// gone and still there after the roots were listed is left behind.
func (p Parents) Leaked() error {
	var grown []string
	for d := range Snapshot() {
		if !p[d] {
			grown = append(grown, d)
		}
	}
	if len(grown) == 0 {
		return nil
	}
	inUse := namesInUse()
	var leaked []string
	for _, d := range grown {
		if inUse[filepath.Base(d)] {
			continue
		}
		if _, err := os.Stat(d); err != nil {
			continue // removed by its test meanwhile
		}
		leaked = append(leaked, d)
	}
	if len(leaked) == 0 {
		return nil
	}
	slices.Sort(leaked)
	return fmt.Errorf("%d cgroup parent(s) of state roots that are gone were left: %s", len(leaked), strings.Join(leaked, ", "))
}

// rootDepth is how deep below the temporary directory state roots are
// looked for: <tmp>/<test dir>/<sub>/<root> at most.
const rootDepth = 3

// namesInUse returns the parent names of the state roots that exist below
// the temporary directory (a directory with a "sandboxes" directory and a
// boot_id file, as state.Open makes it) and of those live processes name.
func namesInUse() map[string]bool {
	names := map[string]bool{}
	tmp := filepath.Clean(os.TempDir())
	_ = filepath.WalkDir(tmp, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil // unreadable or gone: not a root
		}
		if isRoot(path) {
			names[state.NameOf(path)] = true
			return filepath.SkipDir
		}
		if rel, _ := filepath.Rel(tmp, path); rel != "." && strings.Count(rel, string(filepath.Separator))+1 >= rootDepth {
			return filepath.SkipDir
		}
		return nil
	})
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		if len(args) >= 2 && args[0] == "ironclaw-init" {
			names[args[1]] = true
		}
		for i, a := range args {
			switch {
			case a == "--root" && i+1 < len(args):
				names[state.NameOf(filepath.Clean(args[i+1]))] = true
			case strings.HasPrefix(a, "--root="):
				names[state.NameOf(filepath.Clean(strings.TrimPrefix(a, "--root=")))] = true
			}
		}
	}
	return names
}

// isRoot reports whether dir looks like a state root state.Open made.
func isRoot(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, "sandboxes"))
	if err != nil || !st.IsDir() {
		return false
	}
	_, err = os.Stat(filepath.Join(dir, "boot_id"))
	return err == nil
}
