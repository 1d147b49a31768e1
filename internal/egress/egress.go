// Package egress enforces a sandbox's domain allow rules on the host: a DNS
// stub that answers allowlisted names only, and an HTTP/HTTPS proxy that
// reads the name a client asks for (the Host header on port 80, the TLS SNI
// on 443), checks it against the policy, resolves it itself through a
// configured resolver and dials the address it resolved. Plain HTTP is
// proxied one request per connection (Connection: close both ways), so the
// Host of every request is checked; TLS is spliced after the SNI check, and
// a WebSocket connection after its handshake's Host check and the
// upstream's 101 Switching Protocols.
//
// The stub answers every allowlisted name with the proxy's own address and
// never forwards a query, so DNS cannot carry data out of the sandbox, and
// neither /etc/hosts nor DNS tricks inside the sandbox change where the
// proxy connects. Names that resolve into internal ranges (see
// firewall.Denied), names that are not plain host names, and a CONNECT
// whose TLS SNI names another host are refused; the policy in force when
// a connection is set up, not only when its name was checked, decides.
// A sandbox gets at most MaxConns proxy connections at once.
//
// A Server runs as goroutines in the process that owns the sandbox,
// listening on the host side of the sandbox's link; the host firewall
// redirects the sandbox's ports 53, 80 and 443 at that address to it.
package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

// DialFunc dials network connections (the proxy's upstream connections and
// its resolver queries).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Config configures a Server.
type Config struct {
	// Listen is the address the stub and proxy listen on: the host side
	// of the sandbox's link.
	Listen netip.Addr
	// Resolver is the DNS server (host:port) the proxy resolves names
	// through. Required when the policy has domain rules.
	Resolver string
	// Deny are the networks besides firewall.InternalRanges that resolved
	// addresses may not lie in (the host's addresses, the sandbox pool).
	Deny []netip.Prefix
	// Dial dials upstream; nil means a net.Dialer.
	Dial DialFunc
	// Logger receives one line per refused request; nil discards.
	Logger *slog.Logger
	// Timeout bounds resolving and dialing upstream; zero means 10s.
	Timeout time.Duration
}

// Server is a running DNS stub and proxy for one sandbox.
type Server struct {
	cfg     Config
	log     *slog.Logger
	dialer  DialFunc
	mu      sync.Mutex
	policy  firewall.Policy
	conns   map[*proxyConn]struct{}
	closers []func() error
	wg      sync.WaitGroup
	svc     firewall.Services
	closed  bool
	// slots bounds the proxy connections being served (see MaxConns);
	// done is closed by Close, to stop an accept loop waiting for one.
	slots chan struct{}
	done  chan struct{}
}

// MaxConns bounds the connections the proxy serves at once, HTTP and
// HTTPS together; maxDNSConns bounds the stub's TCP connections. Each
// costs the host process a descriptor and goroutines (and, while it waits
// for its request head, up to headTimeout): without a bound, a sandbox
// could open as many as its own limits allow (about a million) at the
// expense of the process that serves every sandbox. Connections beyond
// the bound wait in the kernel's accept queue, costing that process
// nothing, until one ends.
const (
	MaxConns    = 512
	maxDNSConns = 64
)

// ErrRefused marks a request the policy does not allow.
var ErrRefused = errors.New("refused by egress policy")

