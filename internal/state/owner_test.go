package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// nobody is a uid that is neither root nor the test's: another local user.
const nobody = 65534

// TestOpenRefusesRootOthersControl plants state roots another local user
// controls: the root, its sandboxes directory or a parent owned by that
// user, or writable by others. Whoever controls them can swap the API
// socket and write the records GC acts on (cgroup paths it empties with
// SIGKILL, QEMU PIDs it kills), so Open must refuse them.
func TestOpenRefusesRootOthersControl(t *testing.T) {
	testutil.RequireRoot(t)
	cases := []struct {
		name  string
		setup func(t *testing.T, base string) string // returns the root to open
		want  string
	}{
		{"root owned by another user", func(t *testing.T, base string) string {
			root := filepath.Join(base, "state")
			mkdirOwned(t, root, 0o755, nobody)
			return root
		}, "owned by uid 65534"},
		{"root writable by others", func(t *testing.T, base string) string {
			root := filepath.Join(base, "state")
			mkdirOwned(t, root, 0o777, 0)
			return root
		}, "writable by group or others"},
		{"root writable by others, sticky", func(t *testing.T, base string) string {
			root := filepath.Join(base, "state")
			mkdirOwned(t, root, 0o1777, 0)
			return root
		}, "writable by group or others"},
		{"sandboxes planted by another user", func(t *testing.T, base string) string {
			root := filepath.Join(base, "state")
			mkdirOwned(t, root, 0o755, 0)
			mkdirOwned(t, filepath.Join(root, "sandboxes"), 0o711, nobody)
			return root
		}, "owned by uid 65534"},
		{"parent owned by another user", func(t *testing.T, base string) string {
			parent := filepath.Join(base, "home")
			mkdirOwned(t, parent, 0o755, nobody)
			return filepath.Join(parent, "state")
		}, "owned by uid 65534"},
		{"parent writable by others without sticky bit", func(t *testing.T, base string) string {
			parent := filepath.Join(base, "shared")
			mkdirOwned(t, parent, 0o777, 0)
			return filepath.Join(parent, "state")
		}, "writable by group or others"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := c.setup(t, testutil.SearchableTempDir(t))
			_, err := Open(root)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open(%s) = %v, want an error containing %q", root, err, c.want)
			}
		})
	}
	// A root under a sticky world-writable parent (/tmp) is the usual
	// case and stays allowed.
	if _, err := Open(filepath.Join(testutil.SearchableTempDir(t), "state")); err != nil {
		t.Fatalf("Open of a root under /tmp: %v", err)
	}
}

func mkdirOwned(t *testing.T, dir string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Chmod after Mkdir: the umask must not narrow the mode under test.
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
}
