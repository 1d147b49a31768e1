package firewall

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The host side of the firewall is one fixed ruleset in the shared table
// inet "ironclaw": chains whose rules are the same whatever sandboxes
// exist, and named sets and maps that hold every sandbox's part as
// elements. Adding, changing or removing a sandbox adds and deletes
// elements of plain sets and maps only; it never adds a chain, a rule or a
// jump (nor a verdict map element, which would make the kernel re-validate
// the table), and the cost of a change does not grow with the number of
// sandboxes.
//
// Every element's key starts with the interface name of the host side of
// the sandbox's link, so a sandbox's elements are exactly the elements
// whose key has its interface name as prefix.
//
// Deleting an element of an interval set costs the kernel milliseconds
// once the set is large (about 7 ms with 500 sandboxes on 6.18), while
// adding one costs microseconds. So the policy's elements (the allow sets)
// come in two generations, a and b, each with its own allow sets, and each
// allow rule of the forward chain looks up one generation's set for links
// in that generation's set (SetGenerationA, SetGenerationB). A policy
// change writes the generation that is not live, and moves the link from
// the live generation's set to the other's, in one transaction, without
// deleting any interval element of the live generation. The superseded
// generation's elements can no longer match anything; PruneHost deletes
// them later, off the sandbox's path, and RemoveHost deletes everything.
// A change that finds the other generation not yet pruned deletes the
// link's stale elements there in the same transaction (correct, only
// slower). A link in neither generation set matches no allow rule and
// meets the default deny.
//
// Generations are the parity of a policy version (HostPart.Version), which
// callers count up by one per change. Every lookup key is a plain
// concatenation of packet fields ("iifname . ip daddr [. meta l4proto .
// th dport]"), which nft (1.0.6 included) can list and parse back: an
// earlier layout put a map lookup's result inside the concatenation, which
// nft 1.0.6 could not print (see oldlayout.go).

// Names of the host table's sets and maps.
const (
	// SetLinks holds the host side of every sandbox link: the base
	// chains handle traffic on these interfaces and leave all other
	// traffic alone.
	SetLinks = "links"
	// SetSources holds "link . address": the only source address
	// forwarded from a link (anti-spoofing), and the only destination
	// replies are forwarded to. A link without its source lets nothing
	// through at all.
	SetSources = "sources"
	// SetServices holds "link . host address . protocol . port": the
	// egress DNS stub and proxy a sandbox may reach on the host.
	SetServices = "services"
	// MapRedirect maps "link . host address . protocol . standard port"
	// to the port its egress service listens on. (Not "redirect", which
	// nft's parser takes for its keyword: a listing of the table would
	// not load again.)
	MapRedirect = "redirects"
	// SetDenyLocal holds "link . address range": the first deny tier (the
	// host's own addresses and the sandbox pool), which a policy change
	// does not change.
	SetDenyLocal = "deny_local"
	// SetGenerationA and SetGenerationB hold the links whose live policy
	// elements are generation a's or b's: the forward chain's allow rules
	// of a generation apply to the links in its set. A link is in one of
	// them at most.
	SetGenerationA = "generation_a"
	SetGenerationB = "generation_b"
	// The allow sets, one pair per deny tier (see tierRules) and
	// generation: rules lying inside the first tier, inside
	// InternalRanges, and the rest. The plain set allows every protocol
	// to "link . address range"; the _ports set allows "link . address
	// range . protocol . port range".
	SetAllowLocalA         = "allow_local_a"
	SetAllowLocalPortsA    = "allow_local_ports_a"
	SetAllowInternalA      = "allow_internal_a"
	SetAllowInternalPortsA = "allow_internal_ports_a"
	SetAllowPublicA        = "allow_public_a"
	SetAllowPublicPortsA   = "allow_public_ports_a"
	SetAllowLocalB         = "allow_local_b"
	SetAllowLocalPortsB    = "allow_local_ports_b"
	SetAllowInternalB      = "allow_internal_b"
	SetAllowInternalPortsB = "allow_internal_ports_b"
	SetAllowPublicB        = "allow_public_b"
	SetAllowPublicPortsB   = "allow_public_ports_b"
)