// Start starts the stub (UDP and TCP) and the proxy (HTTP and HTTPS) on
// cfg.Listen with kernel-chosen ports, which Services reports for the
// firewall's redirect rules. It stops when Close is called.
func Start(ctx context.Context, cfg Config, p firewall.Policy) (*Server, error) {
	if !cfg.Listen.IsValid() {
		return nil, errors.New("egress: no listen address")
	}
	if cfg.Resolver == "" {
		return nil, errors.New("egress: no resolver address for the proxy")
	}
	if _, _, err := net.SplitHostPort(cfg.Resolver); err != nil {
		return nil, fmt.Errorf("egress: resolver %q: want host:port: %w", cfg.Resolver, err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	s := &Server{cfg: cfg, log: cfg.Logger, policy: p, conns: map[*proxyConn]struct{}{},
		slots: make(chan struct{}, MaxConns), done: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.dialer = cfg.Dial
	if s.dialer == nil {
		d := &net.Dialer{}
		s.dialer = d.DialContext
	}
	var lc net.ListenConfig
	host := cfg.Listen.String()
	fail := func(err error) (*Server, error) {
		s.Close()
		return nil, fmt.Errorf("egress: listen on %s: %w", host, err)
	}
	udp, tcpDNS, port, err := listenDNS(ctx, &lc, host)
	if err != nil {
		return fail(err)
	}
	s.closers = append(s.closers, udp.Close, tcpDNS.Close)
	s.svc.DNS = port
	httpLn, err := lc.Listen(ctx, "tcp4", net.JoinHostPort(host, "0"))
	if err != nil {
		return fail(err)
	}
	s.closers = append(s.closers, httpLn.Close)
	s.svc.HTTP = uint16(httpLn.Addr().(*net.TCPAddr).Port)
	httpsLn, err := lc.Listen(ctx, "tcp4", net.JoinHostPort(host, "0"))
	if err != nil {
		return fail(err)
	}
	s.closers = append(s.closers, httpsLn.Close)
	s.svc.HTTPS = uint16(httpsLn.Addr().(*net.TCPAddr).Port)

	udpSrv := &dns.Server{PacketConn: udp, Handler: dns.HandlerFunc(s.serveDNS)}
	tcpSrv := &dns.Server{Listener: netutil.LimitListener(tcpDNS, maxDNSConns), Handler: dns.HandlerFunc(s.serveDNS)}
	for _, srv := range []*dns.Server{udpSrv, tcpSrv} {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); _ = srv.ActivateAndServe() }()
	}
	s.serve(httpLn, s.handleHTTP)
	s.serve(httpsLn, s.handleTLS)
	return s, nil
}

// dnsListenAttempts bounds how often listenDNS tries a new port.
const dnsListenAttempts = 32

// listenDNS opens the stub's UDP socket on a port the kernel picks and its
// TCP listener on the same port number. That TCP port may be taken (a
// listener on the wildcard address, say); then it tries another.
func listenDNS(ctx context.Context, lc *net.ListenConfig, host string) (net.PacketConn, net.Listener, uint16, error) {
	for attempt := 1; ; attempt++ {
		udp, err := lc.ListenPacket(ctx, "udp4", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, nil, 0, err
		}
		port := uint16(udp.LocalAddr().(*net.UDPAddr).Port)
		tcp, err := lc.Listen(ctx, "tcp4", net.JoinHostPort(host, fmt.Sprint(port)))
		if err == nil {
			return udp, tcp, port, nil
		}
		udp.Close()
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == dnsListenAttempts {
			return nil, nil, 0, err
		}
	}
}

// Services returns the ports the stub and proxy listen on.
func (s *Server) Services() firewall.Services { return s.svc }

// SetPolicy replaces the policy. Proxied connections to names the new
// policy no longer allows are closed.
func (s *Server) SetPolicy(p firewall.Policy) {
	s.mu.Lock()
	s.policy = p
	var cut []*proxyConn
	for c := range s.conns {
		if !p.AllowsDomain(c.host, c.port) {
			cut = append(cut, c)
		}
	}
	s.mu.Unlock()
	for _, c := range cut {
		c.close()
	}
}

func (s *Server) currentPolicy() firewall.Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policy
}

// Close stops the listeners, closes every proxied connection and waits for
// the goroutines to end. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	var errs []error
	for _, c := range s.closers {
		if err := c(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	conns := make([]*proxyConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

func (s *Server) serve(ln net.Listener, handle func(net.Conn)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case s.slots <- struct{}{}:
			case <-s.done:
				return
			}
			c, err := ln.Accept()
			if err != nil {
				<-s.slots
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() { <-s.slots }()
				handle(c)
			}()
		}
	}()
}

// serveDNS answers A queries for allowlisted names with the proxy's address
// and AAAA queries for them with no records (sandboxes have no IPv6); any
// other name is refused (REFUSED), and nothing is ever forwarded.
func (s *Server) serveDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	if len(q.Question) != 1 || q.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeRefused
		_ = w.WriteMsg(m)
		return
	}
	qu := q.Question[0]
	name := dns.CanonicalName(qu.Name)
	host := name[:len(name)-1]
	p := s.currentPolicy()
	if qu.Qclass != dns.ClassINET || !(p.AllowsDomain(host, 80) || p.AllowsDomain(host, 443)) {
		s.log.Info("dns refused", "name", host, "type", dns.TypeToString[qu.Qtype])
		m.Rcode = dns.RcodeRefused
		_ = w.WriteMsg(m)
		return
	}
	m.Authoritative = true
	if qu.Qtype == dns.TypeA || qu.Qtype == dns.TypeANY {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: qu.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
			A:   s.cfg.Listen.AsSlice(),
		})
	}
	_ = w.WriteMsg(m)
}

// resolve looks host up (A records) through the configured resolver and
// returns the first address that is not denied. If every address is
// denied, the error wraps ErrRefused.
func (s *Server) resolve(ctx context.Context, host string, p firewall.Policy) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	conn, err := s.dialer(ctx, "udp", s.cfg.Resolver)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s: dial resolver: %w", host, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(host), dns.TypeA)
	c := &dns.Client{}
	r, _, err := c.ExchangeWithConnContext(ctx, q, &dns.Conn{Conn: conn})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	if r.Rcode != dns.RcodeSuccess {
		return netip.Addr{}, fmt.Errorf("resolve %s: %s", host, dns.RcodeToString[r.Rcode])
	}
	var denied []netip.Addr
	for _, rr := range r.Answer {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.A.To4())
		if !ok {
			continue
		}
		if firewall.Denied(ip, s.cfg.Deny, p) {
			denied = append(denied, ip)
			continue
		}
		return ip, nil
	}
	if len(denied) > 0 {
		return netip.Addr{}, fmt.Errorf("%w: %s resolves to internal address %v", ErrRefused, host, denied)
	}
	return netip.Addr{}, fmt.Errorf("resolve %s: no IPv4 address", host)
}
