package mcpgw

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestListenUnixSocket: the gateway's Unix socket (token optional) is
// mode 0600 as soon as anyone can reach it, not after a later chmod; a
// stale socket is replaced, a live one or any other file is not.
func TestListenUnixSocket(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "gw.sock")
	ln, err := Listen("unix:"+p, "")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: mode %v, want a socket with 0600", p, fi.Mode())
	}
	if _, err := Listen("unix:"+p, ""); err == nil {
		t.Error("a second gateway took over a live socket")
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // stale now
	ln, err = Listen("unix:"+p, "")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln.Close()

	file := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix:"+file, ""); err == nil {
		t.Error("listened on a regular file's path")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("the regular file was replaced: %q %v", b, err)
	}
}
