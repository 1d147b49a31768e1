package egress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"golang.org/x/net/websocket"
)

// upstream is a keep-alive HTTP server on the loopback standing in for
// every host the test resolver resolves (203.0.113.10): the proxy's dials
// to that address are sent to it. It records the Host of every request it
// serves.
type upstream struct {
	srv   *httptest.Server
	mu    sync.Mutex
	hosts []string
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.hosts = append(u.hosts, r.Host)
		u.mu.Unlock()
		switch r.URL.Path {
		case "/ws":
			websocket.Handler(wsEcho).ServeHTTP(w, r)
			return
		case "/h2c":
			// A switch to another protocol than WebSocket.
			w.Header().Set("Connection", "Upgrade")
			w.Header().Set("Upgrade", "h2c")
			w.WriteHeader(http.StatusSwitchingProtocols)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "hello %s %s %q", r.Host, r.Method, body)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.hosts...)
}

// startWithUpstream starts a proxy whose resolver answers 203.0.113.10 for
// every name and whose dials to 203.0.113.10:80 reach u.
func startWithUpstream(t *testing.T, u *upstream, rules ...string) *Server {
	t.Helper()
	p, err := firewall.ParsePolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		if network == "tcp4" {
			if addr != "203.0.113.10:80" {
				return nil, fmt.Errorf("test dialer: unexpected upstream %s", addr)
			}
			return d.DialContext(ctx, "tcp", u.srv.Listener.Addr().String())
		}
		return d.DialContext(ctx, network, addr)
	}
	s, err := Start(t.Context(), Config{Listen: netip.MustParseAddr("127.0.0.1"), Resolver: testResolver(t, "203.0.113.10"), Dial: dial, Timeout: 2 * time.Second}, p)
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

func get(host string) string {
	return "GET / HTTP/1.1\r\nHost: " + host + "\r\nConnection: keep-alive\r\n\r\n"
}

// TestProxyChecksEveryRequest: on one client connection to the HTTP
// proxy, a second request (kept alive or pipelined, plain or inside a
// CONNECT to port 80) that names a host the policy does not allow never
// reaches the upstream, even though the same address serves it.
func TestProxyChecksEveryRequest(t *testing.T) {
	u := newUpstream(t)
	s := startWithUpstream(t, u, "allowed.test")
	proxy := fmt.Sprintf("127.0.0.1:%d", s.Services().HTTP)
	for _, c := range []struct {
		name     string
		preamble string // sent first; its answer is read and checked for 200
		first    string
		second   string
		pipeline bool
	}{
		{name: "kept alive", first: get("allowed.test"), second: get("denied.test")},
		{name: "pipelined", first: get("allowed.test"), second: get("denied.test"), pipeline: true},
		{name: "CONNECT :80, kept alive", preamble: "CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n", first: get("allowed.test"), second: get("denied.test")},
		{name: "CONNECT :80, pipelined", preamble: "CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n", first: get("allowed.test"), second: get("denied.test"), pipeline: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(conn)
			if c.preamble != "" {
				io.WriteString(conn, c.preamble)
				resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("CONNECT: %v %v", resp, err)
				}
			}
			if c.pipeline {
				io.WriteString(conn, c.first+c.second)
			} else {
				io.WriteString(conn, c.first)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(body), "hello allowed.test GET") {
				t.Fatalf("first request: %d %q %v", resp.StatusCode, body, err)
			}
			if !c.pipeline {
				// Write errors are fine: the proxy may have closed
				// the connection already.
				io.WriteString(conn, c.second)
			}
			if resp, err := http.ReadResponse(br, nil); err == nil {
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode == 200 {
					t.Errorf("second request (Host denied.test) answered %d %q", resp.StatusCode, body)
				}
			}
			for _, h := range u.seen() {
				if h != "allowed.test" {
					t.Fatalf("upstream served Host %q", h)
				}
			}
		})
	}
	if len(u.seen()) != 4 {
		t.Fatalf("upstream served %v, want allowed.test 4 times", u.seen())
	}
}

// TestProxyHTTPRequests: what the proxy forwards is the client's request,
// bodies included (fixed length, chunked, after 100-continue), and the
// absolute form's host is the one checked.
func TestProxyHTTPRequests(t *testing.T) {
	u := newUpstream(t)
	s := startWithUpstream(t, u, "allowed.test")
	proxy := fmt.Sprintf("127.0.0.1:%d", s.Services().HTTP)
	for _, c := range []struct {
		name, req string
		code      int
		body      string
	}{
		{"content-length", "POST /x HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 5\r\n\r\nhello", 200, `hello allowed.test POST "hello"`},
		{"chunked", "POST /x HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 200, `hello allowed.test POST "abcde"`},
		{"absolute form names the host", "GET http://denied.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 403, ""},
		{"absolute form, allowed", "GET http://allowed.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n", 200, `hello allowed.test GET ""`},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: allowed.test\r\n\r\n", 200, `hello allowed.test GET ""`},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 403, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", proxy)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, c.req)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != c.code || (c.body != "" && string(body) != c.body) {
				t.Fatalf("%d %q %v; want %d %q", resp.StatusCode, body, err, c.code, c.body)
			}
			if c.code == 200 && !resp.Close {
				t.Error("response does not say Connection: close")
			}
		})
	}
	t.Run("100-continue", func(t *testing.T) {
		conn, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, "PUT /x HTTP/1.1\r\nHost: allowed.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("want 100 Continue first: %v %v", resp, err)
		}
		io.WriteString(conn, "data")
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || string(body) != `hello allowed.test PUT "data"` {
			t.Fatalf("%d %q %v", resp.StatusCode, body, err)
		}
	})
	t.Run("policy update cuts a slow response", func(t *testing.T) {
		// A request in flight when its host stops being allowed.
		conn, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		// A body the client never finishes keeps the request open.
		io.WriteString(conn, "POST /x HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 100\r\n\r\npartial")
		deadline := time.Now().Add(2 * time.Second)
		for len(s.tracked()) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		p, _ := firewall.ParsePolicy([]string{"other.test"})
		s.SetPolicy(p)
		_, err = io.ReadAll(conn)
		if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Fatalf("read after cut: %v", err)
		}
	})
}

