package firewall

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
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
// Set lookups are answered from els (the elements of the host sets). It
// returns the verdict ("redirect" and "masquerade" for those statements),
// or "" when no rule decided.
func eval(t *testing.T, rules []Rule, p packet, els ...Element) string {
	t.Helper()
	if !slices.ContainsFunc(els, func(e Element) bool { return e.Set == SetDenyInternal }) {
		// The host table's own elements.
		els = append(slices.Clone(els), hostBaseElements()...)
	}
	for _, r := range rules {
		// The register file in 32-bit words; NFT_REG_1 and NFT_REG32_00
		// both start at word 4, as in the kernel.
		var regs [20 * 4]byte
		word := func(reg uint32) int {
			if reg <= 4 {
				return int(reg) * 4
			}
			return int(reg-8) + 4
		}
		store := func(reg uint32, b []byte) {
			o := word(reg) * 4
			n := copy(regs[o:], b)
			for ; n%4 != 0; n++ {
				regs[o+n] = 0
			}
		}
		load := func(reg uint32, n int) []byte { o := word(reg) * 4; return regs[o : o+n] }
		matched := true
	exprs:
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Meta:
				switch e.Key {
				case expr.MetaKeyNFPROTO:
					store(e.Register, []byte{p.nfproto})
				case expr.MetaKeyL4PROTO:
					store(e.Register, []byte{p.l4proto})
				case expr.MetaKeyIIFNAME:
					store(e.Register, ifnameBytes(p.iif))
				case expr.MetaKeyOIFNAME:
					store(e.Register, ifnameBytes(p.oif))
				default:
					t.Fatalf("meta key %d not modelled", e.Key)
				}
			case *expr.Payload:
				switch {
				case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 12:
					a := p.saddr.As16()
					if p.saddr.Is4() {
						a4 := p.saddr.As4()
						copy(a[:], a4[:])
					}
					store(e.DestRegister, a[:4])
				case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 16:
					a := p.daddr.As16()
					if p.daddr.Is4() {
						a4 := p.daddr.As4()
						copy(a[:], a4[:])
					}
					store(e.DestRegister, a[:4])
				case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2:
					store(e.DestRegister, binary.BigEndian.AppendUint16(nil, p.dport))
				default:
					t.Fatalf("payload %+v not modelled", e)
				}
			case *expr.Bitwise:
				in := load(e.SourceRegister, int(e.Len))
				out := make([]byte, len(in))
				for i := range in {
					out[i] = in[i]&e.Mask[i] ^ e.Xor[i]
				}
				store(e.DestRegister, out)
			case *expr.Ct:
				var st uint32
				if p.established {
					st = expr.CtStateBitESTABLISHED
				} else {
					st = expr.CtStateBitNEW
				}
				store(e.Register, binary.NativeEndian.AppendUint32(nil, st))
			case *expr.Cmp:
				c := bytes.Compare(load(e.Register, len(e.Data)), e.Data)
				ok := map[expr.CmpOp]bool{expr.CmpOpEq: c == 0, expr.CmpOpNeq: c != 0, expr.CmpOpGte: c >= 0, expr.CmpOpLte: c <= 0, expr.CmpOpLt: c < 0, expr.CmpOpGt: c > 0}[e.Op]
				if !ok {
					matched = false
					break exprs
				}
			case *expr.Lookup:
				d, ok := setDefOf(e.SetName)
				if !ok {
					t.Fatalf("lookup in unknown set %s", e.SetName)
				}
				key := load(e.SourceRegister, keyLen(d))
				var hit *Element
				for i := range els {
					if els[i].Set == d.name && elementMatches(d, els[i], key) {
						hit = &els[i]
						break
					}
				}
				if (hit != nil) == e.Invert {
					matched = false
					break exprs
				}
				if e.IsDestRegSet {
					store(e.DestRegister, hit.Val)
				}
			case *expr.Redir:
				return "redirect to " + fmt.Sprint(binary.BigEndian.Uint16(load(e.RegisterProtoMin, 2)))
			case *expr.Masq:
				return "masquerade"
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

func keyLen(d setDef) int {
	n := 0
	for _, f := range d.fields {
		n += (int(f.Bytes) + 3) &^ 3
	}
	return n
}

// elementMatches reports whether key lies in e: equal for a plain set,
// within the range of every field for an interval set (as pipapo matches).
func elementMatches(d setDef, e Element, key []byte) bool {
	if !d.interval {
		return bytes.Equal(e.Key, key)
	}
	off := 0
	for _, f := range d.fields {
		n := (int(f.Bytes) + 3) &^ 3
		v, lo, hi := key[off:off+n], e.Key[off:off+n], e.KeyEnd[off:off+n]
		if bytes.Compare(v, lo) < 0 || bytes.Compare(v, hi) > 0 {
			return false
		}
		off += n
	}
	return true
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
		part, err := BuildHost(tg, 1)
		if err != nil {
			t.Fatal(err)
		}
		// A neighbour with a wide policy must not lend the sandbox
		// anything: its elements are keyed by its own link.
		nb := testTarget(t, "0.0.0.0/0", "10.0.0.0/8", "169.254.0.0/16:1-65535")
		nb.HostIf, nb.SandboxAddr, nb.HostAddr = "icneighbour", netip.MustParseAddr("10.200.0.6"), netip.MustParseAddr("10.200.0.5")
		nbPart, err := BuildHost(nb, 1)
		if err != nil {
			t.Fatal(err)
		}
		els := append(slices.Clone(part.Elements), nbPart.Elements...)
		out, fwd := inner.Chains[0].Rules, BuildHostBase()[0].Rules
		outIn := func(p packet) string { return eval(t, out, p, inner.Elements...) }
		fwdIn := func(p packet) string { return eval(t, fwd, p, els...) }
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
			gotOut := outIn(p)
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
			if got := fwdIn(p); got != want {
				t.Fatalf("policy %v: host forward chain says %s for %v %d:%d, model says %s", rules, got, dst, proto, port, want)
			}
			spoof := p
			spoof.saddr = netip.MustParseAddr("10.200.0.6")
			if got := outIn(spoof); got != "drop" {
				t.Fatalf("spoofed source: output %q", got)
			}
			if got := fwdIn(spoof); got != "drop" {
				t.Fatalf("spoofed source: host %q", got)
			}
			v6 := p
			v6.nfproto = unix.NFPROTO_IPV6
			if got := fwdIn(v6); got != "drop" {
				t.Fatalf("IPv6: host %q", got)
			}
			if got := fwdIn(packet{nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: dst, daddr: tg.SandboxAddr, dport: port, iif: "eth0", oif: tg.HostIf}); got != "drop" {
				t.Fatalf("new flow to the sandbox: host %q", got)
			}
			if got := fwdIn(packet{nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: dst, daddr: tg.SandboxAddr, dport: port, iif: "eth0", oif: tg.HostIf, established: true}); got != "accept" {
				t.Fatalf("reply to the sandbox: host %q", got)
			}
			if got := fwdIn(packet{nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: dst, daddr: nb.SandboxAddr, dport: port, iif: "eth0", oif: tg.HostIf, established: true}); got != "drop" {
				t.Fatalf("reply to another address on the sandbox's link: host %q", got)
			}
			// Traffic that is no sandbox's is left alone (policy accept).
			other := p
			other.iif, other.oif, other.saddr = "eth7", "eth8", netip.MustParseAddr("192.0.2.1")
			if got := fwdIn(other); got != "" {
				t.Fatalf("non-sandbox traffic: host forward decided %q", got)
			}
			other.nfproto = unix.NFPROTO_IPV6
			if got := fwdIn(other); got != "" {
				t.Fatalf("non-sandbox IPv6 traffic: host forward decided %q", got)
			}
			// A link with no source, services or live generation passes
			// nothing.
			closed := closedPart(tg.HostIf).Elements
			for _, q := range []packet{p, est(p), {nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: dst, daddr: tg.SandboxAddr, dport: port, iif: "eth0", oif: tg.HostIf, established: true}} {
				if got := eval(t, fwd, q, closed...); got != "drop" {
					t.Fatalf("closed link: host forward says %q for %+v", got, q)
				}
			}
			if got := outIn(est(p)); got != "accept" {
				t.Fatalf("reply: output %q", got)
			}
		}
	}
}

