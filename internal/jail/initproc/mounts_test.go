package initproc

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestMaskPath: a /proc mask ends up right whatever kind of entry it
// meets (a file where a directory was expected, or the reverse), and a
// missing entry gives ENOENT. It runs in a private mount namespace on a
// thread of its own, which is thrown away afterwards.
func TestMaskPath(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	file, sub := filepath.Join(dir, "file"), filepath.Join(dir, "dir")
	if err := os.WriteFile(file, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "x"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
				return err
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return err
			}
			// Each guess is wrong: the retry must pick the other mask.
			if err := maskPath(file, true); err != nil {
				t.Errorf("mask a file expected to be a directory: %v", err)
			}
			if err := maskPath(sub, false); err != nil {
				t.Errorf("mask a directory expected to be a file: %v", err)
			}
			if err := maskPath(filepath.Join(dir, "missing"), false); err != unix.ENOENT {
				t.Errorf("mask a missing path: got %v, want ENOENT", err)
			}
			if b, err := os.ReadFile(file); err != nil || len(b) != 0 {
				t.Errorf("masked file reads %q, %v; want /dev/null's nothing", b, err)
			}
			var st unix.Stat_t
			if err := unix.Stat(file, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
				t.Errorf("masked file: mode %#o, %v; want the /dev/null device", st.Mode, err)
			}
			ents, err := os.ReadDir(sub)
			if err != nil || len(ents) != 0 {
				t.Errorf("masked directory lists %v, %v; want nothing", ents, err)
			}
			var fs unix.Statfs_t
			if err := unix.Statfs(sub, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC || fs.Flags&unix.ST_RDONLY == 0 {
				t.Errorf("masked directory: fs type %#x flags %#x, %v; want a read-only tmpfs", fs.Type, fs.Flags, err)
			}
			if err := os.WriteFile(filepath.Join(sub, "y"), nil, 0o644); err == nil {
				t.Errorf("masked directory is writable")
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
