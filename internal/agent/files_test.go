package agent

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

func TestFileRoundTrip(t *testing.T) {
	f := start(t, nil)
	ctx := t.Context()
	if err := f.c.Mkdir(ctx, "/work/a/b", 0o750, true); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Mkdir(ctx, "/work", 0, false); !errors.Is(err, os.ErrExist) {
		t.Fatalf("mkdir of an existing dir: %v, want ErrExist", err)
	}
	data := make([]byte, 3<<20+17)
	_, _ = io.ReadFull(rand.NewChaCha8([32]byte{1}), data)
	n, err := f.c.WriteFile(ctx, "/work/a/b/blob", bytes.NewReader(data), 0o600, 0)
	if err != nil || n != int64(len(data)) {
		t.Fatalf("upload: %d, %v", n, err)
	}
	// The kernel state: the file is where it should be, with its mode.
	fi, err := os.Stat(filepath.Join(f.root, "work/a/b/blob"))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != int64(len(data)) {
		t.Fatalf("on disk: %v, %v", fi, err)
	}
	var back bytes.Buffer
	if n, err := f.c.ReadFile(ctx, "work/a/b/blob", &back, 0); err != nil || n != int64(len(data)) {
		t.Fatalf("download: %d, %v", n, err)
	}
	if sha256.Sum256(back.Bytes()) != sha256.Sum256(data) {
		t.Fatal("downloaded bytes differ")
	}
	info, err := f.c.Stat(ctx, "/work/a/b/blob")
	if err != nil || info.Size != int64(len(data)) || info.Name != "blob" || info.IsDir() {
		t.Fatalf("stat: %+v, %v", info, err)
	}
	if err := os.Symlink("blob", filepath.Join(f.root, "work/a/b/link")); err != nil {
		t.Fatal(err)
	}
	list, err := f.c.List(ctx, "/work/a/b")
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %+v, %v", list, err)
	}
	for _, e := range list {
		if e.Name == "link" && (e.Link != "blob" || e.Mode&os.ModeSymlink == 0) {
			t.Errorf("link entry: %+v", e)
		}
	}
	if _, err := f.c.Stat(ctx, "/nope"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat missing: %v, want ErrNotExist", err)
	}
	if err := f.c.Remove(ctx, "/work", false); !errors.Is(err, os.ErrExist) {
		t.Errorf("non-recursive remove of a tree: %v, want ErrExist (not empty)", err)
	}
	if err := f.c.Remove(ctx, "/work", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(f.root, "work")); !os.IsNotExist(err) {
		t.Fatalf("tree still there after remove: %v", err)
	}
	if err := f.c.Remove(ctx, "/", true); err == nil {
		t.Error("removing the root was accepted")
	}
}