func est(p packet) packet { p.established = true; return p }

// closedPart is the host part of a link that is in SetLinks but has no
// source address, no services and no live generation.
func closedPart(hostIf string) HostPart {
	return HostPart{Iface: hostIf, Elements: []Element{{Set: SetLinks, Key: ifnameBytes(hostIf)}}}
}

// TestHostServices checks the host's input and NAT chains: a sandbox
// reaches its own egress services (redirected from the standard ports to
// theirs) and nothing else on the host; a link with no source reaches
// nothing and is not NATed; other traffic is left alone.
func TestHostServices(t *testing.T) {
	tg := testTarget(t, "203.0.113.0/24")
	part, err := BuildHost(tg, 1)
	if err != nil {
		t.Fatal(err)
	}
	base := BuildHostBase()
	in, pre, post := base[1].Rules, base[2].Rules, base[3].Rules
	pkt := func(proto byte, dst netip.Addr, port uint16) packet {
		return packet{nfproto: unix.NFPROTO_IPV4, l4proto: proto, saddr: tg.SandboxAddr, daddr: dst, dport: port, iif: tg.HostIf}
	}
	for _, c := range []struct {
		p        packet
		pre, in  string
		elements []Element
		postNAT  string
	}{
		{pkt(unix.IPPROTO_UDP, tg.HostAddr, 53), "redirect to 5300", "", part.Elements, "masquerade"},
		{pkt(unix.IPPROTO_TCP, tg.HostAddr, 443), "redirect to 8443", "", part.Elements, "masquerade"},
		{pkt(unix.IPPROTO_TCP, tg.HostAddr, 8443), "", "accept", part.Elements, "masquerade"},
		{pkt(unix.IPPROTO_UDP, tg.HostAddr, 5300), "", "accept", part.Elements, "masquerade"},
		{pkt(unix.IPPROTO_TCP, tg.HostAddr, 22), "", "drop", part.Elements, "masquerade"},
		{pkt(unix.IPPROTO_UDP, tg.HostAddr, 8443), "", "drop", part.Elements, "masquerade"},
		{pkt(unix.IPPROTO_TCP, netip.MustParseAddr("198.51.100.1"), 8443), "", "drop", part.Elements, "masquerade"},
		{pkt(unix.IPPROTO_TCP, tg.HostAddr, 443), "", "drop", closedPart(tg.HostIf).Elements, ""},
		{pkt(unix.IPPROTO_TCP, tg.HostAddr, 8443), "", "drop", closedPart(tg.HostIf).Elements, ""},
	} {
		if got := eval(t, pre, c.p, c.elements...); got != c.pre {
			t.Errorf("prerouting %+v: %q, want %q", c.p, got, c.pre)
		}
		if c.in == "" {
			continue // redirected: the input chain sees the service's own port
		}
		if got := eval(t, in, c.p, c.elements...); got != c.in {
			t.Errorf("input %+v: %q, want %q", c.p, got, c.in)
		}
		if got := eval(t, post, c.p, c.elements...); got != c.postNAT {
			t.Errorf("postrouting %+v: %q, want %q", c.p, got, c.postNAT)
		}
	}
	spoof := pkt(unix.IPPROTO_UDP, tg.HostAddr, 5300)
	spoof.saddr = netip.MustParseAddr("10.200.0.9")
	if got := eval(t, in, spoof, part.Elements...); got != "drop" {
		t.Errorf("spoofed source to a service: %q", got)
	}
	if got := eval(t, post, spoof, part.Elements...); got != "" {
		t.Errorf("spoofed source NATed: %q", got)
	}
	other := packet{nfproto: unix.NFPROTO_IPV4, l4proto: unix.IPPROTO_TCP, saddr: netip.MustParseAddr("192.0.2.1"), daddr: tg.HostAddr, dport: 443, iif: "eth0"}
	for _, ch := range [][]Rule{in, pre, post} {
		if got := eval(t, ch, other, part.Elements...); got != "" {
			t.Errorf("non-sandbox traffic: %q", got)
		}
	}
}

