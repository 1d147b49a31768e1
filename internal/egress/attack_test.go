package egress

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/miekg/dns"
)

// recordingResolver answers every A query with 203.0.113.10 on the
// loopback and records the questions, in wire form decoded to labels.
// While hold is non-nil, each query is announced on asked and answered
// only once hold is closed.
type recordingResolver struct {
	addr  string
	mu    sync.Mutex
	names [][]string
	asked chan struct{}
	hold  chan struct{}
}

func newRecordingResolver(t *testing.T, hold bool) *recordingResolver {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recordingResolver{addr: pc.LocalAddr().String(), asked: make(chan struct{}, 16)}
	if hold {
		r.hold = make(chan struct{})
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		// The labels as they travel on the wire: a label may hold a
		// dot, which the presentation form escapes.
		wire, _ := q.Pack()
		var labels []string
		if len(wire) > 12 {
			for off := 12; off < len(wire) && wire[off] != 0; off += int(wire[off]) + 1 {
				end := off + 1 + int(wire[off])
				if end > len(wire) {
					break
				}
				labels = append(labels, string(wire[off+1:end]))
			}
		}
		r.mu.Lock()
		r.names = append(r.names, labels)
		r.mu.Unlock()
		r.asked <- struct{}{}
		if r.hold != nil {
			<-r.hold
		}
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.ParseIP("203.0.113.10")})
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return r
}

func (r *recordingResolver) questions() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]string(nil), r.names...)
}

// startDialing starts a proxy for rules that resolves through r and whose
// upstream dials go to the loopback listener up, whatever address they
// name; every dial is counted.
func startDialing(t *testing.T, r *recordingResolver, up net.Listener, rules ...string) (*Server, *atomic.Int64) {
	t.Helper()
	p, err := firewall.ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	dials := new(atomic.Int64)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		if network == "tcp4" {
			dials.Add(1)
			return d.DialContext(ctx, "tcp", up.Addr().String())
		}
		return d.DialContext(ctx, network, addr)
	}
	s, err := Start(t.Context(), Config{Listen: netip.MustParseAddr("127.0.0.1"), Resolver: r.addr, Dial: dial, Timeout: 5 * time.Second}, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, dials
}

// acceptAll accepts connections on a loopback listener and reports each
// on the channel; it reads nothing.
func acceptAll(t *testing.T) (net.Listener, chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan net.Conn, 16)
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case ch <- c:
			default:
			}
		}
	}()
	return ln, ch
}

// TestPolicyRevokedDuringResolveIsHonoured: a policy update that removes
// a name while a connection to it is being resolved must keep that
// connection from being made. The proxy checked the old policy before it
// resolved; a connection set up after SetPolicy returned, to a name the
// policy in force no longer allows, is a revoked rule still in effect
// (and SetPolicy never cuts it, having run before it was tracked).
func TestPolicyRevokedDuringResolveIsHonoured(t *testing.T) {
	for _, port := range []string{"http", "https"} {
		t.Run(port, func(t *testing.T) {
			r := newRecordingResolver(t, true)
			up, accepted := acceptAll(t)
			s, _ := startDialing(t, r, up, "allowed.test")
			svc := s.Services().HTTP
			if port == "https" {
				svc = s.Services().HTTPS
			}
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", svc))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if port == "https" {
				c.Write(clientHello(t, "allowed.test"))
			} else {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
			}
			select {
			case <-r.asked:
			case <-time.After(5 * time.Second):
				t.Fatal("the proxy never resolved allowed.test")
			}
			s.SetPolicy(firewall.Policy{}) // allowed.test is revoked
			close(r.hold)
			select {
			case <-accepted:
				t.Fatal("the proxy connected to allowed.test after its rule was revoked")
			case <-time.After(500 * time.Millisecond):
			}
			if got := s.tracked(); len(got) != 0 {
				t.Errorf("after the revocation the proxy tracks %v", got)
			}
		})
	}
}

