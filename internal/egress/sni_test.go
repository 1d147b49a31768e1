package egress

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// clientHello captures the ClientHello crypto/tls sends for sni.
func clientHello(t testing.TB, sni string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		c.SetDeadline(time.Now().Add(time.Second))
		c.Handshake()
		a.Close()
	}()
	b.SetDeadline(time.Now().Add(time.Second))
	raw, _, err := readClientHello(b)
	if err != nil {
		t.Fatalf("read hello: %v", err)
	}
	b.Close()
	return raw
}

func TestReadClientHello(t *testing.T) {
	for _, sni := range []string{"example.com", "API.Example.COM", "a.b.c.d.e.example.org"} {
		raw := clientHello(t, sni)
		got, name, err := readClientHello(bytes.NewReader(raw))
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("%s: %v", sni, err)
		}
		if want := lowerASCII(sni); name != want {
			t.Errorf("SNI %q, want %q", name, want)
		}
	}
	// A hello split across two TLS records reassembles.
	raw := clientHello(t, "split.example")
	body := raw[5:]
	half := len(body) / 2
	split := append([]byte{22, 3, 1, byte(half >> 8), byte(half)}, body[:half]...)
	split = append(split, 22, 3, 1, byte((len(body)-half)>>8), byte(len(body)-half))
	split = append(split, body[half:]...)
	if _, name, err := readClientHello(bytes.NewReader(split)); err != nil || name != "split.example" {
		t.Errorf("split hello: %q %v", name, err)
	}
	// Not TLS.
	if _, _, err := readClientHello(bytes.NewReader([]byte("GET / HTTP/1.1\r\n\r\n"))); err == nil {
		t.Error("HTTP accepted as a ClientHello")
	}
	// Truncated.
	if _, _, err := readClientHello(bytes.NewReader(raw[:len(raw)-10])); err == nil {
		t.Error("truncated hello accepted")
	}
}

// FuzzReadClientHello: no input panics or reads past what it returns.
func FuzzReadClientHello(f *testing.F) {
	f.Add(clientHello(f, "example.com"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Add([]byte{22, 3, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, sni, err := readClientHello(bytes.NewReader(b))
		if len(raw) > len(b) || !bytes.Equal(raw, b[:len(raw)]) {
			t.Fatalf("returned bytes that were not read")
		}
		if err == nil && len(sni) > len(b) {
			t.Fatalf("SNI longer than the input")
		}
	})
}

func TestSplitHost(t *testing.T) {
	for _, c := range []struct {
		in   string
		host string
		port uint16
		ok   bool
	}{
		{"example.com", "example.com", 80, true}, {"Example.COM.:8080", "example.com", 8080, true},
		{"203.0.113.1", "", 0, false}, {"[::1]:80", "", 0, false}, {"", "", 0, false}, {"a.com:0", "", 0, false}, {"a.com:99999", "", 0, false},
	} {
		h, p, err := splitHost(c.in, 80)
		if (err == nil) != c.ok || h != c.host || p != c.port {
			t.Errorf("%q: %q %d %v", c.in, h, p, err)
		}
	}
}
