package firewall

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the name of IronClaw's nftables table, both inside each
// sandbox's namespace and on the host. Other tools' tables are never touched.
const TableName = "ironclaw"

// InternalRanges are the IPv4 networks a sandbox can never reach unless a
// CIDR rule names them explicitly: "this network", RFC 1918, shared address
// space (100.64/10), loopback, link-local (169.254.169.254, the cloud
// metadata address, included), IETF protocol assignments (192.0.0.0/24:
// DS-Lite, NAT64 discovery, other in-network services), multicast and
// reserved/broadcast. IPv6 is dropped altogether (see ErrUnsupportedRule),
// ULA fc00::/7 included. A change here changes the rulesets built for the
// same target: bump Format with it.
var InternalRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// Format numbers the rulesets the builders make for a given target (the
// sandbox table's fixed chains, the host table's base chains and
// SetDenyInternal). It goes up whenever they change, so that what was
// applied by a build with another format is recognized as such (a pool
// slot prepared by an earlier build is destroyed, not claimed). Format 1:
// 192.0.0.0/24 in InternalRanges; records of earlier builds have none (0).
const Format = 1

// Services are the ports on the host side of the sandbox's link where the
// egress DNS stub and proxy listen. The sandbox reaches them at HostAddr on
// the standard ports (53, 80, 443); the host redirects them here. Zero
// means the service is not offered.
type Services struct {
	DNS   uint16 // UDP and TCP
	HTTP  uint16
	HTTPS uint16
}

// Target is the desired firewall state of one networked sandbox: plain data,
// everything the builders need.
type Target struct {
	// Policy is the allowlist.
	Policy Policy
	// SandboxAddr is the sandbox's only address: the only source forwarded.
	SandboxAddr netip.Addr
	// HostAddr is the host side of the link: the sandbox's gateway, DNS
	// server and proxy.
	HostAddr netip.Addr
	// HostIf is the name of the host side of the link.
	HostIf string
	// Deny are networks denied before any rule unless a rule lies inside
	// one of them: the host's own addresses and the pool of sandbox
	// addresses. InternalRanges are denied after them.
	Deny []netip.Prefix
	// Services are the listening ports of the DNS stub and proxy.
	Services Services
	// Guest, when set, is a micro-VM behind a tap inside the sandbox's
	// namespace, whose traffic the namespace forwards (see BuildSandbox).
	Guest *Guest
}

// Guest is a micro-VM's side of a sandbox namespace: its tap and address.
// The namespace forwards the guest's traffic to the link to the host under
// the same rules its own output gets, and masquerades it to SandboxAddr, so
// the host part of the firewall sees exactly what a jail would send.
type Guest struct {
	// If is the tap device inside the namespace.
	If string `json:"if"`
	// Addr is the guest's address on it.
	Addr netip.Addr `json:"addr"`
	// Uplink is the namespace's side of the link to the host.
	Uplink string `json:"uplink"`
}

// Validate checks t before anything is built from it.
func (t *Target) Validate() error {
	switch {
	case t.HostIf == "" || len(t.HostIf) > unix.IFNAMSIZ-1:
		return fmt.Errorf("firewall target: host interface %q must be 1 to 15 bytes", t.HostIf)
	case !t.SandboxAddr.Is4() || !t.HostAddr.Is4():
		return fmt.Errorf("firewall target %s: sandbox and host addresses must be IPv4, got %v and %v", t.HostIf, t.SandboxAddr, t.HostAddr)
	}
	if g := t.Guest; g != nil {
		switch {
		case g.If == "" || len(g.If) > unix.IFNAMSIZ-1 || g.Uplink == "" || len(g.Uplink) > unix.IFNAMSIZ-1 || g.If == g.Uplink:
			return fmt.Errorf("firewall target %s: guest interfaces %q and %q must be distinct and 1 to 15 bytes", t.HostIf, g.If, g.Uplink)
		case !g.Addr.Is4() || g.Addr == t.SandboxAddr || g.Addr == t.HostAddr:
			return fmt.Errorf("firewall target %s: guest address %v must be IPv4 and not the link's", t.HostIf, g.Addr)
		}
	}
	return nil
}

// Chain is one nftables chain with its rules, as built or as read back.
type Chain struct {
	Name     string
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	Priority *nftables.ChainPriority
	Policy   *nftables.ChainPolicy
	Rules    []Rule
}

// Base reports whether c is a base chain (attached to a hook).
func (c *Chain) Base() bool { return c.Hook != nil }

