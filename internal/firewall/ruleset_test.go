package firewall

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// packet is what the interpreter below matches on.
type packet struct {
	nfproto, l4proto byte
	saddr, daddr     netip.Addr
	dport            uint16
	iif, oif         string
	established      bool
}

// eval runs a packet through a chain's rules with a tiny interpreter of the
// expressions the builders emit, so the builders' logic is tested without a
// kernel (the kernel tests then check the kernel agrees with the builders).
// It returns the verdict, or "" when no rule decided.
func eval(t *testing.T, rules []Rule, p packet) string {
	t.Helper()
	for _, r := range rules {
		var reg []byte
		matched := true
	exprs:
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Meta:
				switch e.Key {
				case expr.MetaKeyNFPROTO:
					reg = []byte{p.nfproto}
				case expr.MetaKeyL4PROTO:
					reg = []byte{p.l4proto}
				case expr.MetaKeyIIFNAME:
					reg = ifnameBytes(p.iif)
				case expr.MetaKeyOIFNAME:
					reg = ifnameBytes(p.oif)
				default:
					t.Fatalf("meta key %d not modelled", e.Key)
				}
			case *expr.Payload:
				switch {
				case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 12:
					a := p.saddr.As4()
					reg = a[:]
				case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 16:
					a := p.daddr.As4()
					reg = a[:]
				case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2:
					reg = binary.BigEndian.AppendUint16(nil, p.dport)
				default:
					t.Fatalf("payload %+v not modelled", e)
				}
			case *expr.Bitwise:
				out := make([]byte, len(reg))
				for i := range reg {
					out[i] = reg[i]&e.Mask[i] ^ e.Xor[i]
				}
				reg = out
			case *expr.Ct:
				var st uint32
				if p.established {
					st = expr.CtStateBitESTABLISHED
				} else {
					st = expr.CtStateBitNEW
				}
				reg = binary.NativeEndian.AppendUint32(nil, st)
			case *expr.Cmp:
				c := bytes.Compare(reg, e.Data)
				ok := map[expr.CmpOp]bool{expr.CmpOpEq: c == 0, expr.CmpOpNeq: c != 0, expr.CmpOpGte: c >= 0, expr.CmpOpLte: c <= 0, expr.CmpOpLt: c < 0, expr.CmpOpGt: c > 0}[e.Op]
				if !ok {
					matched = false
					break exprs
				}
			case *expr.Verdict:
				if matched {
					return verdictName(e)
				}
			default:
				t.Fatalf("expression %T not modelled", e)
			}
		}
	}
	return ""
}

func randomPolicy(r *rand.Rand) []string {
	nets := []string{"203.0.113.0/24", "203.0.113.10", "198.51.100.0/24", "0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16",
		"169.254.169.254", "192.168.0.0/16", "100.64.0.0/10", "10.200.0.5", "8.8.8.8", "1.0.0.0/8", "224.0.0.0/4"}
	var rules []string
	for i := 0; i < r.IntN(5); i++ {
		s := nets[r.IntN(len(nets))]
		switch r.IntN(4) {
		case 1:
			s += fmt.Sprintf(":%d", 1+r.IntN(1000))
		case 2:
			lo := 1 + r.IntN(1000)
			s += fmt.Sprintf(":%d-%d", lo, lo+r.IntN(100))
		}
		if r.IntN(2) == 0 && len(s) > 0 {
			s += []string{"/tcp", "/udp"}[r.IntN(2)]
		}
		rules = append(rules, s)
	}
	return rules
}

// TestBuiltRulesMatchModel checks, for random policies and packets, that
// the built sandbox output chain and host forward chain decide exactly as
// Target.Allows says, that spoofed sources and IPv6 are always dropped, and
// that replies are always accepted.
func TestBuiltRulesMatchModel(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 2))
	dsts := []string{"203.0.113.10", "203.0.113.99", "198.51.100.1", "198.51.100.7", "10.1.2.3", "10.9.9.9", "169.254.169.254",
		"192.168.1.1", "100.64.0.1", "127.0.0.1", "10.200.0.5", "10.200.0.1", "10.200.7.2", "8.8.8.8", "1.2.3.4", "224.0.0.1", "255.255.255.255"}
	for i := 0; i < 300; i++ {
		rules := randomPolicy(r)
		tg := testTarget(t, rules...)
		inner, err := BuildSandbox(tg)
		if err != nil {
			t.Fatal(err)
		}
		part, err := BuildHost(tg)
		if err != nil {
			t.Fatal(err)
		}
		out, fwdIn := inner[0].Rules, part.Chains[0].Rules
		for j := 0; j < 30; j++ {
			dst := netip.MustParseAddr(dsts[r.IntN(len(dsts))])
			proto := []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_ICMP}[r.IntN(3)]
			port := uint16(1 + r.IntN(1200))
			if proto == unix.IPPROTO_ICMP {
				port = 0
			}
			p := packet{nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: tg.SandboxAddr, daddr: dst, dport: port, oif: "eth0", iif: tg.HostIf}
			want := "drop"
			if tg.Allows(dst, proto, port) {
				want = "accept"
			}
			gotOut := eval(t, out, p)
			if gotOut == "" {
				gotOut = "drop" // policy
			}
			// The sandbox's own chain also lets it reach the host's services.
			if dst == tg.HostAddr && (port == 53 || port == 80 || port == 443) && proto != unix.IPPROTO_ICMP && !(proto == unix.IPPROTO_UDP && port != 53) {
				continue
			}
			if gotOut != want {
				t.Fatalf("policy %v: output chain says %s for %v %d:%d, model says %s", rules, gotOut, dst, proto, port, want)
			}
			if got := eval(t, fwdIn, p); got != want {
				t.Fatalf("policy %v: host forward chain says %s for %v %d:%d, model says %s", rules, got, dst, proto, port, want)
			}
			spoof := p
			spoof.saddr = netip.MustParseAddr("10.200.0.6")
			if got := eval(t, out, spoof); got != "drop" {
				t.Fatalf("spoofed source: output %q", got)
			}
			if got := eval(t, fwdIn, spoof); got != "drop" {
				t.Fatalf("spoofed source: host %q", got)
			}
			v6 := p
			v6.nfproto = unix.NFPROTO_IPV6
			if got := eval(t, fwdIn, v6); got != "drop" {
				t.Fatalf("IPv6: host %q", got)
			}
			est := p
			est.established = true
			if got := eval(t, out, est); got != "accept" {
				t.Fatalf("reply: output %q", got)
			}
		}
	}
}

