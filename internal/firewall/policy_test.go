package firewall

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParsePolicy(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string // canonical form; "" with err set
		err  error
	}{
		{"203.0.113.0/24", "203.0.113.0/24", nil},
		{"203.0.113.7", "203.0.113.7", nil},
		{"203.0.113.7/32", "203.0.113.7", nil},
		{"203.0.113.0/24:443", "203.0.113.0/24:443", nil},
		{"203.0.113.0/24:443/tcp", "203.0.113.0/24:443/tcp", nil},
		{"203.0.113.0/24:443/TCP", "203.0.113.0/24:443/tcp", nil},
		{"203.0.113.0/24/udp", "203.0.113.0/24/udp", nil},
		{"203.0.113.0/24:1000-2000/udp", "203.0.113.0/24:1000-2000/udp", nil},
		{"0.0.0.0/0", "0.0.0.0/0", nil},
		{"Example.COM", "example.com", nil},
		{"example.com.", "example.com", nil},
		{"example.com:443", "example.com:443", nil},
		{"*.example.com", "*.example.com", nil},
		{"*.example.com:80", "*.example.com:80", nil},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", nil},
		{"", "", ErrInvalidRule},
		{"203.0.113.1/24", "", ErrInvalidRule},
		{"203.0.113.0/33", "", ErrInvalidRule},
		{"300.1.1.1", "", ErrInvalidRule},
		{"1.2.3", "", ErrInvalidRule},
		{"203.0.113.0/24:0", "", ErrInvalidRule},
		{"203.0.113.0/24:65536", "", ErrInvalidRule},
		{"203.0.113.0/24:2000-1000", "", ErrInvalidRule},
		{"203.0.113.0/24:", "", ErrInvalidRule},
		{"203.0.113.0/24:http", "", ErrInvalidRule},
		{"203.0.113.0/24/sctp", "", ErrInvalidRule},
		{"2001:db8::/32", "", ErrUnsupportedRule},
		{"[2001:db8::1]:443", "", ErrUnsupportedRule},
		{"::ffff:1.2.3.4", "", ErrInvalidRule},
		{"example.com:22", "", ErrUnsupportedRule},
		{"example.com/tcp", "", ErrInvalidRule},
		{"example.com:80-443", "", ErrInvalidRule},
		{"*.*.example.com", "", ErrInvalidRule},
		{"exa*mple.com", "", ErrInvalidRule},
		{"-bad.example.com", "", ErrInvalidRule},
		{"bücher.example", "", ErrInvalidRule},
		{"example.123", "", ErrInvalidRule},
		{"a..b", "", ErrInvalidRule},
		{strings.Repeat("a", 64) + ".com", "", ErrInvalidRule},
		{"exam ple.com", "", ErrInvalidRule},
		{"*.com", "", ErrInvalidRule},
		{"*.co.uk", "", ErrInvalidRule},
		{"*.CO.UK.", "", ErrInvalidRule},
		{"*.internal", "", ErrInvalidRule},
		{"*.example.co.uk", "*.example.co.uk", nil},
		{"*.github.io", "*.github.io", nil},
		{"*.wild.test", "*.wild.test", nil},
		{"https://example.com", "", ErrInvalidRule},
		{"http://example.com:80", "", ErrInvalidRule},
	} {
		p, err := ParsePolicy([]string{c.in})
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%q: error %v, want %v", c.in, err, c.err)
			} else if !strings.Contains(err.Error(), "--allow") {
				t.Errorf("%q: error %q does not name the flag", c.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if got := p.Rules(); len(got) != 1 || got[0] != c.want {
			t.Errorf("%q: parsed as %v, want %q", c.in, got, c.want)
		}
	}
	p, _ := ParsePolicy([]string{"example.com", "203.0.113.0/24", "example.com", "EXAMPLE.com"})
	if len(p.Rules()) != 2 {
		t.Errorf("duplicates kept: %v", p.Rules())
	}
	if _, err := ParsePolicy(make([]string, MaxRules+1)); !errors.Is(err, ErrInvalidRule) {
		t.Errorf("too many rules: %v", err)
	}
}

func TestDomainMatch(t *testing.T) {
	p, _ := ParsePolicy([]string{"example.com:443", "*.wild.test"})
	for _, c := range []struct {
		host string
		port uint16
		want bool
	}{
		{"example.com", 443, true}, {"EXAMPLE.com.", 443, true}, {"example.com", 80, false},
		{"www.example.com", 443, false}, {"a.wild.test", 80, true}, {"a.b.wild.test", 443, true},
		{"wild.test", 443, false}, {"evilwild.test", 443, false},
	} {
		if got := p.AllowsDomain(c.host, c.port); got != c.want {
			t.Errorf("%s:%d: %v, want %v", c.host, c.port, got, c.want)
		}
	}
}

// FuzzParsePolicy: no input panics; an accepted policy re-parses from its
// canonical form to the same policy; CIDR rules are masked IPv4 networks.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"203.0.113.0/24:443/tcp", "example.com", "*.example.com:80", "[::1]:1", "1.2.3.4:1-2/udp", "a:b:c", "/tcp", ":", "*.", "0.0.0.0/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicy([]string{s})
		if err != nil {
			if !errors.Is(err, ErrInvalidRule) && !errors.Is(err, ErrUnsupportedRule) {
				t.Fatalf("%q: error without a sentinel: %v", s, err)
			}
			return
		}
		again, err := ParsePolicy(p.Rules())
		if err != nil {
			t.Fatalf("%q: canonical form %v does not parse: %v", s, p.Rules(), err)
		}
		if !reflect.DeepEqual(p, again) {
			t.Fatalf("%q: %+v re-parses as %+v", s, p, again)
		}
		for _, r := range p.CIDRs {
			if !r.Prefix.Addr().Is4() || r.Prefix.Masked() != r.Prefix || (r.PortLo == 0) != (r.PortHi == 0) || r.PortLo > r.PortHi {
				t.Fatalf("%q: bad rule %+v", s, r)
			}
		}
	})
}