// SetDenyInternal holds InternalRanges as "address range . any protocol":
// the second deny tier, the same for every link, so one lookup replaces a
// rule per range. Its elements are the table's (EnsureHostBase writes and
// checks them), not any sandbox's.
const SetDenyInternal = "deny_internal"

// SetUplinks is the host table's set of guarded uplinks: interfaces on
// which IPv4 forwarding is on only because sandboxes need it (see
// BuildHostBase). Packets forwarded from them go to sandbox links only.
const SetUplinks = "uplinks"

// setDef describes one host set: its key fields and, for a map, the type
// of its values.
type setDef struct {
	name     string
	fields   []nftables.SetDatatype
	interval bool
	data     *nftables.SetDatatype
	// gen is 1 + the generation of an allow set's elements (0: not an
	// allow set).
	gen int
}

var (
	fIf    = nftables.TypeIFName
	fAddr  = nftables.TypeIPAddr
	fProto = nftables.TypeInetProto
	fPort  = nftables.TypeInetService
	fVer   = nftables.TypeMark
)

// generation names the sets of one generation.
type generation struct {
	set   string
	tiers [3]tier
}

var generations = [2]generation{
	{SetGenerationA, [3]tier{
		{SetAllowLocalA, SetAllowLocalPortsA},
		{SetAllowInternalA, SetAllowInternalPortsA},
		{SetAllowPublicA, SetAllowPublicPortsA},
	}},
	{SetGenerationB, [3]tier{
		{SetAllowLocalB, SetAllowLocalPortsB},
		{SetAllowInternalB, SetAllowInternalPortsB},
		{SetAllowPublicB, SetAllowPublicPortsB},
	}},
}

// GenerationOf returns the generation (0: a, 1: b) of the policy version
// v: its parity, so that consecutive versions alternate.
func GenerationOf(v uint32) int { return int(1 - v%2) }

// hostSets are the sets of the host table, uplinks included. The order is
// the order they are dumped in and rendered.
var hostSets = func() []setDef {
	defs := []setDef{
		{name: SetLinks, fields: []nftables.SetDatatype{fIf}},
		{name: SetSources, fields: []nftables.SetDatatype{fIf, fAddr}},
		{name: SetServices, fields: []nftables.SetDatatype{fIf, fAddr, fProto, fPort}},
		{name: MapRedirect, fields: []nftables.SetDatatype{fIf, fAddr, fProto, fPort}, data: &fPort},
		{name: SetDenyLocal, fields: []nftables.SetDatatype{fIf, fAddr}, interval: true},
		{name: SetGenerationA, fields: []nftables.SetDatatype{fIf}},
		{name: SetGenerationB, fields: []nftables.SetDatatype{fIf}},
	}
	for g, gd := range generations {
		for _, tr := range gd.tiers {
			defs = append(defs,
				setDef{name: tr.any, fields: []nftables.SetDatatype{fIf, fAddr}, interval: true, gen: g + 1},
				setDef{name: tr.ports, fields: []nftables.SetDatatype{fIf, fAddr, fProto, fPort}, interval: true, gen: g + 1})
		}
	}
	return append(defs,
		setDef{name: SetDenyInternal, fields: []nftables.SetDatatype{fAddr, fProto}, interval: true},
		setDef{name: SetUplinks, fields: []nftables.SetDatatype{fIf}})
}()

// sandboxSets are the sets that hold sandboxes' elements (all but
// deny_internal and uplinks). Appending to the result copies.
func sandboxSets() []setDef { n := len(hostSets) - 2; return hostSets[:n:n] }

// hostBaseElements are the elements of SetDenyInternal.
func hostBaseElements() []Element {
	var spans []span
	for _, p := range InternalRanges {
		spans = append(spans, addrSpan(p))
	}
	var out []Element
	for _, s := range mergeSpans(spans) {
		out = append(out, Element{Set: SetDenyInternal, Key: cat(kAddr(u32Addr(s.lo)), kProto(0)), KeyEnd: cat(kAddr(u32Addr(s.hi)), kProto(255))})
	}
	return out
}

