package egress

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
)

// maxHead bounds the HTTP request head the proxy reads before deciding.
const maxHead = 32 << 10

// headTimeout bounds how long a client may take to send its request head or
// ClientHello.
const headTimeout = 10 * time.Second

// proxyConn is one proxied connection, tracked so a policy update can cut it.
type proxyConn struct {
	host string
	port uint16
	once sync.Once
	a, b net.Conn
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		c.a.Close()
		if c.b != nil {
			c.b.Close()
		}
	})
}

// handleHTTP serves the proxy's port 80: a plain request is sent to the
// host its Host header names; a CONNECT (the sandbox using the proxy
// explicitly) is tunnelled to its target after the same checks, and to port
// 443 only if the TLS SNI that follows names the same host.
//
// Plain HTTP carries one request per connection (see forwardHTTP): every
// request's Host is checked, because a later request on a kept-alive
// connection could name another host served at the same address. A
// WebSocket handshake whose Host passed is the exception: once the
// upstream switches protocols the connection is spliced raw.
func (s *Server) handleHTTP(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(headTimeout))
	br := bufio.NewReaderSize(c, 4096)
	req, rd, err := readRequest(br)
	if err != nil {
		s.log.Info("proxy: bad request", "err", err)
		writeStatus(c, http.StatusBadRequest, "bad request")
		return
	}
	if req.Method == http.MethodConnect {
		s.handleConnect(c, rd, req)
		return
	}
	host, port, err := splitHost(req.Host, 80)
	if err != nil || port != 80 {
		writeStatus(c, http.StatusForbidden, "ironclaw egress: bad or missing Host")
		s.log.Info("proxy refused", "host", req.Host, "reason", "bad Host")
		return
	}
	s.forwardHTTP(c, req, rd, host)
}

func (s *Server) handleConnect(c net.Conn, br *bufio.Reader, req *http.Request) {
	host, port, err := splitHost(req.Host, 0)
	if err != nil || (port != 80 && port != 443) {
		writeStatus(c, http.StatusForbidden, "ironclaw egress: CONNECT to ports 80 and 443 only")
		return
	}
	if !s.currentPolicy().AllowsDomain(host, port) {
		writeStatus(c, http.StatusForbidden, "ironclaw egress: "+host+" is not allowed")
		s.log.Info("proxy refused", "host", host, "port", port, "reason", "not allowed")
		return
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	if port == 80 {
		r, rrd, err := readRequest(br)
		if err != nil {
			writeStatus(c, http.StatusBadRequest, "bad request")
			return
		}
		if h, p, err := splitHost(r.Host, 80); err != nil || h != host || p != 80 {
			s.log.Info("proxy refused", "host", host, "inner", r.Host, "reason", "CONNECT and Host differ")
			writeStatus(c, http.StatusForbidden, "ironclaw egress: Host differs from CONNECT")
			return
		}
		s.forwardHTTP(c, r, rrd, host)
		return
	}
	raw, sni, err := readClientHello(br)
	if err != nil || sni != host {
		s.log.Info("proxy refused", "host", host, "sni", sni, "reason", "CONNECT and SNI differ", "err", err)
		return
	}
	s.forward(c, br, host, port, raw)
}

// handleTLS serves the proxy's port 443: the ClientHello's SNI decides.
func (s *Server) handleTLS(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(headTimeout))
	br := bufio.NewReaderSize(c, 4096)
	raw, sni, err := readClientHello(br)
	if err != nil || sni == "" {
		s.log.Info("proxy refused", "reason", "no TLS SNI", "err", err)
		return
	}
	s.forward(c, br, sni, 443, raw)
}