// tracked returns the hosts of the proxied connections.
func (s *Server) tracked() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for c := range s.conns {
		out = append(out, c.host)
	}
	return out
}

func isReset(err error) bool { return strings.Contains(err.Error(), "connection reset") }

// wsEcho sends every message it receives back, as one message.
func wsEcho(ws *websocket.Conn) {
	for {
		var m []byte
		if err := websocket.Message.Receive(ws, &m); err != nil {
			return
		}
		if err := websocket.Message.Send(ws, string(m)); err != nil {
			return
		}
	}
}

// wsDial makes a WebSocket connection to url (ws://host/path) over conn,
// a connection to the proxy.
func wsDial(conn net.Conn, url string) (*websocket.Conn, error) {
	cfg, err := websocket.NewConfig(url, "http://origin.test/")
	if err != nil {
		return nil, err
	}
	return websocket.NewClient(cfg, conn)
}

// echoes sends msgs on ws one at a time and checks each comes back.
func echoes(t *testing.T, ws *websocket.Conn, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if err := websocket.Message.Send(ws, m); err != nil {
			t.Fatalf("send %q: %v", m, err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != m {
			t.Fatalf("echo of %d bytes: %d bytes, equal %v, %v", len(m), len(got), got == m, err)
		}
	}
}

// TestProxyWebSocket: a WebSocket handshake whose Host is allowed is
// forwarded with its Upgrade and, once the upstream switches protocols,
// frames flow both ways, directly or after a CONNECT to port 80. A
// handshake naming a host not allowed, or an upstream switching to
// another protocol, goes nowhere; a policy update cuts an open WebSocket.
func TestProxyWebSocket(t *testing.T) {
	u := newUpstream(t)
	s := startWithUpstream(t, u, "allowed.test")
	proxy := fmt.Sprintf("127.0.0.1:%d", s.Services().HTTP)
	dial := func(t *testing.T) net.Conn {
		conn, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		return conn
	}
	t.Run("echo", func(t *testing.T) {
		ws, err := wsDial(dial(t), "ws://allowed.test/ws")
		if err != nil {
			t.Fatal(err)
		}
		echoes(t, ws, "hello", strings.Repeat("x", 100000), "bye")
	})
	t.Run("after CONNECT :80", func(t *testing.T) {
		conn := dial(t)
		io.WriteString(conn, "CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n")
		// Read the CONNECT answer byte by byte, so nothing of what
		// follows is buffered here.
		var head []byte
		for !strings.HasSuffix(string(head), "\r\n\r\n") {
			b := make([]byte, 1)
			if _, err := conn.Read(b); err != nil {
				t.Fatalf("CONNECT answer: %v", err)
			}
			head = append(head, b[0])
		}
		if !strings.Contains(string(head), " 200 ") {
			t.Fatalf("CONNECT: %q", head)
		}
		ws, err := wsDial(conn, "ws://allowed.test/ws")
		if err != nil {
			t.Fatal(err)
		}
		echoes(t, ws, "through CONNECT")
	})
	t.Run("host not allowed", func(t *testing.T) {
		before := len(u.seen())
		if ws, err := wsDial(dial(t), "ws://denied.test/ws"); err == nil {
			ws.Close()
			t.Fatal("WebSocket to denied.test opened")
		}
		if got := u.seen()[before:]; len(got) != 0 {
			t.Fatalf("upstream served %v", got)
		}
	})
	t.Run("switch to another protocol", func(t *testing.T) {
		conn := dial(t)
		io.WriteString(conn, "GET /h2c HTTP/1.1\r\nHost: allowed.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("want 502, got %v %v", resp, err)
		}
	})
	t.Run("upgrade refused by the upstream", func(t *testing.T) {
		// The upstream answers an ordinary 200: relayed, then closed.
		conn := dial(t)
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 || !resp.Close {
			t.Fatalf("want 200 with Connection: close, got %v %v", resp, err)
		}
		io.ReadAll(resp.Body)
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("connection still open after the response: %v", err)
		}
	})
	t.Run("policy update cuts it", func(t *testing.T) {
		ws, err := wsDial(dial(t), "ws://allowed.test/ws")
		if err != nil {
			t.Fatal(err)
		}
		echoes(t, ws, "before")
		p, _ := firewall.ParsePolicy([]string{"other.test"})
		s.SetPolicy(p)
		defer func() {
			p, _ := firewall.ParsePolicy([]string{"allowed.test"})
			s.SetPolicy(p)
		}()
		websocket.Message.Send(ws, "after")
		var got string
		if err := websocket.Message.Receive(ws, &got); err == nil {
			t.Fatalf("WebSocket still open after the update: got %q", got)
		}
	})
}
