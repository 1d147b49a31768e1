package network

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/miekg/dns"
	"golang.org/x/net/websocket"
)

// TestDomainRules drives the DNS stub and the egress proxy from inside a
// sandbox, through the host firewall's redirects, to web servers on peer
// hosts, with the proxy resolving through a test DNS server.
func TestDomainRules(t *testing.T) {
	e := newEnv(t)
	n := e.setup(t, "domains", "allowed.test", "*.wild.test")
	gw := n.Gateway().String()
	if got := string(n.ResolvConf()); !strings.Contains(got, "nameserver "+gw) {
		t.Fatalf("resolv.conf does not point at the stub: %q", got)
	}
	ctx := t.Context()

	t.Run("dns", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			rcode int
		}{{"allowed.test", dns.RcodeSuccess}, {"www.wild.test", dns.RcodeSuccess}, {"ALLOWED.test.", dns.RcodeSuccess},
			{"other.test", dns.RcodeRefused}, {"wild.test", dns.RcodeRefused}, {"exfil-data.allowed.test", dns.RcodeRefused}} {
			r, err := lookup(n.ns, gw+":53", c.name)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if r.Rcode != c.rcode {
				t.Errorf("%s: rcode %s, want %s", c.name, dns.RcodeToString[r.Rcode], dns.RcodeToString[c.rcode])
			}
			if c.rcode == dns.RcodeSuccess {
				if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != gw {
					t.Errorf("%s: answer %v, want the proxy address %s", c.name, r.Answer, gw)
				}
			}
		}
	})

	t.Run("http", func(t *testing.T) {
		code, body, err := httpGet(ctx, n.ns, gw+":80", "allowed.test")
		if err != nil || code != 200 || body != "web 203.0.113.10 host=allowed.test" {
			t.Errorf("allowed.test: %d %q %v", code, body, err)
		}
		for _, host := range []string{"denied.test", "internal.wild.test", "meta.wild.test", "203.0.113.10"} {
			code, body, err := httpGet(ctx, n.ns, gw+":80", host)
			if err != nil || code != 403 {
				t.Errorf("%s: want 403, got %d %q %v", host, code, body, err)
			}
		}
	})

	t.Run("http keep-alive", func(t *testing.T) {
		// A second request on the same connection naming a host the
		// policy does not allow (served by the same peer) goes nowhere.
		c, err := dialIn(n.ns, "tcp", gw+":80", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		for i, want := range []string{"web 203.0.113.10 host=allowed.test", ""} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				if want != "" {
					t.Fatalf("response %d: %v", i, err)
				}
				break
			}
			b, _ := io.ReadAll(resp.Body)
			if want == "" && resp.StatusCode == 200 || want != "" && string(b) != want {
				t.Errorf("response %d: %d %q, want %q", i, resp.StatusCode, b, want)
			}
		}
	})

	t.Run("https", func(t *testing.T) {
		for _, sni := range []string{"allowed.test", "www.wild.test"} {
			body, err := httpsGet(ctx, n.ns, gw+":443", sni)
			if err != nil || !strings.HasPrefix(body, "web 203.0.113.10 host="+sni) {
				t.Errorf("%s: %q %v", sni, body, err)
			}
		}
		for _, sni := range []string{"denied.test", "internal.wild.test", "meta.wild.test"} {
			if body, err := httpsGet(ctx, n.ns, gw+":443", sni); err == nil {
				t.Errorf("%s: want refused, got %q", sni, body)
			}
		}
	})

	t.Run("websocket", func(t *testing.T) {
		// ws:// through the HTTP proxy: the handshake's Host is checked,
		// then frames flow both ways; wss:// is TLS with an allowed SNI,
		// spliced as an opaque stream.
		for _, c := range []struct {
			url  string
			tls  bool
			pass bool
		}{
			{"ws://allowed.test/ws", false, true},
			{"ws://www.wild.test/ws", false, true},
			{"wss://allowed.test/ws", true, true},
			{"ws://denied.test/ws", false, false},
			{"ws://internal.wild.test/ws", false, false},
			{"wss://denied.test/ws", true, false},
		} {
			t.Run(c.url, func(t *testing.T) {
				host := strings.Split(strings.SplitN(c.url, "//", 2)[1], "/")[0]
				port := ":80"
				if c.tls {
					port = ":443"
				}
				conn, err := dialIn(n.ns, "tcp", gw+port, 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(3 * time.Second))
				if c.tls {
					conn = tls.Client(conn, &tls.Config{ServerName: host, InsecureSkipVerify: true})
				}
				cfg, err := websocket.NewConfig(c.url, "http://origin.test/")
				if err != nil {
					t.Fatal(err)
				}
				ws, err := websocket.NewClient(cfg, conn)
				if !c.pass {
					if err == nil {
						t.Fatalf("WebSocket to %s opened", c.url)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range []string{"one", strings.Repeat("y", 70000), "three"} {
					if err := websocket.Message.Send(ws, m); err != nil {
						t.Fatal(err)
					}
					var got string
					if err := websocket.Message.Receive(ws, &got); err != nil {
						t.Fatal(err)
					}
					if want := "ws 203.0.113.10 host=" + host + ": " + m; got != want {
						t.Fatalf("echo: got %d bytes %.60q, want %.60q", len(got), got, want)
					}
				}
			})
		}
	})

	t.Run("connect", func(t *testing.T) {
		try := func(target, sni string) error {
			c, err := dialIn(n.ns, "tcp", gw+":80", 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Write([]byte("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")); err != nil {
				return err
			}
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil {
				return err
			}
			if !strings.Contains(line, " 200 ") {
				return &net.OpError{Op: "connect", Err: errString(line)}
			}
			for l, _ := br.ReadString('\n'); strings.TrimSpace(l) != ""; l, _ = br.ReadString('\n') {
			}
			tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
			return tc.Handshake()
		}
		if err := try("allowed.test:443", "allowed.test"); err != nil {
			t.Errorf("CONNECT with matching SNI: %v", err)
		}
		if err := try("allowed.test:443", "denied.test"); err == nil {
			t.Error("CONNECT allowed.test with SNI denied.test got through")
		}
		if err := try("denied.test:443", "denied.test"); err == nil {
			t.Error("CONNECT to a name not allowed got through")
		}
	})

	t.Run("direct", func(t *testing.T) {
		// The proxy is the only way out: the peer's own address is not.
		runProbes(t, "direct", &testutil.Probe{NS: n.ns}, []probe{
			tcp("web server by address", peerA, 80, false),
			tcp("web server by address", peerA, 443, false),
			udp("another resolver", peerA, 53, false),
			tcp("other port on the proxy address", n.Gateway(), 8080, false),
		})
	})
}

type errString string

func (e errString) Error() string { return string(e) }

// TestUpdateUnusedDomains: a network made with domain rules and given
// other domain rules before any use (a claimed warm pool member) answers
// DNS and proxies for the new names only.
func TestUpdateUnusedDomains(t *testing.T) {
	e := newEnv(t)
	n := e.setup(t, "domains-unused", "allowed.test")
	gw := n.Gateway().String()
	p, err := firewall.ParsePolicy([]string{"denied.test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.UpdateUnused(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatalf("verify: %v %v", err, rep.Err)
	}
	for name, rcode := range map[string]int{"denied.test": dns.RcodeSuccess, "allowed.test": dns.RcodeRefused} {
		r, err := lookup(n.ns, gw+":53", name)
		if err != nil || r.Rcode != rcode {
			t.Errorf("%s: %v %v, want rcode %s", name, r, err, dns.RcodeToString[rcode])
		}
	}
	if code, body, err := httpGet(t.Context(), n.ns, gw+":80", "denied.test"); err != nil || code != 200 || body != "web 203.0.113.10 host=denied.test" {
		t.Errorf("denied.test, now allowed: %d %q %v", code, body, err)
	}
	if code, _, err := httpGet(t.Context(), n.ns, gw+":80", "allowed.test"); err != nil || code != 403 {
		t.Errorf("allowed.test, no longer allowed: %d %v, want 403", code, err)
	}
}