// dial checks host:port against the policy, resolves host and dials the
// resolved address. It answers a refusal itself (with a status on port
// 80) and then returns nil. Otherwise the connection is tracked, so a
// policy update can cut it, until done is called.
func (s *Server) dial(c net.Conn, host string, port uint16) (pc *proxyConn, done func()) {
	p := s.currentPolicy()
	if !p.AllowsDomain(host, port) {
		s.log.Info("proxy refused", "host", host, "port", port, "reason", "not allowed")
		if port == 80 {
			writeStatus(c, http.StatusForbidden, "ironclaw egress: "+host+" is not allowed")
		}
		return nil, nil
	}
	if !validHostName(host) {
		s.log.Info("proxy refused", "host", host, "port", port, "reason", "not a host name")
		if port == 80 {
			writeStatus(c, http.StatusForbidden, "ironclaw egress: not a host name")
		}
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	ip, err := s.resolve(ctx, host, p)
	if err != nil {
		s.log.Info("proxy refused", "host", host, "reason", err)
		if port == 80 {
			writeStatus(c, http.StatusForbidden, "ironclaw egress: "+err.Error())
		}
		return nil, nil
	}
	// The policy may have changed while the name was resolved (which
	// takes up to Timeout): what is dialled, and then tracked, is what
	// the policy in force allows. The check before the dial keeps a
	// revoked name from being connected to at all; the one under the
	// lock, with the tracking, leaves no gap for a SetPolicy to miss.
	refusedNow := func() bool {
		return !s.policy.AllowsDomain(host, port) || firewall.Denied(ip, s.cfg.Deny, s.policy)
	}
	revoked := func() {
		s.log.Info("proxy refused", "host", host, "port", port, "reason", "policy changed while resolving")
		if port == 80 {
			writeStatus(c, http.StatusForbidden, "ironclaw egress: "+host+" is not allowed")
		}
	}
	s.mu.Lock()
	stale := s.closed || refusedNow()
	s.mu.Unlock()
	if stale {
		revoked()
		return nil, nil
	}
	up, err := s.dialer(ctx, "tcp4", net.JoinHostPort(ip.String(), strconv.Itoa(int(port))))
	if err != nil {
		s.log.Info("proxy: dial failed", "host", host, "addr", ip, "err", err)
		if port == 80 {
			writeStatus(c, http.StatusBadGateway, "ironclaw egress: cannot reach "+host)
		}
		return nil, nil
	}
	pc = &proxyConn{host: host, port: port, a: c, b: up}
	s.mu.Lock()
	if s.closed || refusedNow() {
		closed := s.closed
		s.mu.Unlock()
		up.Close()
		if !closed {
			revoked()
		}
		return nil, nil
	}
	s.conns[pc] = struct{}{}
	s.mu.Unlock()
	return pc, func() {
		s.mu.Lock()
		delete(s.conns, pc)
		s.mu.Unlock()
		pc.close()
	}
}

// forward dials host:port (see dial), replays first and splices the two
// connections: for TLS, whose SNI was checked and whose content the proxy
// cannot read.
func (s *Server) forward(c net.Conn, br *bufio.Reader, host string, port uint16, first []byte) {
	pc, done := s.dial(c, host, port)
	if pc == nil {
		return
	}
	defer done()
	up := pc.b
	c.SetReadDeadline(time.Time{})
	if _, err := up.Write(first); err != nil {
		return
	}
	s.splice(c, br, up, up)
}

// hopHeaders are the hop-by-hop headers (RFC 9110, section 7.6.1) the
// proxy drops in both directions; it sets Connection itself.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func dropHopHeaders(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// isWebSocketUpgrade reports whether req asks to switch its connection to
// the WebSocket protocol (RFC 6455, section 4.1): a GET without a body
// whose Connection names "upgrade" and whose Upgrade is "websocket".
func isWebSocketUpgrade(req *http.Request) bool {
	if req.Method != http.MethodGet || req.ContentLength != 0 || len(req.TransferEncoding) > 0 || !req.ProtoAtLeast(1, 1) {
		return false
	}
	return headerHasToken(req.Header, "Connection", "upgrade") && headerHasToken(req.Header, "Upgrade", "websocket")
}

// headerHasToken reports whether the comma-separated values of the header
// name include token (case-insensitive).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

// forwardHTTP sends req, whose Host (host) was checked, to host on port 80
// and relays the response, then closes the connection: one request per
// connection, both ways (Connection: close upstream and to the client).
// Anything the client sent after req's body (a pipelined or kept-alive
// request, which could name another host) is never forwarded.
//
// The one exception is a WebSocket handshake (isWebSocketUpgrade): it is
// forwarded with its Upgrade, and if the upstream answers 101 Switching
// Protocols with Upgrade: websocket, the connection stops being HTTP and
// is spliced raw both ways, to the host already checked, like a TLS
// stream after its SNI check. Any other answer is relayed and the
// connection closed as usual.
func (s *Server) forwardHTTP(c net.Conn, req *http.Request, rd *bufio.Reader, host string) {
	pc, done := s.dial(c, host, 80)
	if pc == nil {
		return
	}
	defer done()
	up := pc.b
	c.SetReadDeadline(time.Time{})
	ws := isWebSocketUpgrade(req)
	dropHopHeaders(req.Header)
	if ws {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		s.forwardUpgrade(c, rd, up, req, host)
		return
	}
	req.Close = true
	if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// The proxy answers for the upstream, which sees no Expect, so
		// the client sends the body now.
		req.Header.Del("Expect")
		if _, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return
		}
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "") // Write adds Go's own otherwise
	}
	wrote := make(chan error, 1)
	go func() { wrote <- req.Write(up) }()
	defer func() {
		pc.close()
		<-wrote
	}()
	ur := bufio.NewReader(up)
	for {
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			s.log.Info("proxy: bad response", "host", host, "err", err)
			writeStatus(c, http.StatusBadGateway, "ironclaw egress: bad response from "+host)
			return
		}
		informational := resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols
		dropHopHeaders(resp.Header)
		resp.Close = !informational
		err = resp.Write(c)
		resp.Body.Close()
		if err != nil || !informational {
			return
		}
	}
}

