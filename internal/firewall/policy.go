package firewall

import (
	"fmt"
	"golang.org/x/net/publicsuffix"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// MaxRules bounds the number of allow rules of one policy, so a policy can
// never grow a ruleset past what installs in well under a millisecond.
const MaxRules = 256

// Proto is the transport protocol a CIDR rule allows.
type Proto uint8

// Protocols of a CIDR rule. ProtoAny allows TCP and UDP and, when the rule
// names no port, every other protocol too (ICMP included).
const (
	ProtoAny Proto = iota
	ProtoTCP
	ProtoUDP
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return "any"
}

// CIDRRule allows traffic to a network, written CIDR[:PORT[-PORT]][/tcp|/udp].
type CIDRRule struct {
	// Prefix is the destination network (IPv4 only for now).
	Prefix netip.Prefix
	// Proto restricts the rule to TCP or UDP; ProtoAny allows both, and
	// every protocol when no port is given.
	Proto Proto
	// PortLo and PortHi bound the destination ports; both zero means any port.
	PortLo, PortHi uint16
}

// String formats r the way ParsePolicy reads it.
func (r CIDRRule) String() string {
	s := r.Prefix.String()
	if r.Prefix.IsSingleIP() {
		s = r.Prefix.Addr().String()
	}
	if r.PortLo != 0 {
		s += ":" + strconv.Itoa(int(r.PortLo))
		if r.PortHi != r.PortLo {
			s += "-" + strconv.Itoa(int(r.PortHi))
		}
	}
	if r.Proto != ProtoAny {
		s += "/" + r.Proto.String()
	}
	return s
}

// DomainRule allows HTTP and HTTPS to a name, through the egress proxy.
// Written DOMAIN[:PORT] or '*.DOMAIN[:PORT]'.
type DomainRule struct {
	// Name is the lower-case domain without a trailing dot and without the
	// "*." of a wildcard.
	Name string
	// Wildcard makes the rule match every name below Name (at any depth)
	// but not Name itself, like "*.example.com".
	Wildcard bool
	// Port is 80 or 443; zero allows both.
	Port uint16
}

// String formats r the way ParsePolicy reads it.
func (r DomainRule) String() string {
	s := r.Name
	if r.Wildcard {
		s = "*." + s
	}
	if r.Port != 0 {
		s += ":" + strconv.Itoa(int(r.Port))
	}
	return s
}

// Match reports whether host (a lower-case name without a trailing dot)
// is allowed by r on port.
func (r DomainRule) Match(host string, port uint16) bool {
	if r.Port != 0 && r.Port != port {
		return false
	}
	if r.Wildcard {
		return strings.HasSuffix(host, "."+r.Name)
	}
	return host == r.Name
}

// Policy is a parsed, validated egress allowlist. The zero Policy allows
// nothing: such a sandbox gets loopback only.
type Policy struct {
	CIDRs   []CIDRRule
	Domains []DomainRule
}

// Networked reports whether p allows anything beyond loopback, that is
// whether the sandbox needs a link to the host at all.
func (p Policy) Networked() bool { return len(p.CIDRs) > 0 || len(p.Domains) > 0 }

// Rules returns p as --allow arguments, in a canonical order.
func (p Policy) Rules() []string {
	out := make([]string, 0, len(p.CIDRs)+len(p.Domains))
	for _, r := range p.CIDRs {
		out = append(out, r.String())
	}
	for _, r := range p.Domains {
		out = append(out, r.String())
	}
	return out
}

// AllowsDomain reports whether any domain rule allows host on port.
func (p Policy) AllowsDomain(host string, port uint16) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, r := range p.Domains {
		if r.Match(host, port) {
			return true
		}
	}
	return false
}

// DomainPorts returns the ports the egress proxy must serve for p: a
// subset of 80 and 443.
func (p Policy) DomainPorts() (http, https bool) {
	for _, r := range p.Domains {
		http = http || r.Port == 0 || r.Port == 80
		https = https || r.Port == 0 || r.Port == 443
	}
	return http, https
}