// Rule is one rule: its expressions and a human-readable comment, which is
// stored in the rule's user data (nft shows it as a comment).
type Rule struct {
	Comment string
	Exprs   []expr.Any
}

var (
	policyDrop   = nftables.ChainPolicyDrop
	policyAccept = nftables.ChainPolicyAccept
)

func hookRef(h nftables.ChainHook) *nftables.ChainHook { return &h }
func prioRef(p int32) *nftables.ChainPriority          { v := nftables.ChainPriority(p); return &v }

// Hook priorities. Filtering runs at the standard filter priority; the
// relative order of IronClaw's and other tables' chains does not matter for
// safety, since a drop in any base chain is final.
const (
	prioFilter = 0
	prioDSTNAT = -100
	prioSRCNAT = 100
)

// SandboxRuleset is the table inside a sandbox's namespace: its chains,
// whose rules depend only on the addresses of the link (and of a guest),
// and the elements of its sets, which hold the policy (see
// sandbox_sets.go).
type SandboxRuleset struct {
	Chains   []Chain
	Elements []Element
}

// BuildSandbox returns the table inside the sandbox's namespace. All three
// base chains have policy drop; output allows loopback, replies, and, from
// the sandbox's own address, the host's services and the policy's rules
// (through the sets).
func BuildSandbox(t *Target) (SandboxRuleset, error) {
	if err := t.Validate(); err != nil {
		return SandboxRuleset{}, err
	}
	out := Chain{Name: "output", Type: nftables.ChainTypeFilter, Hook: hookRef(*nftables.ChainHookOutput), Priority: prioRef(prioFilter), Policy: &policyDrop}
	out.Rules = append(out.Rules,
		rule("loopback", ifname(expr.MetaKeyOIFNAME, "lo"), accept()),
		rule("replies", ctEstablished(), accept()),
		rule("IPv4 only", nfproto(expr.CmpOpNeq, unix.NFPROTO_IPV4), drop()),
		rule("own source only", addr(12, expr.CmpOpNeq, netip.PrefixFrom(t.SandboxAddr, 32)), drop()),
	)
	out.Rules = append(out.Rules, filterRules()...)

	in := Chain{Name: "input", Type: nftables.ChainTypeFilter, Hook: hookRef(*nftables.ChainHookInput), Priority: prioRef(prioFilter), Policy: &policyDrop}
	in.Rules = append(in.Rules,
		rule("loopback", ifname(expr.MetaKeyIIFNAME, "lo"), accept()),
		rule("replies", ctEstablished(), accept()),
	)
	fwd := Chain{Name: "forward", Type: nftables.ChainTypeFilter, Hook: hookRef(*nftables.ChainHookForward), Priority: prioRef(prioFilter), Policy: &policyDrop}
	els := sandboxElements(t)
	if t.Guest == nil {
		return SandboxRuleset{Chains: []Chain{out, in, fwd}, Elements: els}, nil
	}
	// A guest's packets are forwarded, not sent: they get the output
	// chain's policy here, then the masquerade to the sandbox address.
	g := t.Guest
	fwd.Rules = append(fwd.Rules,
		rule("replies to the guest", ifname(expr.MetaKeyOIFNAME, g.If), ctEstablished(), accept()),
		rule("from the guest only", ifnameNeq(expr.MetaKeyIIFNAME, g.If), drop()),
		rule("to the host link only", ifnameNeq(expr.MetaKeyOIFNAME, g.Uplink), drop()),
		rule("IPv4 only", nfproto(expr.CmpOpNeq, unix.NFPROTO_IPV4), drop()),
		rule("guest source only", addr(12, expr.CmpOpNeq, netip.PrefixFrom(g.Addr, 32)), drop()),
	)
	fwd.Rules = append(fwd.Rules, filterRules()...)
	nat := Chain{Name: "postrouting", Type: nftables.ChainTypeNAT, Hook: hookRef(*nftables.ChainHookPostrouting), Priority: prioRef(prioSRCNAT), Policy: &policyAccept,
		Rules: []Rule{rule("guest as the sandbox address", ifname(expr.MetaKeyOIFNAME, g.Uplink), nfproto(expr.CmpOpEq, unix.NFPROTO_IPV4),
			addr(12, expr.CmpOpEq, netip.PrefixFrom(g.Addr, 32)), masquerade())}}
	return SandboxRuleset{Chains: []Chain{out, in, fwd, nat}, Elements: els}, nil
}