// TestNamesThatAreNotHostNamesAreRefused: the policy matches names as
// text (a wildcard is a suffix), but the proxy resolves them through a
// DNS library that reads presentation-form escapes: in "x\.a.wild.test"
// the escaped dot joins "x.a" into one label, so the name the resolver
// is asked about lies in wild.test, outside "*.a.wild.test", although the
// text ends in ".a.wild.test". An SNI (any bytes) or Host that is not a
// plain host name must be refused before anything is resolved.
func TestNamesThatAreNotHostNamesAreRefused(t *testing.T) {
	r := newRecordingResolver(t, false)
	up, _ := acceptAll(t)
	s, dials := startDialing(t, r, up, "*.a.wild.test")
	for _, sni := range []string{`x\.a.wild.test`, `x\046a.wild.test`, "x\x00.a.wild.test", "x y.a.wild.test", "é.a.wild.test"} {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Services().HTTPS))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(rawClientHello(t, sni))
		io.ReadAll(c) // until the proxy closes
		c.Close()
	}
	// A Host header cannot carry a backslash (net/http refuses it), but a
	// CONNECT's authority is checked by the same rule.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Services().HTTP))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "CONNECT x!.a.wild.test:443 HTTP/1.1\r\nHost: x!.a.wild.test:443\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect}); err == nil && resp.StatusCode == 200 {
		t.Errorf("CONNECT x!.a.wild.test:443 answered %d", resp.StatusCode)
	}
	c.Close()
	if q := r.questions(); len(q) != 0 {
		t.Errorf("the resolver was asked about %q", q)
	}
	if dials.Load() != 0 {
		t.Errorf("the proxy dialed upstream %d times", dials.Load())
	}
	// A plain name below the wildcard still goes through.
	c, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Services().HTTPS))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(rawClientHello(t, "x.a.wild.test"))
	deadline := time.Now().Add(5 * time.Second)
	for dials.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if dials.Load() != 1 {
		t.Errorf("x.a.wild.test: %d dials, want 1", dials.Load())
	}
}

// rawClientHello is a minimal TLS 1.2 ClientHello record whose SNI is the
// bytes of sni, unvalidated (crypto/tls refuses to send most of them).
func rawClientHello(t testing.TB, sni string) []byte {
	t.Helper()
	name := []byte(sni)
	entry := append([]byte{0, byte(len(name) >> 8), byte(len(name))}, name...)
	list := append([]byte{byte(len(entry) >> 8), byte(len(entry))}, entry...)
	ext := append([]byte{0, 0, byte(len(list) >> 8), byte(len(list))}, list...)
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0)                   // session id
	body = append(body, 0, 2, 0xc0, 0x2f)    // one cipher suite
	body = append(body, 1, 0)                // null compression
	body = append(body, byte(len(ext)>>8), byte(len(ext)))
	body = append(body, ext...)
	hs := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	rec := append([]byte{22, 3, 1, byte(len(hs) >> 8), byte(len(hs))}, hs...)
	if _, got, err := readClientHello(bytes.NewReader(rec)); err != nil || got != lowerASCII(sni) {
		t.Fatalf("rawClientHello(%q) reads back as %q, %v", sni, got, err)
	}
	return rec
}

// TestIdleConnectionsAreBounded: a sandbox may open connections to the
// proxy and the stub's TCP port and send nothing. Each accepted one costs
// the host process (the daemon, shared by every sandbox) a descriptor and
// a goroutine until headTimeout; the sandbox's own limits (nofile per
// process, times pids) allow it about a million. What the proxy and the
// stub accept at once must be bounded, and excess connections must wait
// in the kernel's backlog, costing the host process nothing.
func TestIdleConnectionsAreBounded(t *testing.T) {
	s := start(t, testResolver(t, "203.0.113.10"), "allowed.test")
	const n = 1500
	before := runtime.NumGoroutine()
	fdsBefore := openFDs(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		port := []uint16{s.Services().HTTP, s.Services().HTTPS, s.Services().DNS}[i%3]
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	time.Sleep(500 * time.Millisecond) // let the accept loops catch up
	goroutines := runtime.NumGoroutine() - before
	serverFDs := openFDs(t) - fdsBefore - n // the test's own ends are n
	t.Logf("%d idle connections: the server holds %d descriptors and %d goroutines", n, serverFDs, goroutines)
	if limit := MaxConns + maxDNSConns; serverFDs > limit || goroutines > limit+16 {
		t.Errorf("%d idle connections cost the server %d descriptors and %d goroutines, want at most %d", n, serverFDs, goroutines, limit)
	}
	// Once they are gone, the proxy serves again.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", s.Services().HTTP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("after the flood: %v %v, want 403", resp, err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
