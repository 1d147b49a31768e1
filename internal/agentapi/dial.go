package agentapi

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// DialUnix connects to an agent (or a VMM's chardev) listening on the Unix
// socket at path.
func DialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial agent socket %s: %w", path, err)
	}
	return c, nil
}

// DialFirecrackerVsock connects to guest vsock port through Firecracker's
// host-side Unix socket at udsPath: it sends "CONNECT <port>\n" and expects
// "OK <hostport>\n". The reply is read one byte at a time so that no byte
// after the newline is consumed: the connection returned holds every byte
// the guest sent.
func DialFirecrackerVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	c, err := DialUnix(ctx, udsPath)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := watchCtx(ctx, c)
	err = vsockHandshake(c, port)
	stop()
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("vsock connect %s port %d: %w", udsPath, port, ctxErr(ctx, err))
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func vsockHandshake(c net.Conn, port uint32) error {
	if _, err := c.Write([]byte("CONNECT " + strconv.FormatUint(uint64(port), 10) + "\n")); err != nil {
		return fmt.Errorf("send CONNECT: %w", err)
	}
	line, err := readLine(c, 64)
	if err != nil {
		return fmt.Errorf("read CONNECT reply: %w", err)
	}
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return fmt.Errorf("CONNECT refused: reply %q", line)
	}
	if _, err := strconv.ParseUint(rest, 10, 32); err != nil {
		return fmt.Errorf("CONNECT reply %q: bad port: %w", line, err)
	}
	return nil
}

// readLine reads up to and including '\n', one byte at a time, and returns
// the line without it.
func readLine(c net.Conn, max int) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < max {
		n, err := c.Read(one)
		if n == 1 {
			if one[0] == '\n' {
				return string(b), nil
			}
			b = append(b, one[0])
			continue
		}
		if err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("line longer than %d bytes", max)
}
