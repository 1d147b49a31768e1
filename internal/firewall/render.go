package firewall

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// String renders the rule's expressions in nft syntax (for the subset of
// expressions IronClaw builds; anything else is shown by type), followed by
// its comment. It shows what the kernel holds, not what the comment says.
func (r Rule) String() string {
	var parts []string
	ex := r.Exprs
	for i := 0; i < len(ex); i++ {
		switch e := ex[i].(type) {
		case *expr.Meta:
			if i+2 < len(ex) {
				if s, n := concatLookup(ex[i:]); n > 0 {
					parts = append(parts, s)
					i += n - 1
					continue
				}
			}
			if i+1 < len(ex) {
				if c, ok := ex[i+1].(*expr.Cmp); ok {
					parts = append(parts, metaCmp(e.Key, c))
					i++
					continue
				}
				if l, ok := ex[i+1].(*expr.Lookup); ok {
					parts = append(parts, fmt.Sprintf("%s %s@%s", metaName(e.Key), invName(l.Invert), l.SetName))
					i++
					continue
				}
			}
			parts = append(parts, "meta "+metaName(e.Key))
		case *expr.Payload:
			if s, n := concatLookup(ex[i:]); n > 0 {
				parts = append(parts, s)
				i += n - 1
				continue
			}
			s, n := payload(e, ex[i+1:])
			parts = append(parts, s)
			i += n
		case *expr.Ct:
			if i+2 < len(ex) {
				parts = append(parts, "ct state established,related")
				i += 2
				continue
			}
			parts = append(parts, "ct")
		case *expr.Immediate:
			if i+1 < len(ex) {
				if _, ok := ex[i+1].(*expr.Redir); ok && len(e.Data) == 2 {
					parts = append(parts, fmt.Sprintf("redirect to :%d", binary.BigEndian.Uint16(e.Data)))
					i++
					continue
				}
			}
			parts = append(parts, fmt.Sprintf("immediate %x", e.Data))
		case *expr.Masq:
			parts = append(parts, "masquerade")
		case *expr.Verdict:
			parts = append(parts, verdictName(e))
		default:
			parts = append(parts, fmt.Sprintf("%T", e))
		}
	}
	s := strings.Join(parts, " ")
	if r.Comment != "" {
		s += fmt.Sprintf(" comment %q", r.Comment)
	}
	return s
}

func invName(inv bool) string {
	if inv {
		return "!= "
	}
	return ""
}

// concatLookup renders a concatenation of loads ending in a lookup (and,
// for a map lookup feeding a redirect, the redirect): "iifname . ip saddr
// != @sources", "redirect to : iifname . ... map @redirect". It returns how
// many expressions it consumed, 0 if ex does not start with one.
func concatLookup(ex []expr.Any) (string, int) {
	var names []string
	for i, e := range ex {
		switch e := e.(type) {
		case *expr.Meta:
			names = append(names, metaName(e.Key))
		case *expr.Payload:
			names = append(names, payloadName(e))
		case *expr.Lookup:
			key := strings.Join(names, " . ")
			if e.IsDestRegSet && i+1 < len(ex) {
				if _, ok := ex[i+1].(*expr.Redir); ok {
					return fmt.Sprintf("redirect to : %s map @%s", key, e.SetName), i + 2
				}
			}
			return fmt.Sprintf("%s %s@%s", key, invName(e.Invert), e.SetName), i + 1
		default:
			return "", 0
		}
	}
	return "", 0
}

func payloadName(p *expr.Payload) string {
	switch {
	case p.Base == expr.PayloadBaseNetworkHeader && p.Offset == 12 && p.Len == 4:
		return "ip saddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Offset == 16 && p.Len == 4:
		return "ip daddr"
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 2 && p.Len == 2:
		return "th dport"
	}
	return fmt.Sprintf("@%d,%d,%d", p.Base, p.Offset*8, p.Len*8)
}

func verdictName(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}

func metaName(k expr.MetaKey) string {
	switch k {
	case expr.MetaKeyIIFNAME:
		return "iifname"
	case expr.MetaKeyOIFNAME:
		return "oifname"
	case expr.MetaKeyNFPROTO:
		return "meta nfproto"
	case expr.MetaKeyL4PROTO:
		return "meta l4proto"
	}
	return fmt.Sprintf("meta key %d", k)
}

func opName(op expr.CmpOp) string {
	switch op {
	case expr.CmpOpNeq:
		return "!= "
	case expr.CmpOpGte:
		return ">= "
	case expr.CmpOpLte:
		return "<= "
	case expr.CmpOpLt:
		return "< "
	case expr.CmpOpGt:
		return "> "
	}
	return ""
}

func metaCmp(k expr.MetaKey, c *expr.Cmp) string {
	v := fmt.Sprintf("%x", c.Data)
	switch k {
	case expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME:
		v = fmt.Sprintf("%q", strings.TrimRight(string(c.Data), "\x00"))
	case expr.MetaKeyNFPROTO:
		if len(c.Data) == 1 {
			v = map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[c.Data[0]]
		}
	case expr.MetaKeyL4PROTO:
		if len(c.Data) == 1 {
			v = map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_ICMP: "icmp"}[c.Data[0]]
		}
	}
	return metaName(k) + " " + opName(c.Op) + v
}

// payload renders a payload load and the bitwise/cmp expressions that use
// it; it returns how many following expressions it consumed.
func payload(p *expr.Payload, rest []expr.Any) (string, int) {
	name := payloadName(p)
	bits := -1
	n := 0
	if len(rest) > 0 {
		if b, ok := rest[0].(*expr.Bitwise); ok && len(b.Mask) == 4 {
			bits = 0
			for _, x := range b.Mask {
				for ; x&0x80 != 0; x <<= 1 {
					bits++
				}
			}
			rest = rest[1:]
			n++
		}
	}
	var vals []string
	for len(rest) > 0 {
		c, ok := rest[0].(*expr.Cmp)
		if !ok {
			break
		}
		v := fmt.Sprintf("%x", c.Data)
		switch {
		case len(c.Data) == 4:
			a := netip.AddrFrom4([4]byte(c.Data))
			v = a.String()
			if bits >= 0 {
				v = netip.PrefixFrom(a, bits).String()
			}
		case len(c.Data) == 2:
			v = fmt.Sprint(binary.BigEndian.Uint16(c.Data))
		}
		vals = append(vals, opName(c.Op)+v)
		rest = rest[1:]
		n++
	}
	return name + " " + strings.Join(vals, " "), n
}

// Describe renders a chain header the way nft lists it.
func (c *Chain) Describe() string {
	if !c.Base() {
		return "chain " + c.Name
	}
	pol := "drop"
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyAccept {
		pol = "accept"
	}
	hook := map[nftables.ChainHook]string{
		*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input", *nftables.ChainHookForward: "forward",
		*nftables.ChainHookOutput: "output", *nftables.ChainHookPostrouting: "postrouting",
	}[*c.Hook]
	prio := 0
	if c.Priority != nil {
		prio = int(*c.Priority)
	}
	return fmt.Sprintf("chain %s (type %s hook %s priority %d policy %s)", c.Name, c.Type, hook, prio, pol)
}
