package firewall

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// The table inside a sandbox's namespace has fixed chains, whose rules
// depend only on the addresses of the sandbox's link (and of a guest), and
// named sets that hold the policy: a policy change adds and deletes
// elements of these sets and leaves the chains alone, so it is one small
// transaction whatever the policy, and the kernel never rebuilds a chain
// for it. The sets hold this sandbox's elements only (the table is its
// own), so they stay small and deleting an element costs microseconds;
// no versions are needed, unlike the host's (see host.go).
//
// Interval sets need two fields at least to use the kernel's pipapo
// backend, whose elements are one range each (a single-field interval
// set is an rbtree of start and end elements): the sets keyed by address
// alone carry the protocol as a second field, 0-255 for "any".

// Names of the sandbox table's sets.
const (
	// SetOutServices holds "address . protocol . port": the egress DNS
	// stub and proxy on the host side of the link.
	SetOutServices = "out_services"
	// SetOutDenyLocal holds "address range . protocol range": the first
	// deny tier (the host's own addresses, the sandbox pool).
	SetOutDenyLocal = "out_deny_local"
	// The allow sets, per deny tier as on the host: "address range .
	// protocol range" (every protocol) and "address range . protocol .
	// port range".
	SetOutAllowLocal         = "out_allow_local"
	SetOutAllowLocalPorts    = "out_allow_local_ports"
	SetOutAllowInternal      = "out_allow_internal"
	SetOutAllowInternalPorts = "out_allow_internal_ports"
	SetOutAllowPublic        = "out_allow_public"
	SetOutAllowPublicPorts   = "out_allow_public_ports"
)

// sandboxTableSets are the sets of the sandbox table, in the order they
// are created, dumped and rendered.
var sandboxTableSets = []setDef{
	{name: SetOutServices, fields: []nftables.SetDatatype{fAddr, fProto, fPort}},
	{name: SetOutDenyLocal, fields: []nftables.SetDatatype{fAddr, fProto}, interval: true},
	{name: SetOutAllowLocal, fields: []nftables.SetDatatype{fAddr, fProto}, interval: true},
	{name: SetOutAllowLocalPorts, fields: []nftables.SetDatatype{fAddr, fProto, fPort}, interval: true},
	{name: SetOutAllowInternal, fields: []nftables.SetDatatype{fAddr, fProto}, interval: true},
	{name: SetOutAllowInternalPorts, fields: []nftables.SetDatatype{fAddr, fProto, fPort}, interval: true},
	{name: SetOutAllowPublic, fields: []nftables.SetDatatype{fAddr, fProto}, interval: true},
	{name: SetOutAllowPublicPorts, fields: []nftables.SetDatatype{fAddr, fProto, fPort}, interval: true},
}

var outTiers = []tier{
	{SetOutAllowLocal, SetOutAllowLocalPorts},
	{SetOutAllowInternal, SetOutAllowInternalPorts},
	{SetOutAllowPublic, SetOutAllowPublicPorts},
}

// Registers of the sandbox table's concatenations: the address in
// NFT_REG_1 (word 4), the protocol and port in the next words
// (NFT_REG32_01 and _02), as the kernel echoes them.
const (
	regOutProto = 9
	regOutPort  = 10
)

// outLookup matches "ip daddr . meta l4proto [. th dport]" against set.
// Callers check nfproto first.
func outLookup(set string, ports bool) []expr.Any {
	out := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regOutProto},
	}
	if ports {
		out = append(out, &expr.Payload{DestRegister: regOutPort, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	}
	return append(out, &expr.Lookup{SourceRegister: 1, SetName: set})
}

// filterRules are the rules of the output chain (and a guest's forward
// chain) after its address checks: the egress services, then, per deny
// tier, the tier's allow sets and the tier's denial, then the public allow
// sets (see tierRules for the tiers).
func filterRules() []Rule {
	rules := []Rule{rule("egress services", outLookup(SetOutServices, true), accept())}
	for i, tr := range outTiers {
		rules = append(rules,
			rule("allow: "+tr.ports, outLookup(tr.ports, true), accept()),
			rule("allow: "+tr.any, outLookup(tr.any, false), accept()))
		switch i {
		case 0:
			rules = append(rules, rule("deny: "+SetOutDenyLocal, outLookup(SetOutDenyLocal, false), drop()))
		case 1:
			for _, p := range InternalRanges {
				rules = append(rules, rule("deny "+p.String(), addr(16, expr.CmpOpEq, p), drop()))
			}
		}
	}
	return rules
}

// sandboxElements returns the elements of the sandbox table's sets for t.
func sandboxElements(t *Target) []Element {
	var els []Element
	add := func(set string, key, end []byte) {
		els = append(els, Element{Set: set, Key: key, KeyEnd: end})
	}
	host := kAddr(t.HostAddr)
	for _, s := range services(t) {
		add(SetOutServices, cat(host, kProto(s.proto), kPort(s.std)), nil)
	}
	var deny []span
	for _, p := range t.Deny {
		if p.Addr().Is4() {
			deny = append(deny, addrSpan(p))
		}
	}
	anyProto := func(set string, s span) {
		add(set, cat(kAddr(u32Addr(s.lo)), kProto(0)), cat(kAddr(u32Addr(s.hi)), kProto(255)))
	}
	for _, s := range mergeSpans(deny) {
		anyProto(SetOutDenyLocal, s)
	}
	for i, rules := range tierRules(t) {
		any, boxes := tierSpans(rules)
		for _, s := range any {
			anyProto(outTiers[i].any, s)
		}
		for _, pb := range boxes {
			add(outTiers[i].ports,
				cat(kAddr(u32Addr(pb.addr.lo)), kProto(pb.proto), kPort(uint16(pb.port.lo))),
				cat(kAddr(u32Addr(pb.addr.hi)), kProto(pb.proto), kPort(uint16(pb.port.hi))))
		}
	}
	sortElements(els)
	return els
}
