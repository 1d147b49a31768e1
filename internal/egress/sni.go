package egress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxHello bounds how much of a TLS ClientHello the proxy buffers.
const maxHello = 64 << 10

var errNotTLS = errors.New("not a TLS handshake")

// readClientHello reads TLS records from r until it holds a whole
// ClientHello handshake message and returns every byte read (to replay
// upstream) and the SNI host name (lower-case, without a trailing dot;
// empty if the hello has none).
func readClientHello(r io.Reader) (raw []byte, sni string, err error) {
	var hs []byte // handshake bytes, reassembled across records
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return raw, "", fmt.Errorf("read TLS record: %w", err)
		}
		raw = append(raw, hdr[:]...)
		if hdr[0] != 22 || hdr[1] != 3 {
			return raw, "", errNotTLS
		}
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		if n == 0 || len(raw)+n > maxHello {
			return raw, "", errors.New("TLS record too long or empty")
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return raw, "", fmt.Errorf("read TLS record: %w", err)
		}
		raw = append(raw, body...)
		hs = append(hs, body...)
		if len(hs) < 4 {
			continue
		}
		if hs[0] != 1 {
			return raw, "", errors.New("first handshake message is not a ClientHello")
		}
		want := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
		if want+4 > maxHello {
			return raw, "", errors.New("ClientHello too long")
		}
		if len(hs) >= want+4 {
			sni, err := parseSNI(hs[4 : 4+want])
			return raw, sni, err
		}
	}
}

// parseSNI extracts the host_name of the server_name extension (RFC 6066)
// from a ClientHello body.
func parseSNI(b []byte) (string, error) {
	c := cursor{b: b}
	c.skip(2 + 32)       // legacy_version, random
	c.skip(int(c.u8()))  // session id
	c.skip(int(c.u16())) // cipher suites
	c.skip(int(c.u8()))  // compression methods
	if c.err != nil {
		return "", c.err
	}
	if c.len() == 0 {
		return "", nil // no extensions
	}
	ext := cursor{b: c.bytes(int(c.u16()))}
	if c.err != nil {
		return "", c.err
	}
	for ext.len() > 0 && ext.err == nil {
		typ, body := ext.u16(), ext.bytes(int(ext.u16()))
		if ext.err != nil || typ != 0 {
			continue
		}
		list := cursor{b: body}
		names := cursor{b: list.bytes(int(list.u16()))}
		for names.len() > 0 && names.err == nil {
			kind, name := names.u8(), names.bytes(int(names.u16()))
			if names.err == nil && kind == 0 {
				return strings.TrimSuffix(lowerASCII(string(name)), "."), nil
			}
		}
		if list.err != nil || names.err != nil {
			return "", errors.New("malformed server_name extension")
		}
	}
	return "", ext.err
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// cursor reads big-endian fields from a byte slice; the first short read
// sets err and makes every later read return zero values.
type cursor struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated ClientHello")

func (c *cursor) len() int { return len(c.b) }

func (c *cursor) bytes(n int) []byte {
	if c.err != nil || n > len(c.b) {
		c.err = errShort
		return nil
	}
	out := c.b[:n]
	c.b = c.b[n:]
	return out
}

func (c *cursor) skip(n int) { c.bytes(n) }

func (c *cursor) u8() uint8 {
	b := c.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (c *cursor) u16() uint16 {
	b := c.bytes(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}