// forwardUpgrade sends the WebSocket handshake req to up and relays the
// answer. On 101 with Upgrade: websocket it splices c (read through rd,
// which holds whatever the client sent after the handshake) and up both
// ways until both sides are done; on anything else it relays the response
// and closes, as forwardHTTP does.
func (s *Server) forwardUpgrade(c net.Conn, rd *bufio.Reader, up net.Conn, req *http.Request, host string) {
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "") // Write adds Go's own otherwise
	}
	// The handshake has no body (isWebSocketUpgrade), so Write returns
	// once the head is sent and nothing of rd has been read past it.
	if err := req.Write(up); err != nil {
		s.log.Info("proxy: write upgrade request", "host", host, "err", err)
		writeStatus(c, http.StatusBadGateway, "ironclaw egress: cannot reach "+host)
		return
	}
	ur := bufio.NewReader(up)
	for {
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			s.log.Info("proxy: bad response", "host", host, "err", err)
			writeStatus(c, http.StatusBadGateway, "ironclaw egress: bad response from "+host)
			return
		}
		switched := resp.StatusCode == http.StatusSwitchingProtocols && headerHasToken(resp.Header, "Upgrade", "websocket")
		if resp.StatusCode == http.StatusSwitchingProtocols && !switched {
			s.log.Info("proxy refused", "host", host, "upgrade", resp.Header.Get("Upgrade"), "reason", "switch to a protocol other than websocket")
			writeStatus(c, http.StatusBadGateway, "ironclaw egress: "+host+" switched to a protocol other than websocket")
			return
		}
		informational := resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols
		dropHopHeaders(resp.Header)
		if switched {
			var b bytes.Buffer
			fmt.Fprintf(&b, "HTTP/1.1 101 %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n", http.StatusText(http.StatusSwitchingProtocols))
			if err := resp.Header.Write(&b); err != nil {
				return
			}
			b.WriteString("\r\n")
			if _, err := c.Write(b.Bytes()); err != nil {
				return
			}
			s.splice(c, rd, up, ur)
			return
		}
		resp.Close = !informational
		err = resp.Write(c)
		resp.Body.Close()
		if err != nil || !informational {
			return
		}
	}
}

// splice copies client (read through cr) to up and up (read through ur)
// to client until both directions are done, passing each end of stream
// on as a half-close.
func (s *Server) splice(client net.Conn, cr io.Reader, up net.Conn, ur io.Reader) {
	ch := make(chan struct{}, 2)
	go func() { io.Copy(up, cr); closeWrite(up); ch <- struct{}{} }()
	go func() { io.Copy(client, ur); closeWrite(client); ch <- struct{}{} }()
	<-ch
	<-ch
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// readRequest reads one request head from br (at most maxHead bytes) and
// parses it. The request's body, and anything after it, is read through
// the returned reader, which is the one to use from then on.
func readRequest(br *bufio.Reader) (*http.Request, *bufio.Reader, error) {
	head, err := readHead(br)
	if err != nil {
		return nil, nil, err
	}
	rd := bufio.NewReader(io.MultiReader(bytes.NewReader(head), br))
	req, err := http.ReadRequest(rd)
	if err != nil {
		return nil, nil, fmt.Errorf("parse request: %w", err)
	}
	return req, rd, nil
}

// readHead reads an HTTP request head (through the blank line).
func readHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			return nil, fmt.Errorf("read request head: %w", err)
		}
		if len(head) > maxHead {
			return nil, errors.New("request head too long")
		}
		if len(line) <= 2 && strings.TrimRight(string(line), "\r\n") == "" {
			return head, nil
		}
	}
}

// splitHost splits "host[:port]" into a lower-case name without a trailing
// dot and a port (def when absent). IP literals are refused: the proxy
// only serves names.
func splitHost(hp string, def uint16) (string, uint16, error) {
	host, portStr := hp, ""
	if h, p, err := net.SplitHostPort(hp); err == nil {
		host, portStr = h, p
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if net.ParseIP(host) != nil || !validHostName(host) {
		return "", 0, fmt.Errorf("bad host %q", hp)
	}
	port := def
	if portStr != "" {
		n, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || n == 0 {
			return "", 0, fmt.Errorf("bad port in %q", hp)
		}
		port = uint16(n)
	}
	if port == 0 {
		return "", 0, fmt.Errorf("no port in %q", hp)
	}
	return host, port, nil
}

// validHostName reports whether host (lower-case, without a trailing
// dot) is a plain host name: dot-separated labels of 1 to 63 letters,
// digits, '-' and '_', 253 characters at most. The policy matches names
// as text, and the proxy then asks a DNS library to resolve them, which
// reads presentation-form escapes ("\.", "\046"): a name with any other
// character could be read as other labels than the ones checked (the
// escaped dot in "x\.a.example.com" makes "x.a" one label, outside
// "*.a.example.com"), so it is never resolved. IDNs travel as their
// ASCII (xn--) form.
func validHostName(host string) bool {
	if host == "" || len(host) > 253 {
		return false
	}
	for _, l := range strings.Split(host, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func writeStatus(c net.Conn, code int, msg string) {
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		code, http.StatusText(code), len(msg)+1, msg)
}
