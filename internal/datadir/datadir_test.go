package datadir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

func TestDirFor(t *testing.T) {
	// The real defaults: resolution only, nothing is written.
	if got := DirFor("/run/ironclaw"); got != DefaultDir {
		t.Errorf("DirFor(default root) = %q, want %q", got, DefaultDir)
	}
	if got := DirFor("/run/ironclaw/"); got != DefaultDir {
		t.Errorf("DirFor(default root with a slash) = %q, want %q", got, DefaultDir)
	}
	for _, tc := range []struct{ root, defRoot, defDir, want string }{
		{"/r", "/r", "/d", "/d"},
		{"/r/./", "/r", "/d", "/d"},
		{"/other", "/r", "/d", "/other"},
		{"/other/", "/r", "/d", "/other"},
		{"/r/sub", "/r", "/d", "/r/sub"},
	} {
		if got := dirFor(tc.root, tc.defRoot, tc.defDir); got != tc.want {
			t.Errorf("dirFor(%q, %q, %q) = %q, want %q", tc.root, tc.defRoot, tc.defDir, got, tc.want)
		}
	}
}

func TestResolveDir(t *testing.T) {
	base := t.TempDir()
	defRoot, defDir, other := filepath.Join(base, "run"), filepath.Join(base, "lib"), filepath.Join(base, "other")
	for _, tc := range []struct{ flag, root, want, err string }{
		{"", defRoot, defDir, ""},
		{"", other, other, ""},
		{"/data/ic/", defRoot, "/data/ic", ""},
		{"/data/ic", other, "/data/ic", ""},
		{"data", other, "", "not an absolute path"},
	} {
		got, kept, err := resolveDir(tc.flag, tc.root, defRoot, defDir)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("resolveDir(%q, %q) = %q, %v; want an error with %q", tc.flag, tc.root, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || kept != nil {
			t.Errorf("resolveDir(%q, %q) = %q, %v, %v; want %q", tc.flag, tc.root, got, kept, err, tc.want)
		}
	}
	// The real defaults: the default root's data directory is DefaultDir
	// unless a store was left in the root (not so on a test machine).
	if got, kept, err := ResolveDir("", "/run/ironclaw"); err != nil || (kept == nil && got != DefaultDir) || (kept != nil && got != "/run/ironclaw") {
		t.Errorf("ResolveDir for the default root = %q, %v, %v", got, kept, err)
	}

	// A store an earlier IronClaw left in the default root is kept there
	// while the data directory has none, and said so; an explicit
	// --data-dir is taken as given; once the data directory has a store
	// too, the data directory wins.
	if err := os.MkdirAll(defRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(Path(defRoot), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, kept, err := resolveDir("", defRoot, defRoot, defDir); err != nil || got != filepath.Clean(defRoot) || kept == nil || kept.Both {
		t.Errorf("with a store left in the root: %q, %+v, %v; want the root, kept", got, kept, err)
	}
	if got, kept, err := resolveDir(defDir, defRoot, defRoot, defDir); err != nil || got != defDir || kept != nil {
		t.Errorf("explicit --data-dir beside a store left in the root: %q, %+v, %v", got, kept, err)
	}
	if err := os.MkdirAll(defDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(Path(defDir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, kept, err := resolveDir("", defRoot, defRoot, defDir); err != nil || got != defDir || kept != nil {
		t.Errorf("with stores in both: %q, %+v, %v; want the data directory", got, kept, err)
	}
}

func TestMakeDir(t *testing.T) {
	base := t.TempDir()
	d := filepath.Join(base, "a", "data")
	if err := MakeDir(d); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(d)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v %v; want a 0700 directory", fi, err)
	}
	// An existing directory keeps its mode (a custom root is 0711).
	if err := os.Chmod(d, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := MakeDir(d); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(d); fi.Mode().Perm() != 0o711 {
		t.Errorf("MakeDir changed an existing directory's mode to %v", fi.Mode().Perm())
	}
	if err := MakeDir("rel"); err == nil {
		t.Error("relative data directory accepted")
	}
}

// TestMakeDirRefusesOthersDirectory: a data directory another local user
// made (or one writable by others) lets that user replace the store, the
// audit log and the daemon's records in it, or read the tool arguments
// it holds once they swap in a database of their own. MakeDir refuses it.
func TestMakeDirRefusesOthersDirectory(t *testing.T) {
	testutil.RequireRoot(t)
	for name, c := range map[string]struct {
		mode os.FileMode
		uid  int
		want string
	}{
		"owned by another user": {0o700, 65534, "owned by uid 65534"},
		"writable by others":    {0o777, 0, "writable by group or others"},
	} {
		t.Run(name, func(t *testing.T) {
			d := filepath.Join(testutil.SearchableTempDir(t), "data")
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, c.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(d, c.uid, c.uid); err != nil {
				t.Fatal(err)
			}
			if err := MakeDir(d); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("MakeDir(%s) = %v, want an error containing %q", d, err, c.want)
			}
		})
	}
}
