package firewall

import (
	"fmt"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// DupSocket returns a close-on-exec duplicate of c's socket. The socket is
// released only when its last descriptor is closed, in whichever process
// holds it: see network.Config.KeepSockets for why that matters.
func DupSocket(c *netlink.Conn) (*os.File, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("duplicate netlink socket: %w", err)
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("duplicate netlink socket: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicate netlink socket: %w", derr)
	}
	return os.NewFile(uintptr(nfd), "netlink"), nil
}

// Dup returns a duplicate of the reader's socket (DupSocket), or nil when
// it has none open.
func (g *GenReader) Dup() (*os.File, error) {
	if g == nil || g.c == nil {
		return nil, nil
	}
	return DupSocket(g.c)
}

// Dup returns a duplicate of the reader's socket (DupSocket), or nil when
// it has none open.
func (r *ElementReader) Dup() (*os.File, error) {
	if r == nil || r.c == nil {
		return nil, nil
	}
	return DupSocket(r.c)
}