func setDefOf(name string) (setDef, bool) {
	for _, defs := range [][]setDef{hostSets, sandboxTableSets, oldVersionedSets} {
		for _, d := range defs {
			if d.name == name {
				return d, true
			}
		}
	}
	return setDef{}, false
}

func (d setDef) nft(t *nftables.Table) *nftables.Set {
	s := &nftables.Set{Table: t, Name: d.name, Interval: d.interval}
	if len(d.fields) == 1 {
		// Interface names are strings, which nft keeps in host byte order.
		s.KeyType, s.KeyByteOrder = d.fields[0], binaryutil.NativeEndian
	} else {
		s.KeyType, s.Concatenation = nftables.MustConcatSetType(d.fields...), true
	}
	if d.data != nil {
		s.IsMap, s.DataType = true, *d.data
	}
	return s
}

// tier names the allow sets of one deny tier.
type tier struct{ any, ports string }

// Registers. Concatenations are built in 32-bit words: the interface name
// takes four (NFT_REG_1, words 4-7), then one word each, in this order, for
// the address (word 8, which the kernel names NFT_REG_2), protocol and
// port (NFT_REG32_05 and _06), as nft lays them out. The numbers are the
// ones the kernel echoes, so rules read back compare equal.
const (
	regIf  = 1
	regW8  = 2
	regW9  = 13
	regW10 = 14
)

// Element is one element of a host set or map, as built or read back.
type Element struct {
	Set    string
	Key    []byte
	KeyEnd []byte // interval sets: the end of the range
	Val    []byte // maps: the value
}

func (e Element) id() string {
	return e.Set + "/" + string(e.Key) + "/" + string(e.KeyEnd) + "/" + string(e.Val)
}

// String renders e in nft syntax: "set: key" or "map: key : value".
func (e Element) String() string {
	d, ok := setDefOf(e.Set)
	if !ok {
		return fmt.Sprintf("%s: %x", e.Set, e.Key)
	}
	var parts []string
	off := 0
	for _, f := range d.fields {
		n := int(f.Bytes)
		if f != fIf {
			n = (n + 3) &^ 3
		}
		if off+n > len(e.Key) {
			return fmt.Sprintf("%s: %x (short key)", e.Set, e.Key)
		}
		lo := e.Key[off : off+int(f.Bytes)]
		hi := lo
		if len(e.KeyEnd) >= off+int(f.Bytes) {
			hi = e.KeyEnd[off : off+int(f.Bytes)]
		}
		s := fieldString(f, lo)
		if !bytes.Equal(lo, hi) {
			s = fieldRange(f, lo, hi)
		}
		parts = append(parts, s)
		off += n
	}
	s := e.Set + ": " + strings.Join(parts, " . ")
	if d.data != nil && len(e.Val) >= 2 {
		s += " : " + fieldString(*d.data, e.Val)
	}
	return s
}

func fieldString(f nftables.SetDatatype, b []byte) string {
	switch f {
	case fIf:
		return fmt.Sprintf("%q", strings.TrimRight(string(b), "\x00"))
	case fAddr:
		return netip.AddrFrom4([4]byte(b[:4])).String()
	case fProto:
		switch b[0] {
		case unix.IPPROTO_TCP:
			return "tcp"
		case unix.IPPROTO_UDP:
			return "udp"
		}
		return fmt.Sprint(b[0])
	case fPort:
		return fmt.Sprint(binary.BigEndian.Uint16(b))
	case fVer:
		return fmt.Sprintf("v%d", binary.BigEndian.Uint32(b))
	}
	return fmt.Sprintf("%x", b)
}

func fieldRange(f nftables.SetDatatype, lo, hi []byte) string {
	if f == fProto && lo[0] == 0 && hi[0] == 255 {
		return "any"
	}
	if f == fAddr {
		a, b := netip.AddrFrom4([4]byte(lo[:4])), netip.AddrFrom4([4]byte(hi[:4]))
		if p, ok := rangePrefix(a, b); ok {
			return p.String()
		}
	}
	return fieldString(f, lo) + "-" + fieldString(f, hi)
}