// ParsePolicy parses --allow arguments into a Policy. Each rule is one of
//
//	CIDR[:PORT[-PORT]][/tcp|/udp]   e.g. 203.0.113.0/24:443/tcp, 198.51.100.7
//	DOMAIN[:PORT]                   e.g. example.com, api.example.com:443
//	*.DOMAIN[:PORT]                 e.g. '*.example.com'
//
// A bare address is a /32. A CIDR rule without a port and protocol allows
// every protocol (ICMP included); domain rules allow ports 80 and 443 only,
// through the egress proxy. Duplicates are removed and the result is
// sorted, so equal policies compare equal. The error names the rule and
// the reason.
func ParsePolicy(rules []string) (Policy, error) {
	if len(rules) > MaxRules {
		return Policy{}, fmt.Errorf("%w: --allow: %d rules, more than the limit of %d", ErrInvalidRule, len(rules), MaxRules)
	}
	var p Policy
	seenC := map[CIDRRule]bool{}
	seenD := map[DomainRule]bool{}
	for _, raw := range rules {
		c, d, isCIDR, err := parseRule(raw)
		if err != nil {
			return Policy{}, err
		}
		if isCIDR {
			if !seenC[c] {
				seenC[c] = true
				p.CIDRs = append(p.CIDRs, c)
			}
			continue
		}
		if !seenD[d] {
			seenD[d] = true
			p.Domains = append(p.Domains, d)
		}
	}
	sort.Slice(p.CIDRs, func(i, j int) bool { return cidrLess(p.CIDRs[i], p.CIDRs[j]) })
	sort.Slice(p.Domains, func(i, j int) bool { return p.Domains[i].String() < p.Domains[j].String() })
	return p, nil
}

func cidrLess(a, b CIDRRule) bool {
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c < 0
	}
	if a.Prefix.Bits() != b.Prefix.Bits() {
		return a.Prefix.Bits() < b.Prefix.Bits()
	}
	if a.Proto != b.Proto {
		return a.Proto < b.Proto
	}
	if a.PortLo != b.PortLo {
		return a.PortLo < b.PortLo
	}
	return a.PortHi < b.PortHi
}

func ruleErr(raw, format string, args ...any) error {
	return fmt.Errorf("%w: --allow %q: %s", ErrInvalidRule, raw, fmt.Sprintf(format, args...))
}

func parseRule(raw string) (CIDRRule, DomainRule, bool, error) {
	s := raw
	if s == "" {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "empty rule")
	}
	if len(s) > 300 {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw[:40]+"...", "longer than 300 bytes")
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f {
			return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "contains a space, control or non-ASCII character (write international names in their xn-- form)")
		}
	}
	if i := strings.Index(s, "://"); i > 0 {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "looks like a URL: write the host name or network, with :PORT if needed (example.com:443)")
	}
	proto := ProtoAny
	low := strings.ToLower(s)
	switch {
	case strings.HasSuffix(low, "/tcp"):
		proto, s = ProtoTCP, s[:len(s)-4]
	case strings.HasSuffix(low, "/udp"):
		proto, s = ProtoUDP, s[:len(s)-4]
	}
	host, portStr := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "missing ] after an IPv6 network")
		}
		host, portStr = s[1:end], s[end+1:]
		if portStr != "" {
			if portStr[0] != ':' {
				return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "want :PORT after ]")
			}
			portStr = portStr[1:]
			if portStr == "" {
				return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "empty port after :")
			}
		}
	case strings.Count(s, ":") > 1:
		// An IPv6 address or network without brackets and without a port.
	default:
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, portStr = s[:i], s[i+1:]
			if portStr == "" {
				return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "empty port after :")
			}
		}
	}
	if host == "" {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "no network or domain")
	}
	lo, hi, err := parsePorts(portStr)
	if err != nil {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "%v", err)
	}
	if pfx, ok, err := parseNet(host); err != nil {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "%v", err)
	} else if ok {
		if pfx.Addr().Is6() {
			return CIDRRule{}, DomainRule{}, false, fmt.Errorf("%w: --allow %q: IPv6 egress is not supported yet (sandboxes get IPv4 only; all IPv6 is dropped)", ErrUnsupportedRule, raw)
		}
		return CIDRRule{Prefix: pfx, Proto: proto, PortLo: lo, PortHi: hi}, DomainRule{}, true, nil
	}
	// A domain rule.
	if proto != ProtoAny {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "a domain rule cannot name a protocol: domains are reached over HTTP(S) through the egress proxy")
	}
	if lo != hi {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "a domain rule takes one port, not a range")
	}
	if lo != 0 && lo != 80 && lo != 443 {
		return CIDRRule{}, DomainRule{}, false, fmt.Errorf("%w: --allow %q: domain rules reach ports 80 and 443 only (through the egress proxy); use a CIDR rule for port %d", ErrUnsupportedRule, raw, lo)
	}
	d := DomainRule{Port: lo}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if strings.HasPrefix(name, "*.") {
		d.Wildcard, name = true, name[2:]
	}
	if err := validateDomain(name); err != nil {
		return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "%v", err)
	}
	if d.Wildcard {
		if err := checkWildcardScope(name); err != nil {
			return CIDRRule{}, DomainRule{}, false, ruleErr(raw, "%v", err)
		}
	}
	d.Name = name
	return CIDRRule{}, d, false, nil
}

