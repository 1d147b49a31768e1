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
	"strconv"
	"strings"
	"sync"
	"time"
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
func (s *Server) handleHTTP(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(headTimeout))
	br := bufio.NewReaderSize(c, 4096)
	head, err := readHead(br)
	if err != nil {
		s.log.Info("proxy: bad request head", "err", err)
		return
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		writeStatus(c, http.StatusBadRequest, "bad request")
		return
	}
	if req.Method == http.MethodConnect {
		s.handleConnect(c, br, req)
		return
	}
	host, port, err := splitHost(req.Host, 80)
	if err != nil || port != 80 {
		writeStatus(c, http.StatusForbidden, "ironclaw egress: bad or missing Host")
		s.log.Info("proxy refused", "host", req.Host, "reason", "bad Host")
		return
	}
	s.forward(c, br, host, 80, head)
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
	var first []byte
	if port == 443 {
		raw, sni, err := readClientHello(br)
		if err != nil || sni != host {
			s.log.Info("proxy refused", "host", host, "sni", sni, "reason", "CONNECT and SNI differ", "err", err)
			return
		}
		first = raw
	} else {
		head, err := readHead(br)
		if err != nil {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			return
		}
		if h, _, err := splitHost(r.Host, 80); err != nil || h != host {
			s.log.Info("proxy refused", "host", host, "inner", r.Host, "reason", "CONNECT and Host differ")
			writeStatus(c, http.StatusForbidden, "ironclaw egress: Host differs from CONNECT")
			return
		}
		first = head
	}
	s.forward(c, br, host, port, first)
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

// forward checks host:port against the policy, resolves host, dials the
// resolved address, replays first and splices the two connections.
func (s *Server) forward(c net.Conn, br *bufio.Reader, host string, port uint16, first []byte) {
	p := s.currentPolicy()
	if !p.AllowsDomain(host, port) {
		s.log.Info("proxy refused", "host", host, "port", port, "reason", "not allowed")
		if port == 80 {
			writeStatus(c, http.StatusForbidden, "ironclaw egress: "+host+" is not allowed")
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	ip, err := s.resolve(ctx, host, p)
	if err != nil {
		s.log.Info("proxy refused", "host", host, "reason", err)
		if port == 80 {
			writeStatus(c, http.StatusForbidden, "ironclaw egress: "+err.Error())
		}
		return
	}
	up, err := s.dialer(ctx, "tcp4", net.JoinHostPort(ip.String(), strconv.Itoa(int(port))))
	if err != nil {
		s.log.Info("proxy: dial failed", "host", host, "addr", ip, "err", err)
		if port == 80 {
			writeStatus(c, http.StatusBadGateway, "ironclaw egress: cannot reach "+host)
		}
		return
	}
	pc := &proxyConn{host: host, port: port, a: c, b: up}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		up.Close()
		return
	}
	s.conns[pc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, pc)
		s.mu.Unlock()
		pc.close()
	}()
	c.SetReadDeadline(time.Time{})
	if _, err := up.Write(first); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, br); closeWrite(up); done <- struct{}{} }()
	go func() { io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
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
	if host == "" || net.ParseIP(host) != nil || strings.ContainsAny(host, "/[] ") {
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

func writeStatus(c net.Conn, code int, msg string) {
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		code, http.StatusText(code), len(msg)+1, msg)
}