func insideAny(p netip.Prefix, tier []netip.Prefix) bool {
	for _, d := range tier {
		if d.Bits() <= p.Bits() && d.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// Expression helpers. Each returns the expressions nft itself would emit,
// dependencies included (inet tables need the nfproto/l4proto checks that
// nft adds implicitly).

func rule(comment string, parts ...[]expr.Any) Rule {
	r := Rule{Comment: comment}
	for _, p := range parts {
		r.Exprs = append(r.Exprs, p...)
	}
	return r
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }
func drop() []expr.Any   { return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}} }

func ifname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(name)},
	}
}

func ifnameNeq(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes(name)},
	}
}

// ifnameBytes is an interface name as nft compares it: NUL-padded to IFNAMSIZ.
func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func nfproto(op expr.CmpOp, proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{proto}},
	}
}

func l4proto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// addr matches the IPv4 source (offset 12) or destination (offset 16)
// address against p. Callers check nfproto first.
func addr(offset uint32, op expr.CmpOp, p netip.Prefix) []expr.Any {
	a := p.Addr().As4()
	if p.Bits() == 0 {
		// 0.0.0.0/0 matches every IPv4 packet; "not in /0" matches none.
		if op == expr.CmpOpEq {
			return nil
		}
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0xff}}}
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		mask := netip.PrefixFrom(netip.AddrFrom4([4]byte{0xff, 0xff, 0xff, 0xff}), p.Bits()).Masked().Addr().As4()
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: []byte{0, 0, 0, 0}})
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: a[:]})
}

func ports(lo, hi uint16) []expr.Any {
	if lo == 0 {
		return nil
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
	if lo == hi {
		return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(lo)})
	}
	return append(out,
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(lo)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(hi)},
	)
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func masquerade() []expr.Any { return []expr.Any{&expr.Masq{}} }

func commentData(c string) []byte {
	if c == "" {
		return nil
	}
	return userdata.AppendString(nil, userdata.TypeComment, c)
}

// Denied reports whether dst lies in a range a sandbox may not reach (the
// deny tier given, then InternalRanges) without a CIDR rule of p that names
// that range explicitly and contains dst. It is the Go model of the tiers
// the rulesets build (see tierRules), used by the egress proxy to refuse names that resolve
// to internal addresses.
func Denied(dst netip.Addr, deny []netip.Prefix, p Policy) bool {
	if !dst.Is4() {
		return true
	}
	for _, tier := range [][]netip.Prefix{deny, InternalRanges} {
		for _, r := range p.CIDRs {
			if insideAny(r.Prefix, tier) && r.Prefix.Contains(dst) {
				return false
			}
		}
		for _, d := range tier {
			if d.Contains(dst) {
				return true
			}
		}
	}
	return false
}

// Allows reports whether the ruleset built from t lets a new flow from the
// sandbox to dst (protocol proto, an IPPROTO_* number; port 0 for
// protocols without ports) through the forward path. It is the Go model of
// the forward chain, used to decide which tracked connections a policy
// update must cut; tests check it against the kernel.
func (t *Target) Allows(dst netip.Addr, proto byte, port uint16) bool {
	if !dst.Is4() {
		return false
	}
	match := func(r CIDRRule) bool {
		if !r.Prefix.Contains(dst) {
			return false
		}
		if r.Proto == ProtoAny && r.PortLo == 0 {
			return true
		}
		switch {
		case proto == unix.IPPROTO_TCP && r.Proto == ProtoUDP, proto == unix.IPPROTO_UDP && r.Proto == ProtoTCP:
			return false
		case proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP:
			return false
		}
		return r.PortLo == 0 || port >= r.PortLo && port <= r.PortHi
	}
	used := make([]bool, len(t.Policy.CIDRs))
	for _, tier := range [][]netip.Prefix{t.Deny, InternalRanges} {
		for i, r := range t.Policy.CIDRs {
			if !used[i] && insideAny(r.Prefix, tier) {
				used[i] = true
				if match(r) {
					return true
				}
			}
		}
		for _, d := range tier {
			if d.Contains(dst) {
				return false
			}
		}
	}
	for i, r := range t.Policy.CIDRs {
		if !used[i] && match(r) {
			return true
		}
	}
	return false
}

// IfnameMatchForBench returns the expressions of `iifname NAME counter`-like
// rule that matches nothing real: benchmarks use it to build a linear chain
// for comparison with the map dispatch.
func IfnameMatchForBench(name string) []expr.Any {
	return append(ifname(expr.MetaKeyIIFNAME, name), &expr.Verdict{Kind: expr.VerdictDrop})
}