func parsePorts(s string) (uint16, uint16, error) {
	if s == "" {
		return 0, 0, nil
	}
	a, b, isRange := strings.Cut(s, "-")
	lo, err := parsePort(a)
	if err != nil {
		return 0, 0, err
	}
	hi := lo
	if isRange {
		if hi, err = parsePort(b); err != nil {
			return 0, 0, err
		}
		if hi < lo {
			return 0, 0, fmt.Errorf("port range %d-%d runs backwards", lo, hi)
		}
	}
	return lo, hi, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// parseNet parses an address or CIDR network. ok is false when s is not
// shaped like an address at all (it may be a domain); err is set when it is
// shaped like one but wrong.
func parseNet(s string) (netip.Prefix, bool, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false, fmt.Errorf("bad network %q: %v", s, err)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, false, fmt.Errorf("network %q has a zone", s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, false, fmt.Errorf("network %q has host bits set (did you mean %s?)", s, p.Masked())
		}
		if p.Addr().Is4In6() {
			return netip.Prefix{}, false, fmt.Errorf("network %q is an IPv4-mapped IPv6 network; write the IPv4 network", s)
		}
		return p, true, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.Prefix{}, false, fmt.Errorf("address %q has a zone", s)
		}
		if a.Is4In6() {
			return netip.Prefix{}, false, fmt.Errorf("address %q is an IPv4-mapped IPv6 address; write %s", s, a.Unmap())
		}
		return netip.PrefixFrom(a, a.BitLen()), true, nil
	}
	if strings.Contains(s, ":") || strings.Trim(s, "0123456789.") == "" {
		return netip.Prefix{}, false, fmt.Errorf("bad address %q", s)
	}
	return netip.Prefix{}, false, nil
}

func validateDomain(name string) error {
	if name == "" {
		return fmt.Errorf("empty domain")
	}
	if len(name) > 253 {
		return fmt.Errorf("domain is %d characters, longer than 253", len(name))
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" {
			return fmt.Errorf("domain %q has an empty label", name)
		}
		if len(l) > 63 {
			return fmt.Errorf("domain %q has a label longer than 63 characters", name)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("domain %q has a label starting or ending with -", name)
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				if c == '*' {
					return fmt.Errorf("domain %q: a wildcard is only allowed as a leading *.", name)
				}
				return fmt.Errorf("domain %q has character %q (letters, digits, - and _ only)", name, c)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("domain %q ends in an all-numeric label", name)
	}
	return nil
}

// checkWildcardScope refuses a wildcard rule "*.name" whose name is a
// top-level domain or a public suffix under which anyone can register
// names (com, co.uk, from the public suffix list's ICANN section): such a
// rule lets the sandbox reach every site under it, which is never a
// narrow allowance and almost always a typo for "*.example.com".
// Suffixes of the list's private section (github.io and the like) are
// allowed: naming one is a deliberate choice of a platform.
func checkWildcardScope(name string) error {
	if !strings.Contains(name, ".") {
		return fmt.Errorf("*.%s would allow every name under the top-level domain %q; name a domain under it (*.example.%s)", name, name, name)
	}
	if suffix, icann := publicsuffix.PublicSuffix(name); icann && suffix == name {
		return fmt.Errorf("*.%s would allow every name under the public suffix %q; name a domain under it (*.example.%s)", name, name, name)
	}
	return nil
}
