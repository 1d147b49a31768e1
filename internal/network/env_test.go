package network

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/miekg/dns"
	"golang.org/x/net/websocket"
)

// Peer hosts of the test Internet. 203.0.113.0/24 is a documentation range
// standing in for public hosts; the others are internal ranges a sandbox
// must never reach. All of them live only in the test's peer namespace.
var (
	peerA    = netip.MustParseAddr("203.0.113.10")
	peerB    = netip.MustParseAddr("203.0.113.20")
	peerMeta = netip.MustParseAddr("169.254.169.254")
	peerPriv = netip.MustParseAddr("10.1.2.3")
	peerIETF = netip.MustParseAddr("192.0.0.8") // IETF protocol assignments
	peer6    = netip.MustParseAddr("2001:db8:ffff::10")
)

// testEnv is a test host namespace with the peer Internet, a test DNS
// resolver on the host's loopback, and a network Config rooted in temp dirs.
type testEnv struct {
	cfg  Config
	inet *testutil.Internet
}

func newEnv(t testing.TB) *testEnv {
	t.Helper()
	testutil.RequireHostNetNS(t)
	inet := testutil.NewInternet(t, peerA, peerB, peerMeta, peerPriv, peerIETF, peer6)
	for _, a := range []netip.Addr{peerA, peerB, peerMeta, peerPriv, peerIETF} {
		testutil.Serve(t, inet.NS, netip.AddrPortFrom(a, 8080))
		testutil.Serve(t, inet.NS, netip.AddrPortFrom(a, 9090))
	}
	testutil.Serve(t, inet.NS, netip.AddrPortFrom(peer6, 8080))
	serveWeb(t, inet.NS, peerA)
	serveWeb(t, inet.NS, peerPriv)
	serveWeb(t, inet.NS, peerMeta)
	root := t.TempDir()
	return &testEnv{
		inet: inet,
		cfg: Config{
			Root:     root,
			NetnsDir: filepath.Join(root, "netns"),
			Pool:     netip.MustParsePrefix("10.200.0.0/16"),
			Resolver: serveTestDNS(t),
		},
	}
}

// sandboxDir makes a sandbox state directory for id.
func (e *testEnv) sandboxDir(t testing.TB, id string) (string, sandbox.Key) {
	t.Helper()
	key := sandbox.KeyOf(id)
	dir := filepath.Join(e.cfg.Root, "sandboxes", string(key))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, key
}

// setup runs Setup for id with rules and closes the network at the end.
func (e *testEnv) setup(t testing.TB, id string, rules ...string) *Net {
	t.Helper()
	p, err := firewall.ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	dir, key := e.sandboxDir(t, id)
	n, err := Setup(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// serveTestDNS runs a DNS server on the host's loopback that plays the
// upstream resolver for the egress proxy and returns its address.
func serveTestDNS(t testing.TB) string {
	t.Helper()
	zone := map[string]netip.Addr{
		"allowed.test.":       peerA,
		"www.wild.test.":      peerA,
		"internal.wild.test.": peerPriv,
		"meta.wild.test.":     peerMeta,
		"denied.test.":        peerA,
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if a, ok := zone[dns.CanonicalName(q.Question[0].Name)]; ok && q.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: a.AsSlice()})
		} else if !ok {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// serveWeb runs an HTTP server on addr:80 and an HTTPS server (self-signed)
// on addr:443 inside ns; both answer "web <addr>", and serve a WebSocket
// echo at /ws.
func serveWeb(t testing.TB, ns *netns.NS, addr netip.Addr) {
	t.Helper()
	var ln80, ln443 net.Listener
	if err := ns.Do(func() error {
		var err error
		if ln80, err = net.Listen("tcp", netip.AddrPortFrom(addr, 80).String()); err != nil {
			return err
		}
		ln443, err = net.Listen("tcp", netip.AddrPortFrom(addr, 443).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// /ws is a WebSocket echo server that prefixes every message with
	// its own address and the Host it was asked for.
	ws := websocket.Handler(func(c *websocket.Conn) {
		for {
			var m string
			if err := websocket.Message.Receive(c, &m); err != nil {
				return
			}
			if err := websocket.Message.Send(c, fmt.Sprintf("ws %s host=%s: %s", addr, c.Request().Host, m)); err != nil {
				return
			}
		}
	})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			ws.ServeHTTP(w, r)
			return
		}
		fmt.Fprintf(w, "web %s host=%s", addr, r.Host)
	})
	s80 := &http.Server{Handler: h}
	s443 := &http.Server{Handler: h, TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}}
	go s80.Serve(ln80)
	go s443.ServeTLS(ln443, "", "")
	t.Cleanup(func() { s80.Close(); s443.Close() })
}

func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"*.test", "*.wild.test"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// inNS runs fn with a dialer whose sockets are made inside ns.
func dialIn(ns *netns.NS, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// httpGet sends GET / with Host host to addr (plain HTTP) from inside ns
// and returns the status line's code and the body.
func httpGet(ctx context.Context, ns *netns.NS, addr, host string) (int, string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		return dialIn(ns, network, addr, 2*time.Second)
	}, DisableKeepAlives: true}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+host+"/", nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b := make([]byte, 512)
	n, _ := resp.Body.Read(b)
	return resp.StatusCode, string(b[:n]), nil
}

// httpsGet makes a TLS connection to addr with SNI sni from inside ns and
// sends GET /.
func httpsGet(ctx context.Context, ns *netns.NS, addr, sni string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		return dialIn(ns, network, addr, 2*time.Second)
	}, TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: sni}, DisableKeepAlives: true}
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+sni+"/", nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b := make([]byte, 512)
	n, _ := resp.Body.Read(b)
	return string(b[:n]), nil
}

// lookup asks the DNS server at server (from inside ns) for name's A record.
func lookup(ns *netns.NS, server, name string) (*dns.Msg, error) {
	conn, err := dialIn(ns, "udp", server, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := (&dns.Client{}).ExchangeWithConn(q, &dns.Conn{Conn: conn})
	return r, err
}

// fillPool prepares n pool slots for the test and drains the pool at its
// end.
func (e *testEnv) fillPool(t *testing.T, n int) {
	t.Helper()
	t.Cleanup(func() {
		if err := Drain(context.Background(), e.cfg); err != nil {
			t.Error(err)
		}
	})
	if made, err := Fill(t.Context(), e.cfg, n); err != nil || made != n {
		t.Fatalf("fill: %d %v", made, err)
	}
}