func TestFileSizeLimits(t *testing.T) {
	f := start(t, func(c *Config) { c.MaxFileSize = 1 << 20 })
	ctx := t.Context()
	_, err := f.c.WriteFile(ctx, "/big", io.LimitReader(rand.NewChaCha8([32]byte{}), 2<<20), 0, 0)
	if !errors.Is(err, agentapi.ErrTooLarge) {
		t.Fatalf("oversized upload: %v, want ErrTooLarge", err)
	}
	if _, err := f.c.WriteFile(ctx, "/small", strings.NewReader("12345"), 0, 4); !errors.Is(err, agentapi.ErrTooLarge) {
		t.Fatalf("upload over the request's limit: %v, want ErrTooLarge", err)
	}
	ents, _ := os.ReadDir(f.root)
	if len(ents) != 0 {
		t.Fatalf("a refused upload left files behind: %v", ents)
	}
	if err := os.WriteFile(filepath.Join(f.root, "huge"), make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.ReadFile(ctx, "/huge", io.Discard, 0); !errors.Is(err, agentapi.ErrTooLarge) {
		t.Fatalf("oversized download: %v, want ErrTooLarge", err)
	}
	if _, err := f.c.ReadFile(ctx, "/huge", io.Discard, 100); !errors.Is(err, agentapi.ErrTooLarge) {
		t.Fatalf("download over the request's limit: %v", err)
	}
	// The connection still serves after refusals.
	if _, err := f.c.WriteFile(ctx, "/ok", strings.NewReader("fine"), 0, 0); err != nil {
		t.Fatal(err)
	}
}

// TestFileEscapes: paths and symlinks that lead outside the root are
// refused by the kernel (RESOLVE_BENEATH), for every operation, and the
// outside stays untouched.
func TestFileEscapes(t *testing.T) {
	f := start(t, nil)
	ctx := t.Context()
	outside := filepath.Dir(f.root)
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(outside, filepath.Join(f.root, "abs")))           // absolute, pointing out
	must(os.Symlink("../", filepath.Join(f.root, "up")))              // relative, pointing out
	must(os.Symlink("/proc/self/root", filepath.Join(f.root, "mag"))) // magic link
	must(os.Symlink("../secret", filepath.Join(f.root, "secretlink")))

	paths := []string{"../secret", "/../secret", "a/../../secret", "abs/secret", "up/secret", "secretlink", "mag/etc/passwd"}
	for _, p := range paths {
		if _, err := f.c.ReadFile(ctx, p, io.Discard, 0); err == nil {
			t.Errorf("read %q escaped", p)
		}
		if _, err := f.c.Stat(ctx, p+"/x"); err == nil {
			t.Errorf("stat %q escaped", p)
		}
		if p == "secretlink" {
			continue // writing onto a link replaces the link: checked below
		}
		if _, err := f.c.WriteFile(ctx, p, strings.NewReader("pwned"), 0, 0); err == nil {
			t.Errorf("write %q escaped", p)
		}
		if err := f.c.Mkdir(ctx, p+"/x", 0, true); err == nil {
			t.Errorf("mkdir %q escaped", p)
		}
	}
	if _, err := f.c.ReadFile(ctx, "../secret", io.Discard, 0); !errors.Is(err, agentapi.ErrEscape) {
		t.Errorf("../secret: %v, want ErrEscape", err)
	}
	if _, err := f.c.List(ctx, "abs"); !errors.Is(err, agentapi.ErrEscape) {
		t.Errorf("list through an absolute symlink: %v, want ErrEscape", err)
	}
	if err := f.c.Remove(ctx, "up/secret", false); err == nil {
		t.Error("remove through a symlink escaped")
	}
	if err := f.c.Remove(ctx, "abs", true); err != nil {
		t.Errorf("removing the symlink itself (not its target) failed: %v", err)
	}
	if b, err := os.ReadFile(secret); err != nil || string(b) != "outside" {
		t.Fatalf("the outside file changed: %q, %v", b, err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatalf("remove followed the symlink: %v", err)
	}
	// Writing onto a symlink replaces the link, never the file it points to.
	if _, err := f.c.WriteFile(ctx, "secretlink", strings.NewReader("inside"), 0, 0); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(f.root, "secretlink")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("secretlink after write: %v, %v", fi, err)
	}
	if b, err := os.ReadFile(secret); err != nil || string(b) != "outside" {
		t.Fatalf("the outside file changed: %q, %v", b, err)
	}
}

// TestMkdirExactMode: the agent's umask does not narrow a requested mode,
// so a shared directory gets the sticky, world-writable 01777 it asks for.
func TestMkdirExactMode(t *testing.T) {
	f := start(t, nil)
	ctx := t.Context()
	if err := f.c.Mkdir(ctx, "/work/shared", 0o1777, true); err != nil {
		t.Fatal(err)
	}
	info, err := f.c.Stat(ctx, "/work/shared")
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode.Perm() != 0o777 || info.Mode&os.ModeSticky == 0 {
		t.Fatalf("mode %v, want drwxrwxrwt", info.Mode)
	}
	fi, err := os.Stat(filepath.Join(f.root, "work/shared"))
	if err != nil || fi.Mode().Perm() != 0o777 || fi.Mode()&os.ModeSticky == 0 {
		t.Fatalf("on disk: %v, %v", fi, err)
	}
}
