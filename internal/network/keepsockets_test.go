package network

import (
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKeepSockets: with KeepSockets set, a network's Close hands over a
// duplicate of each nftables socket it had open (both lasting
// connections and the generation readers), so that the holder, not the
// closing process, releases them.
func TestKeepSockets(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var kept []*os.File
	e.cfg.KeepSockets = func(f *os.File) {
		mu.Lock()
		kept = append(kept, f)
		mu.Unlock()
	}
	n := e.setup(t, "keep", "203.0.113.10:7000/tcp")
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatalf("verify: %v %v", err, rep.Err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(kept) < 4 {
		t.Fatalf("kept %d sockets, want at least the two connections and the two generation readers", len(kept))
	}
	for _, f := range kept {
		fd := int(f.Fd())
		domain, err1 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		proto, err2 := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err1 != nil || err2 != nil || domain != unix.AF_NETLINK || proto != unix.NETLINK_NETFILTER {
			t.Errorf("kept fd %d: domain %d protocol %d (%v %v), want an nftables netlink socket", fd, domain, proto, err1, err2)
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("kept fd %d is not close-on-exec: %d %v", fd, flags, err)
		}
		f.Close()
	}
}