// rangePrefix returns the prefix that is exactly lo-hi, if there is one.
func rangePrefix(lo, hi netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= 32; bits++ {
		p := netip.PrefixFrom(lo, bits)
		if p.Masked().Addr() == lo && lastAddr(p) == hi {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// HostPart is one sandbox's part of the host table: elements only, each
// keyed by the sandbox's link.
type HostPart struct {
	// Iface is the host side of the sandbox's link.
	Iface string
	// Version is the version of the policy elements (0: none), whose
	// parity is their generation (GenerationOf). A part read back from
	// the kernel (ReadHostPart) cannot know the version: it has 1 when
	// the link is in generation a's set, 2 when in b's, and 0 when in
	// neither or both.
	Version  uint32
	Elements []Element
}

// elementGeneration returns the generation of an allow set's element, and
// false for an element of another set.
func elementGeneration(e Element) (int, bool) {
	d, ok := setDefOf(e.Set)
	if !ok || d.gen == 0 {
		return 0, false
	}
	return d.gen - 1, true
}

// Live returns p without the allow elements of the generation that is not
// p's (which can no longer match, see SetGenerationA); for Version 0,
// without any allow element. The generation sets' elements are kept, so a
// link found in both stays visible.
func (p HostPart) Live() HostPart {
	out := HostPart{Iface: p.Iface, Version: p.Version}
	for _, e := range p.Elements {
		if g, ok := elementGeneration(e); ok && (p.Version == 0 || g != GenerationOf(p.Version)) {
			continue
		}
		out.Elements = append(out.Elements, e)
	}
	return out
}

// Superseded returns p's allow elements of the generation that is not
// p's: those PruneHost deletes.
func (p HostPart) Superseded() []Element {
	var out []Element
	for _, e := range p.Elements {
		if g, ok := elementGeneration(e); ok && (p.Version == 0 || g != GenerationOf(p.Version)) {
			out = append(out, e)
		}
	}
	return out
}

// Key encodings, as nft lays out concatenations: each field padded to a
// multiple of 4 bytes; interface names NUL-padded to IFNAMSIZ.
func kAddr(a netip.Addr) []byte { b := a.As4(); return b[:] }
func kProto(p byte) []byte      { return []byte{p, 0, 0, 0} }
func kPort(p uint16) []byte     { return []byte{byte(p >> 8), byte(p), 0, 0} }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | ^uint32(0)>>p.Bits()
	if p.Bits() == 0 {
		v = ^uint32(0)
	}
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
}

// span is an inclusive range of uint32 values (addresses, or ports).
type span struct{ lo, hi uint32 }

func addrSpan(p netip.Prefix) span {
	lo, hi := p.Masked().Addr().As4(), lastAddr(p).As4()
	return span{binary.BigEndian.Uint32(lo[:]), binary.BigEndian.Uint32(hi[:])}
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
}

// mergeSpans returns the union of s as sorted, disjoint, non-adjacent spans.
func mergeSpans(s []span) []span {
	s = slices.Clone(s)
	slices.SortFunc(s, func(a, b span) int {
		if a.lo != b.lo {
			if a.lo < b.lo {
				return -1
			}
			return 1
		}
		return 0
	})
	var out []span
	for _, x := range s {
		if n := len(out); n > 0 && uint64(x.lo) <= uint64(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, x.hi)
			continue
		}
		out = append(out, x)
	}
	return out
}

// box is an address span crossed with a port span.
type box struct{ addr, port span }

// disjointBoxes returns boxes whose union is the union of in and no two of
// which overlap: interval sets hold no overlapping elements (nft's pipapo
// backend refuses them).
func disjointBoxes(in []box) []box {
	if len(in) == 0 {
		return nil
	}
	// Cut the address axis at every box edge; within one piece the set of
	// covering boxes is constant.
	var cuts []uint64
	for _, b := range in {
		cuts = append(cuts, uint64(b.addr.lo), uint64(b.addr.hi)+1)
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	var out []box
	var cur []span // ports of the previous piece
	var start uint32
	open := false
	flush := func(end uint32) {
		for _, p := range cur {
			out = append(out, box{span{start, end}, p})
		}
	}
	for i := 0; i+1 < len(cuts); i++ {
		lo := uint32(cuts[i])
		var ports []span
		for _, b := range in {
			if b.addr.lo <= lo && b.addr.hi >= lo {
				ports = append(ports, b.port)
			}
		}
		ports = mergeSpans(ports)
		if open && slices.Equal(ports, cur) {
			continue // extends the previous piece
		}
		if open {
			flush(lo - 1)
		}
		cur, start, open = ports, lo, len(ports) > 0
	}
	if open {
		flush(uint32(cuts[len(cuts)-1] - 1))
	}
	return out
}

// BuildHost returns the sandbox's part of the shared host table: its link,
// its source address, its egress services and their redirects, its first
// deny tier, and, as elements of the generation of the given version (not
// 0), its allow rules and its entry in that generation's set, all as
// elements of the fixed sets.
func BuildHost(t *Target, version uint32) (HostPart, error) {
	if err := t.Validate(); err != nil {
		return HostPart{}, err
	}
	if version == 0 {
		return HostPart{}, fmt.Errorf("firewall target %s: policy version 0", t.HostIf)
	}
	ifb := ifnameBytes(t.HostIf)
	gen := generations[GenerationOf(version)]
	part := HostPart{Iface: t.HostIf, Version: version}
	add := func(set string, key, end, val []byte) {
		part.Elements = append(part.Elements, Element{Set: set, Key: key, KeyEnd: end, Val: val})
	}
	add(SetLinks, ifb, nil, nil)
	add(SetSources, cat(ifb, kAddr(t.SandboxAddr)), nil, nil)
	add(gen.set, ifb, nil, nil)
	for _, s := range services(t) {
		add(SetServices, cat(ifb, kAddr(t.HostAddr), kProto(s.proto), kPort(s.port)), nil, nil)
		add(MapRedirect, cat(ifb, kAddr(t.HostAddr), kProto(s.proto), kPort(s.std)), nil, binary.BigEndian.AppendUint16(nil, s.port))
	}
	var deny []span
	for _, p := range t.Deny {
		if p.Addr().Is4() {
			deny = append(deny, addrSpan(p))
		}
	}
	for _, s := range mergeSpans(deny) {
		add(SetDenyLocal, cat(ifb, kAddr(u32Addr(s.lo))), cat(ifb, kAddr(u32Addr(s.hi))), nil)
	}
	for i, rules := range tierRules(t) {
		any, boxes := tierSpans(rules)
		for _, s := range any {
			add(gen.tiers[i].any, cat(ifb, kAddr(u32Addr(s.lo))), cat(ifb, kAddr(u32Addr(s.hi))), nil)
		}
		for _, pb := range boxes {
			add(gen.tiers[i].ports,
				cat(ifb, kAddr(u32Addr(pb.addr.lo)), kProto(pb.proto), kPort(uint16(pb.port.lo))),
				cat(ifb, kAddr(u32Addr(pb.addr.hi)), kProto(pb.proto), kPort(uint16(pb.port.hi))), nil)
		}
	}
	sortElements(part.Elements)
	return part, nil
}

// protoBox is a box of one protocol.
type protoBox struct {
	proto byte
	box
}

// tierSpans returns the address ranges a tier's rules allow to every
// protocol (merged), and the disjoint address and port boxes they allow
// per protocol (TCP, then UDP).
func tierSpans(rules []CIDRRule) ([]span, []protoBox) {
	var any []span
	boxes := map[byte][]box{}
	for _, r := range rules {
		a := addrSpan(r.Prefix)
		if r.Proto == ProtoAny && r.PortLo == 0 {
			any = append(any, a)
			continue
		}
		ports := span{0, 65535}
		if r.PortLo != 0 {
			ports = span{uint32(r.PortLo), uint32(r.PortHi)}
		}
		if r.Proto != ProtoUDP {
			boxes[unix.IPPROTO_TCP] = append(boxes[unix.IPPROTO_TCP], box{a, ports})
		}
		if r.Proto != ProtoTCP {
			boxes[unix.IPPROTO_UDP] = append(boxes[unix.IPPROTO_UDP], box{a, ports})
		}
	}
	var out []protoBox
	for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		for _, b := range disjointBoxes(boxes[proto]) {
			out = append(out, protoBox{proto, b})
		}
	}
	return mergeSpans(any), out
}

func sortElements(els []Element) {
	order := map[string]int{}
	for i, d := range append(slices.Clone(hostSets), sandboxTableSets...) {
		order[d.name] = i
	}
	slices.SortFunc(els, func(a, b Element) int {
		if a.Set != b.Set {
			return order[a.Set] - order[b.Set]
		}
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return bytes.Compare(a.KeyEnd, b.KeyEnd)
	})
}

// tierRules splits the policy's CIDR rules into three tiers: rules inside
// the first deny tier (t.Deny), rules inside InternalRanges, and the rest.
// Each rule belongs to the first tier it lies inside. Both rulesets allow
// a tier's rules and then deny the tier, tier by tier, and allow the
// rest last, so a rule "names a range explicitly" when its network lies
// inside it.
func tierRules(t *Target) [3][]CIDRRule {
	var out [3][]CIDRRule
	for _, r := range t.Policy.CIDRs {
		switch {
		case insideAny(r.Prefix, t.Deny):
			out[0] = append(out[0], r)
		case insideAny(r.Prefix, InternalRanges):
			out[1] = append(out[1], r)
		default:
			out[2] = append(out[2], r)
		}
	}
	return out
}

type service struct {
	proto     byte
	std, port uint16
}

func services(t *Target) []service {
	var out []service
	for _, s := range []service{
		{unix.IPPROTO_UDP, 53, t.Services.DNS},
		{unix.IPPROTO_TCP, 53, t.Services.DNS},
		{unix.IPPROTO_TCP, 80, t.Services.HTTP},
		{unix.IPPROTO_TCP, 443, t.Services.HTTPS},
	} {
		if s.port != 0 {
			out = append(out, s)
		}
	}
	return out
}

// BuildHostBase returns the base chains of the shared host table. Their
// policy is accept and every rule first matches a sandbox link (through
// the sets), so traffic that is no sandbox's is left to the host's other
// rules. A link's forwarded packets that are no replies meet the allow
// rules and denials tier by tier (see tierRules), each allow rule once per
// generation and bound to the links of that generation, then the default
// deny; a link in neither generation set is allowed nothing. One rule is
// not a sandbox's: IPv4 forwarding is decided by the input interface, so
// turning it on for an uplink (for replies to sandboxes) would make the
// host route anything arriving there to any interface. A packet from an
// uplink in SetUplinks that was not accepted as a reply to a sandbox is
// dropped.
func BuildHostBase() []Chain {
	fromLink := lookup(expr.MetaKeyIIFNAME, SetLinks)
	fwd := []Rule{
		rule("from sandboxes: IPv4 only", fromLink, nfproto(expr.CmpOpNeq, unix.NFPROTO_IPV4), drop()),
		rule("from sandboxes: own source only", fromLink, ipv4(), ifAddrLookup(expr.MetaKeyIIFNAME, 12, SetSources, true), drop()),
		rule("from sandboxes: replies", fromLink, ctEstablished(), accept()),
	}
	for i := range generations[0].tiers {
		for _, g := range generations {
			tr := g.tiers[i]
			fwd = append(fwd,
				rule("allow: "+tr.ports, ipv4(), lookup(expr.MetaKeyIIFNAME, g.set), ifAddrProtoPortLookup(tr.ports), accept()),
				rule("allow: "+tr.any, ipv4(), lookup(expr.MetaKeyIIFNAME, g.set), ifAddrLookup(expr.MetaKeyIIFNAME, 16, tr.any, false), accept()),
			)
		}
		switch i {
		case 0:
			fwd = append(fwd, rule("deny: "+SetDenyLocal, ipv4(), ifAddrLookup(expr.MetaKeyIIFNAME, 16, SetDenyLocal, false), drop()))
		case 1:
			fwd = append(fwd, rule("deny: "+SetDenyInternal, fromLink, ipv4(), outLookup(SetDenyInternal, false), drop()))
		}
	}
	fwd = append(fwd,
		rule("from sandboxes: default deny", fromLink, drop()),
		rule("to sandboxes: replies to their own address", ipv4(), ifAddrLookup(expr.MetaKeyOIFNAME, 16, SetSources, false), ctEstablished(), accept()),
		rule("to sandboxes: default deny", lookup(expr.MetaKeyOIFNAME, SetLinks), drop()),
		rule("from guarded uplinks, not to a sandbox", lookup(expr.MetaKeyIIFNAME, SetUplinks), drop()),
	)
	in := []Rule{
		rule("from sandboxes: IPv4 only", fromLink, nfproto(expr.CmpOpNeq, unix.NFPROTO_IPV4), drop()),
		rule("from sandboxes: own source only", fromLink, ipv4(), ifAddrLookup(expr.MetaKeyIIFNAME, 12, SetSources, true), drop()),
		rule("from sandboxes: replies", fromLink, ctEstablished(), accept()),
		rule("from sandboxes: egress services", ipv4(), ifAddrProtoPortLookup(SetServices), accept()),
		rule("from sandboxes: default deny", fromLink, drop()),
	}
	// One rule per protocol: nft parses a redirect to a port only after
	// a match of the protocol, so a listing of one rule for both would
	// not load again.
	pre := []Rule{
		rule("from sandboxes: egress services (tcp)", ipv4(), l4proto(unix.IPPROTO_TCP), ifAddrProtoPort(), redirectMap(MapRedirect)),
		rule("from sandboxes: egress services (udp)", ipv4(), l4proto(unix.IPPROTO_UDP), ifAddrProtoPort(), redirectMap(MapRedirect)),
	}
	post := []Rule{rule("from sandboxes: NAT to the uplink", ipv4(), ifAddrLookup(expr.MetaKeyIIFNAME, 12, SetSources, false), masquerade())}
	return []Chain{
		{Name: "forward", Type: nftables.ChainTypeFilter, Hook: hookRef(*nftables.ChainHookForward), Priority: prioRef(prioFilter), Policy: &policyAccept, Rules: fwd},
		{Name: "input", Type: nftables.ChainTypeFilter, Hook: hookRef(*nftables.ChainHookInput), Priority: prioRef(prioFilter), Policy: &policyAccept, Rules: in},
		{Name: "prerouting", Type: nftables.ChainTypeNAT, Hook: hookRef(*nftables.ChainHookPrerouting), Priority: prioRef(prioDSTNAT), Policy: &policyAccept, Rules: pre},
		{Name: "postrouting", Type: nftables.ChainTypeNAT, Hook: hookRef(*nftables.ChainHookPostrouting), Priority: prioRef(prioSRCNAT), Policy: &policyAccept, Rules: post},
	}
}

func ipv4() []expr.Any { return nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4) }