func TestBuildRejectsBadTargets(t *testing.T) {
	for _, tg := range []Target{
		{},
		{Name: "x", SandboxAddr: netip.MustParseAddr("::1"), HostAddr: netip.MustParseAddr("10.0.0.1"), HostIf: "a"},
		{Name: "x", SandboxAddr: netip.MustParseAddr("10.0.0.2"), HostAddr: netip.MustParseAddr("10.0.0.1"), HostIf: "sixteen-chars-xx"},
	} {
		if _, err := BuildSandbox(&tg); err == nil {
			t.Errorf("BuildSandbox accepted %+v", tg)
		}
		if _, err := BuildHost(&tg); err == nil {
			t.Errorf("BuildHost accepted %+v", tg)
		}
	}
	if c := BuildEmptySandbox(); len(c) != 3 || *c[0].Policy != nftables.ChainPolicyDrop {
		t.Errorf("empty sandbox ruleset: %+v", c)
	}
}

// TestGuestForwardMatchesModel checks the forward chain a micro-VM guest's
// packets cross in the sandbox namespace: for random policies it decides
// as Target.Allows, and it drops spoofed guest sources, IPv6, packets from
// anywhere but the tap or to anywhere but the host link, and lets replies
// back to the guest.
func TestGuestForwardMatchesModel(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 3))
	dsts := []string{"203.0.113.10", "198.51.100.7", "10.1.2.3", "169.254.169.254", "192.168.1.1", "10.200.0.5", "10.200.0.1", "8.8.8.8", "224.0.0.1"}
	for i := 0; i < 200; i++ {
		rules := randomPolicy(r)
		tg := testTarget(t, rules...)
		tg.Guest = &Guest{If: "tap0", Addr: netip.MustParseAddr("169.254.100.2"), Uplink: "eth0"}
		inner, err := BuildSandbox(tg)
		if err != nil {
			t.Fatal(err)
		}
		if len(inner) != 4 || inner[2].Name != "forward" || inner[3].Type != nftables.ChainTypeNAT {
			t.Fatalf("guest ruleset chains: %+v", inner)
		}
		fwd := inner[2].Rules
		verdict := func(p packet) string {
			if v := eval(t, fwd, p); v != "" {
				return v
			}
			return "drop" // policy
		}
		for j := 0; j < 20; j++ {
			dst := netip.MustParseAddr(dsts[r.IntN(len(dsts))])
			proto := []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP}[r.IntN(2)]
			port := uint16(1 + r.IntN(1200))
			p := packet{nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: tg.Guest.Addr, daddr: dst, dport: port, iif: "tap0", oif: "eth0"}
			want := "drop"
			if tg.Allows(dst, proto, port) {
				want = "accept"
			}
			if dst == tg.HostAddr && (port == 53 || proto == unix.IPPROTO_TCP && (port == 80 || port == 443)) {
				want = "accept" // the host's services
			}
			if got := verdict(p); got != want {
				t.Fatalf("policy %v: guest forward says %s for %v %d:%d, want %s", rules, got, dst, proto, port, want)
			}
			for name, bad := range map[string]func(*packet){
				"spoofed source": func(q *packet) { q.saddr = tg.SandboxAddr },
				"IPv6":           func(q *packet) { q.nfproto = unix.NFPROTO_IPV6 },
				"not from tap":   func(q *packet) { q.iif = "eth1" },
				"not to uplink":  func(q *packet) { q.oif = "tap1" },
			} {
				q := p
				bad(&q)
				if got := verdict(q); got != "drop" {
					t.Fatalf("%s: guest forward says %s", name, got)
				}
			}
			reply := packet{nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: dst, daddr: tg.Guest.Addr, iif: "eth0", oif: "tap0", established: true}
			if got := verdict(reply); got != "accept" {
				t.Fatalf("reply to the guest: %s", got)
			}
			reply.established = false
			if got := verdict(reply); got != "drop" {
				t.Fatalf("new flow to the guest: %s", got)
			}
		}
	}
	bad := testTarget(t)
	bad.Guest = &Guest{If: "eth0", Addr: netip.MustParseAddr("169.254.100.2"), Uplink: "eth0"}
	if _, err := BuildSandbox(bad); err == nil {
		t.Error("BuildSandbox accepted a guest on the uplink itself")
	}
	bad.Guest = &Guest{If: "tap0", Addr: bad.SandboxAddr, Uplink: "eth0"}
	if _, err := BuildSandbox(bad); err == nil {
		t.Error("BuildSandbox accepted a guest with the sandbox's address")
	}
}