// TestGenerationSwitch checks that a link's superseded elements are inert:
// with a wide policy's elements (generation a, version 1) still in the
// sets and the narrow one's (generation b, version 2) live, the forward
// chain decides as the narrow policy says, and then as the wide one says
// once version 3 (generation a again) replaces them; a link in no
// generation set is denied everything; and version 0 is refused.
func TestGenerationSwitch(t *testing.T) {
	wide, narrow := testTarget(t, "0.0.0.0/0", "10.0.0.0/8"), testTarget(t, "203.0.113.10:443/tcp")
	pw, err := BuildHost(wide, 1)
	if err != nil {
		t.Fatal(err)
	}
	pn, err := BuildHost(narrow, 2)
	if err != nil {
		t.Fatal(err)
	}
	if GenerationOf(1) != 0 || GenerationOf(2) != 1 || GenerationOf(3) != 0 {
		t.Fatalf("generations of 1, 2, 3: %d %d %d", GenerationOf(1), GenerationOf(2), GenerationOf(3))
	}
	els := append(slices.Clone(pn.Elements), (&HostPart{Iface: pw.Iface, Version: 2, Elements: pw.Elements}).Superseded()...)
	fwd := BuildHostBase()[0].Rules
	check := func(what string, allows func(netip.Addr, byte, uint16) bool, els []Element) {
		t.Helper()
		for _, c := range []struct {
			dst   string
			proto byte
			port  uint16
		}{{"203.0.113.10", unix.IPPROTO_TCP, 443}, {"203.0.113.10", unix.IPPROTO_TCP, 80}, {"8.8.8.8", unix.IPPROTO_UDP, 53}, {"10.1.2.3", unix.IPPROTO_TCP, 443}} {
			dst := netip.MustParseAddr(c.dst)
			want := "drop"
			if allows(dst, c.proto, c.port) {
				want = "accept"
			}
			p := packet{nfproto: unix.NFPROTO_IPV4, l4proto: c.proto, saddr: narrow.SandboxAddr, daddr: dst, dport: c.port, iif: narrow.HostIf, oif: "eth0"}
			if got := eval(t, fwd, p, els...); got != want {
				t.Errorf("%s: %s %d:%d: %s, want %s", what, c.dst, c.proto, c.port, got, want)
			}
		}
	}
	check("generation b live, a superseded", narrow.Allows, els)
	if live := (HostPart{Iface: narrow.HostIf, Version: 2, Elements: els}).Live(); len(live.Elements) != len(pn.Elements) {
		t.Errorf("Live kept %d elements, want %d", len(live.Elements), len(pn.Elements))
	}
	pw3, err := BuildHost(wide, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(pw3.Elements, pw.Elements, func(a, b Element) bool { return a.id() == b.id() }) {
		t.Errorf("versions 1 and 3 (both generation a) built different elements")
	}
	els3 := append(slices.Clone(pw3.Elements), (&HostPart{Iface: pw.Iface, Version: 3, Elements: pn.Elements}).Superseded()...)
	check("generation a live again, b superseded", wide.Allows, els3)
	none := slices.DeleteFunc(slices.Clone(els3), func(e Element) bool { return e.Set == SetGenerationA })
	check("no generation", func(netip.Addr, byte, uint16) bool { return false }, none)
	if _, err := BuildHost(narrow, 0); err == nil {
		t.Error("BuildHost accepted version 0")
	}
}

// TestDisjointBoxes checks the decomposition interval sets need against
// brute force: the union is the same and no two boxes overlap.
func TestDisjointBoxes(t *testing.T) {
	r := rand.New(rand.NewPCG(rand.Uint64(), 4))
	for i := 0; i < 500; i++ {
		var in []box
		for j := 0; j < 1+r.IntN(6); j++ {
			a := uint32(r.IntN(40))
			p := uint32(r.IntN(40))
			in = append(in, box{span{a, a + uint32(r.IntN(15))}, span{p, p + uint32(r.IntN(15))}})
		}
		out := disjointBoxes(in)
		for a := uint32(0); a < 60; a++ {
			for p := uint32(0); p < 60; p++ {
				inIn, inOut := 0, 0
				for _, b := range in {
					if b.addr.lo <= a && a <= b.addr.hi && b.port.lo <= p && p <= b.port.hi {
						inIn = 1
					}
				}
				for _, b := range out {
					if b.addr.lo <= a && a <= b.addr.hi && b.port.lo <= p && p <= b.port.hi {
						inOut++
					}
				}
				if inIn != inOut {
					t.Fatalf("boxes %v -> %v: point (%d,%d) covered %d times, want %d", in, out, a, p, inOut, inIn)
				}
			}
		}
	}
	full := disjointBoxes([]box{{span{0, ^uint32(0)}, span{0, 65535}}})
	if len(full) != 1 || full[0].addr.hi != ^uint32(0) {
		t.Fatalf("whole space: %v", full)
	}
}

func TestBuildRejectsBadTargets(t *testing.T) {
	for _, tg := range []Target{
		{},
		{SandboxAddr: netip.MustParseAddr("::1"), HostAddr: netip.MustParseAddr("10.0.0.1"), HostIf: "a"},
		{SandboxAddr: netip.MustParseAddr("10.0.0.2"), HostAddr: netip.MustParseAddr("10.0.0.1"), HostIf: "sixteen-chars-xx"},
	} {
		if _, err := BuildSandbox(&tg); err == nil {
			t.Errorf("BuildSandbox accepted %+v", tg)
		}
		if _, err := BuildHost(&tg, 1); err == nil {
			t.Errorf("BuildHost accepted %+v", tg)
		}
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
		if len(inner.Chains) != 4 || inner.Chains[2].Name != "forward" || inner.Chains[3].Type != nftables.ChainTypeNAT {
			t.Fatalf("guest ruleset chains: %+v", inner.Chains)
		}
		fwd := inner.Chains[2].Rules
		verdict := func(p packet) string {
			if v := eval(t, fwd, p, inner.Elements...); v != "" {
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
