package state

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mkdirChain makes a chain of depth nested directories "d" below dir,
// holding at most two descriptors at a time (as a workload in its
// /workspace can, with mkdir and cd).
func mkdirChain(t *testing.T, dir string, depth int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < depth; i++ {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := unix.Mknodat(fd, "f", unix.S_IFREG|0o644, 0); err != nil {
				t.Fatal(err)
			}
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	unix.Close(fd)
}

// TestReleaseRemovesDeepTree: a sandbox's workspace lives in its state
// directory, and the workload shapes it. A chain of directories deeper
// than the descriptors the remover may open (os.RemoveAll holds one per
// level) made Release fail with EMFILE: the directory stayed, GC failed
// on it at every pass, and while it tried, the daemon had no descriptor
// left for anything else. Release must remove any depth with a few
// descriptors.
func TestReleaseRemovesDeepTree(t *testing.T) {
	r := tempRoot(t)
	c, _, err := r.Claim("deep")
	if err != nil {
		t.Fatal(err)
	}
	ws := filepath.Join(c.Dir, "workspace")
	if err := os.Mkdir(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	mkdirChain(t, ws, 3000)
	// A daemon's limit is far higher, and so is the depth a workload
	// can make; the ratio is what matters.
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = 512
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	err = c.Release()
	if serr := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); serr != nil {
		t.Fatal(serr)
	}
	if err != nil {
		t.Fatalf("Release of a sandbox with a 3000-deep workspace: %.300v", err)
	}
	if _, err := os.Lstat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("sandbox directory left: %v", err)
	}
}

// TestRemoveTreeShapes: files, wide and nested directories, empty ones,
// unreadable modes and symlinks (to a directory outside, which must keep
// its contents) all go; a plain file and a missing path are fine too.
func TestRemoveTreeShapes(t *testing.T) {
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(outside, "keep")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(base, "tree")
	for i := 0; i < 50; i++ {
		d := filepath.Join(tree, "w", string(rune('a'+i%26))+string(rune('a'+i/26)), "x", "y")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f"), nil, 0o000); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(tree, "empty"), 0o000); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(tree, "w", "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent", filepath.Join(tree, "dangling")); err != nil {
		t.Fatal(err)
	}
	if err := removeTree(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Fatalf("tree left: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("a file behind a symlink was removed: %v", err)
	}
	if err := removeTree(keep); err != nil {
		t.Fatal(err)
	}
	if err := removeTree(filepath.Join(base, "missing")); err != nil {
		t.Fatalf("missing path: %v", err)
	}
}

// TestRemoveTreeConcurrently: removers racing on one tree (gc and a
// sandbox's own release do) all succeed and leave nothing, whichever of
// them removes a directory the others are reading.
func TestRemoveTreeConcurrently(t *testing.T) {
	for round := range 30 {
		top := filepath.Join(t.TempDir(), "sb")
		for i := range 20 {
			d := filepath.Join(top, "w", string(rune('a'+i)))
			mkdirChain(t, mustMkdirAll(t, d), 15)
		}
		errs := make(chan error, 4)
		for range cap(errs) {
			go func() { errs <- removeTree(top) }()
		}
		for range cap(errs) {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if _, err := os.Lstat(top); !os.IsNotExist(err) {
			t.Fatalf("round %d: %s remains (%v)", round, top, err)
		}
	}
}

func mustMkdirAll(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
