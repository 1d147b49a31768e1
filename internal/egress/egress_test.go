package egress

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/miekg/dns"
)

// testResolver answers every A query with addr, on the loopback.
func testResolver(t *testing.T, addr string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.ParseIP(addr)})
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func start(t *testing.T, resolver string, rules ...string) *Server {
	t.Helper()
	p, err := firewall.ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(t.Context(), Config{Listen: netip.MustParseAddr("127.0.0.1"), Resolver: resolver, Timeout: 2 * time.Second}, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestStub(t *testing.T) {
	s := start(t, testResolver(t, "203.0.113.10"), "allowed.test", "*.wild.test")
	addr := fmt.Sprintf("127.0.0.1:%d", s.Services().DNS)
	for _, c := range []struct {
		name  string
		qtype uint16
		rcode int
		n     int
	}{
		{"allowed.test.", dns.TypeA, dns.RcodeSuccess, 1},
		{"allowed.test.", dns.TypeAAAA, dns.RcodeSuccess, 0},
		{"x.wild.test.", dns.TypeTXT, dns.RcodeSuccess, 0},
		{"other.test.", dns.TypeA, dns.RcodeRefused, 0},
		{"ZGF0YQ.other.test.", dns.TypeTXT, dns.RcodeRefused, 0},
	} {
		for _, network := range []string{"udp", "tcp"} {
			q := new(dns.Msg)
			q.SetQuestion(c.name, c.qtype)
			r, _, err := (&dns.Client{Net: network, Timeout: time.Second}).Exchange(q, addr)
			if err != nil {
				t.Fatalf("%s %s: %v", network, c.name, err)
			}
			if r.Rcode != c.rcode || len(r.Answer) != c.n {
				t.Errorf("%s %s %s: rcode %s, %d answers", network, c.name, dns.TypeToString[c.qtype], dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			if c.n == 1 && r.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
				t.Errorf("%s: answer %v is not the proxy's address", c.name, r.Answer[0])
			}
		}
	}
}

// TestProxyRefusesInternal: a name whose resolution lies in an internal
// range is refused before anything is dialled.
func TestProxyRefusesInternal(t *testing.T) {
	for _, internal := range []string{"10.1.2.3", "169.254.169.254", "127.0.0.1", "100.64.0.1", "192.0.0.8"} {
		s := start(t, testResolver(t, internal), "allowed.test")
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Services().HTTP))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body := make([]byte, 300)
		n, _ := resp.Body.Read(body)
		c.Close()
		if resp.StatusCode != 403 || !strings.Contains(string(body[:n]), "internal address") {
			t.Errorf("%s: %d %q", internal, resp.StatusCode, body[:n])
		}
	}
}

func TestStartValidates(t *testing.T) {
	for _, cfg := range []Config{{}, {Listen: netip.MustParseAddr("127.0.0.1")}, {Listen: netip.MustParseAddr("127.0.0.1"), Resolver: "nope"}} {
		if s, err := Start(t.Context(), cfg, firewall.Policy{}); err == nil {
			s.Close()
			t.Errorf("Start accepted %+v", cfg)
		}
	}
}

// TestStartAvoidsTakenDNSPort: the stub's TCP port is the number the
// kernel picked for its UDP port, which another TCP listener may hold.
// In a namespace whose ephemeral range is four ports, the first of them
// held by a TCP listener, Start must still succeed every time.
func TestStartAvoidsTakenDNSPort(t *testing.T) {
	ns := testutil.NewNetNS(t)
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40003"), 0)
	}); err != nil {
		t.Fatal(err)
	}
	var held net.Listener
	if err := ns.Do(func() error {
		var err error
		held, err = net.Listen("tcp4", "0.0.0.0:40000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for i := range 20 {
		var s *Server
		err := ns.Do(func() error {
			var err error
			s, err = Start(t.Context(), Config{Listen: netip.MustParseAddr("127.0.0.1"), Resolver: "127.0.0.1:53"}, firewall.Policy{})
			return err
		})
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if s.Services().DNS == 40000 {
			t.Fatalf("start %d: stub on the held port", i)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