// ifAddrLookup matches "iifname|oifname . ip saddr|daddr" (offset 12 or
// 16) against set, or its absence when invert.
func ifAddrLookup(key expr.MetaKey, offset uint32, set string, invert bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: regIf},
		&expr.Payload{DestRegister: regW8, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Lookup{SourceRegister: regIf, SetName: set, Invert: invert},
	}
}

// ifAddrProtoPort loads "iifname . ip daddr . meta l4proto . th dport".
func ifAddrProtoPort() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regIf},
		&expr.Payload{DestRegister: regW8, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regW9},
		&expr.Payload{DestRegister: regW10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

func ifAddrProtoPortLookup(set string) []expr.Any {
	return append(ifAddrProtoPort(), &expr.Lookup{SourceRegister: regIf, SetName: set})
}

// redirectMap redirects to the port the map gives for the loaded key.
func redirectMap(m string) []expr.Any {
	return []expr.Any{
		&expr.Lookup{SourceRegister: regIf, SetName: m, DestRegister: 1, IsDestRegSet: true},
		// Flags 2 is NF_NAT_RANGE_PROTO_SPECIFIED, as nft emits (and the kernel echoes).
		&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: 2},
	}
}

// lookup matches when the interface name key is in set.
func lookup(key expr.MetaKey, set string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	}
}
