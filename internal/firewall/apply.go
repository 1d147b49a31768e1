package firewall

import (
	"encoding/binary"
	"slices"

	"fmt"
	"github.com/mdlayher/netlink"
	"reflect"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

func addChain(c *nftables.Conn, t *nftables.Table, ch *Chain) *nftables.Chain {
	nc := &nftables.Chain{Name: ch.Name, Table: t, Type: ch.Type, Hooknum: ch.Hook, Priority: ch.Priority, Policy: ch.Policy}
	c.AddChain(nc)
	return nc
}

func addRules(c *nftables.Conn, t *nftables.Table, nc *nftables.Chain, ch *Chain) {
	for _, r := range ch.Rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: r.Exprs, UserData: commentData(r.Comment)})
	}
}

// ApplySandbox replaces the sandbox table in the namespace c talks to with
// chains, in one transaction, so the kernel switches from the old ruleset
// to the new one atomically and never runs with a partial one. The table
// and chains are created if missing and otherwise kept: each chain is
// flushed and refilled. Keeping the base chains avoids unregistering and
// re-registering their hooks, which costs an RCU grace period; a chain the
// table should not have is caught by VerifySandbox.
func ApplySandbox(c *nftables.Conn, chains []Chain) error {
	return ApplySandboxChanges(c, nil, chains)
}

// ApplySandboxChanges is ApplySandbox for a table known to hold prev (the
// last ruleset applied and verified): chains equal in both are left alone,
// so a policy change only rewrites the output chain. The caller verifies
// the whole table afterwards, which catches a prev that was not true.
func ApplySandboxChanges(c *nftables.Conn, prev, chains []Chain) error {
	t := table()
	c.AddTable(t)
	for i := range chains {
		if unchanged(prev, &chains[i]) {
			continue
		}
		nc := addChain(c, t, &chains[i])
		c.FlushChain(nc)
		addRules(c, t, nc, &chains[i])
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply sandbox ruleset: %w", err)
	}
	return nil
}

func hostMap(t *nftables.Table, name string) *nftables.Set {
	// Interface names are strings, which nft keeps in host byte order.
	return &nftables.Set{Table: t, Name: name, IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
}

func uplinkSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: SetUplinks, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
}

// EnsureHostBase makes sure the shared host table exists with its maps, the
// uplink set and its base chains, which dispatch to the sandboxes' chains. It reads the
// base chains first and writes (one transaction: chains flushed and
// refilled, so rules are never doubled) only if they differ, then reads
// them back. Concurrent callers are safe: each transaction is atomic and
// they all write the same thing.
func EnsureHostBase(c *nftables.Conn) error {
	base := BuildHostBase()
	if verifyChains(c, base) == nil {
		return nil
	}
	t := table()
	c.AddTable(t)
	for _, m := range HostMaps {
		if err := c.AddSet(hostMap(t, m), nil); err != nil {
			return fmt.Errorf("apply host base: map %s: %w", m, err)
		}
	}
	if err := c.AddSet(uplinkSet(t), nil); err != nil {
		return fmt.Errorf("apply host base: set %s: %w", SetUplinks, err)
	}
	for i := range base {
		nc := addChain(c, t, &base[i])
		c.FlushChain(nc)
		addRules(c, t, nc, &base[i])
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply host base: %w", err)
	}
	return verifyChains(c, base)
}

// ApplyHost adds or replaces one sandbox's part of the shared host table in
// one transaction: its chains are created if missing, flushed and refilled,
// and its map entries set. The table, the maps and the base chains that
// consult them are EnsureHostBase's, which must run first (VerifyHost
// checks both).
func ApplyHost(c *nftables.Conn, part *HostPart) error {
	return ApplyHostChanges(c, nil, part)
}

// ApplyHostChanges is ApplyHost for a host table known to hold prev (the
// sandbox's last part applied and verified): unchanged chains are left
// alone and map entries are not re-added. The caller verifies afterwards.
func ApplyHostChanges(c *nftables.Conn, prev, part *HostPart) error {
	t := table()
	sets := map[string]*nftables.Set{}
	for _, m := range HostMaps {
		sets[m] = hostMap(t, m)
	}
	var prevChains []Chain
	if prev != nil {
		prevChains = prev.Chains
	}
	n := 0
	for i := range part.Chains {
		if unchanged(prevChains, &part.Chains[i]) {
			continue
		}
		n++
		nc := addChain(c, t, &part.Chains[i])
		c.FlushChain(nc)
		addRules(c, t, nc, &part.Chains[i])
	}
	for _, e := range part.Elements {
		if prev != nil && slices.Contains(prev.Elements, e) {
			continue
		}
		n++
		if err := c.SetAddElements(sets[e.Map], []nftables.SetElement{elem(e)}); err != nil {
			return fmt.Errorf("apply host ruleset: map %s: %w", e.Map, err)
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply host ruleset: %w", err)
	}
	return nil
}

// unchanged reports whether prev holds a chain equal to c.
func unchanged(prev []Chain, c *Chain) bool {
	for i := range prev {
		if prev[i].Name == c.Name {
			return sameChain(&prev[i], c)
		}
	}
	return false
}

func sameChain(a, b *Chain) bool {
	if a.Base() != b.Base() || a.Type != b.Type || len(a.Rules) != len(b.Rules) {
		return false
	}
	if a.Base() && (*a.Hook != *b.Hook || *a.Priority != *b.Priority || *a.Policy != *b.Policy) {
		return false
	}
	for i := range a.Rules {
		if a.Rules[i].Comment != b.Rules[i].Comment || !exprsEqual(a.Rules[i].Exprs, b.Rules[i].Exprs) {
			return false
		}
	}
	return true
}

func elem(e MapElement) nftables.SetElement {
	return nftables.SetElement{Key: ifnameBytes(e.Iface), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: e.Chain}}
}

// RemoveHost deletes one sandbox's map entries and chains from the host
// table in one transaction, and touches nothing else in it. Whatever of
// them is missing (a half-made setup) is first created empty within the
// same transaction and then deleted, so the batch never fails on a missing
// object and nothing needs to be read first: the cost does not grow with
// the number of sandboxes. It is idempotent; without the table it does
// nothing.
func RemoveHost(c *nftables.Conn, part *HostPart) error {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("remove host ruleset: list tables: %w", err)
	}
	found := false
	for _, t := range tables {
		found = found || t.Name == TableName
	}
	if !found {
		return nil
	}
	t := table()
	sets := map[string]*nftables.Set{}
	for _, m := range HostMaps {
		s := hostMap(t, m)
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("remove host ruleset: map %s: %w", m, err)
		}
		sets[m] = s
	}
	var chains []*nftables.Chain
	for _, ch := range part.Chains {
		chains = append(chains, c.AddChain(&nftables.Chain{Name: ch.Name, Table: t}))
	}
	for _, e := range part.Elements {
		if err := c.SetAddElements(sets[e.Map], []nftables.SetElement{elem(e)}); err != nil {
			return fmt.Errorf("remove host ruleset: map %s: %w", e.Map, err)
		}
	}
	for _, e := range part.Elements {
		if err := c.SetDeleteElements(sets[e.Map], []nftables.SetElement{{Key: ifnameBytes(e.Iface)}}); err != nil {
			return fmt.Errorf("remove host ruleset: map %s: %w", e.Map, err)
		}
	}
	for _, ch := range chains {
		c.DelChain(ch)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove host ruleset: %w", err)
	}
	return nil
}

// GuardUplink adds the interface name to the host table's set of guarded
// uplinks (SetUplinks), whose forwarded packets go to sandbox links only,
// and reads the set back to check. EnsureHostBase must have run.
func GuardUplink(c *nftables.Conn, name string) error {
	if err := c.SetAddElements(uplinkSet(table()), []nftables.SetElement{{Key: ifnameBytes(name)}}); err != nil {
		return fmt.Errorf("guard uplink %s: %w", name, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("guard uplink %s: %w", name, err)
	}
	got, err := ReadUplinks(c)
	if err != nil {
		return fmt.Errorf("%w: guard uplink %s: %v", ErrVerify, name, err)
	}
	if !slices.Contains(got, name) {
		return fmt.Errorf("%w: uplink %s is not in set %s after adding it", ErrVerify, name, SetUplinks)
	}
	return nil
}

// UnguardUplink removes the interface name from the set of guarded uplinks.
// It is idempotent (the element is added and deleted in one transaction,
// so a missing one is no error); without the table it does nothing.
func UnguardUplink(c *nftables.Conn, name string) error {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("unguard uplink %s: list tables: %w", name, err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }) {
		return nil
	}
	s := uplinkSet(table())
	el := []nftables.SetElement{{Key: ifnameBytes(name)}}
	if err := c.AddSet(s, nil); err != nil {
		return fmt.Errorf("unguard uplink %s: %w", name, err)
	}
	if err := c.SetAddElements(s, el); err != nil {
		return fmt.Errorf("unguard uplink %s: %w", name, err)
	}
	if err := c.SetDeleteElements(s, el); err != nil {
		return fmt.Errorf("unguard uplink %s: %w", name, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("unguard uplink %s: %w", name, err)
	}
	return nil
}

// ReadUplinks returns the guarded uplinks (SetUplinks), sorted.
func ReadUplinks(c *nftables.Conn) ([]string, error) {
	els, err := c.GetSetElements(uplinkSet(table()))
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", SetUplinks, err)
	}
	var out []string
	for _, el := range els {
		out = append(out, strings.TrimRight(string(el.Key), "\x00"))
	}
	slices.Sort(out)
	return out, nil
}

// RemoveSandbox deletes the sandbox table in the namespace c talks to, if
// it exists.
func RemoveSandbox(c *nftables.Conn) error {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove sandbox ruleset: %w", err)
	}
	return nil
}

// ReadTable reads IronClaw's table back from the kernel: every chain with
// its hook, policy and rules. It returns nil and no error if the table does
// not exist.
func ReadTable(c *nftables.Conn) ([]Chain, error) {
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("read ruleset: list chains: %w", err)
	}
	var out []Chain
	for _, nc := range all {
		if nc.Table.Name != TableName {
			continue
		}
		rs, err := c.GetRules(nc.Table, nc)
		if err != nil {
			return nil, fmt.Errorf("read ruleset: rules of %s: %w", nc.Name, err)
		}
		ch := Chain{Name: nc.Name, Type: nc.Type, Hook: nc.Hooknum, Priority: nc.Priority, Policy: nc.Policy}
		for _, r := range rs {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			ch.Rules = append(ch.Rules, Rule{Comment: cm, Exprs: r.Exprs})
		}
		out = append(out, ch)
	}
	return out, nil
}

// ReadMap returns the entries of a host verdict map: interface → chain.
func ReadMap(c *nftables.Conn, name string) (map[string]string, error) {
	els, err := c.GetSetElements(hostMap(table(), name))
	if err != nil {
		return nil, fmt.Errorf("read map %s: %w", name, err)
	}
	out := map[string]string{}
	for _, el := range els {
		target := jumpTarget(el.Val)
		out[strings.TrimRight(string(el.Key), "\x00")] = target
	}
	return out, nil
}

// jumpTarget decodes the verdict data of a map element as google/nftables
// returns it (the nested NFTA_VERDICT_* attributes) and returns the chain of
// a jump, or "?" for anything else.
func jumpTarget(val []byte) string {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return "?"
	}
	ad.ByteOrder = binary.BigEndian
	code, chain := int32(0), ""
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if ad.Err() != nil || code != int32(expr.VerdictJump) {
		return "?"
	}
	return chain
}

// VerifySandbox reads the sandbox table back and checks that it is exactly
// want: the same chains (no more), hooked at the same hooks with the same
// priorities, types and policies, holding the same rules in order.
func VerifySandbox(c *nftables.Conn, want []Chain) error {
	got, err := ReadTable(c)
	if err != nil {
		return err
	}
	if len(got) == 0 {
		return fmt.Errorf("%w: table inet %s is missing", ErrVerify, TableName)
	}
	if len(got) != len(want) {
		return fmt.Errorf("%w: table inet %s has %d chains, want %d", ErrVerify, TableName, len(got), len(want))
	}
	byName := map[string]*Chain{}
	for i := range got {
		byName[got[i].Name] = &got[i]
	}
	for i := range want {
		g, ok := byName[want[i].Name]
		if !ok {
			return fmt.Errorf("%w: chain %s is missing", ErrVerify, want[i].Name)
		}
		if err := compareChain(g, &want[i]); err != nil {
			return err
		}
	}
	return nil
}

// VerifyHost reads back the host table's base chains, the sandbox's chains
// and its map entries, and checks them against what was built. It reads
// only those chains, so its cost does not grow with the number of
// sandboxes.
func VerifyHost(c *nftables.Conn, part *HostPart) error {
	if err := verifyChains(c, BuildHostBase()); err != nil {
		return err
	}
	return VerifyHostPart(c, part)
}

// VerifyHostPart is VerifyHost without the base chains, for a caller that
// has just verified them (EnsureHostBase). Map entries are read with one
// dump per map: a single-element get (NFT_MSG_GETSETELEM without
// NLM_F_DUMP) waits for the previous transaction's cleanup on 6.x kernels,
// milliseconds, while the dump answers at once.
func VerifyHostPart(c *nftables.Conn, part *HostPart) error {
	if err := verifyChains(c, part.Chains); err != nil {
		return err
	}
	for _, e := range part.Elements {
		m, err := ReadMap(c, e.Map)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrVerify, err)
		}
		if m[e.Iface] != e.Chain {
			return fmt.Errorf("%w: map %s sends %s to %q, want %q", ErrVerify, e.Map, e.Iface, m[e.Iface], e.Chain)
		}
	}
	return nil
}

// ReadChain reads one chain of IronClaw's table back with its rules.
func ReadChain(c *nftables.Conn, name string) (*Chain, error) {
	t := table()
	nc, err := c.ListChain(t, name)
	if err != nil {
		return nil, fmt.Errorf("read chain %s: %w", name, err)
	}
	nc.Table = t
	rs, err := c.GetRules(t, nc)
	if err != nil {
		return nil, fmt.Errorf("read rules of %s: %w", name, err)
	}
	ch := &Chain{Name: nc.Name, Type: nc.Type, Hook: nc.Hooknum, Priority: nc.Priority, Policy: nc.Policy}
	for _, r := range rs {
		cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		ch.Rules = append(ch.Rules, Rule{Comment: cm, Exprs: r.Exprs})
	}
	return ch, nil
}

func verifyChains(c *nftables.Conn, want []Chain) error {
	for i := range want {
		got, err := ReadChain(c, want[i].Name)
		if err != nil {
			return fmt.Errorf("%w: chain %s is missing: %v", ErrVerify, want[i].Name, err)
		}
		if err := compareChain(got, &want[i]); err != nil {
			return err
		}
	}
	return nil
}

func compareChain(got, want *Chain) error {
	name := want.Name
	switch {
	case want.Base() != got.Base():
		return fmt.Errorf("%w: chain %s: base chain is %v, want %v", ErrVerify, name, got.Base(), want.Base())
	case want.Base() && *got.Hook != *want.Hook:
		return fmt.Errorf("%w: chain %s: hooked at %d, want %d", ErrVerify, name, *got.Hook, *want.Hook)
	case want.Base() && (got.Priority == nil || *got.Priority != *want.Priority):
		return fmt.Errorf("%w: chain %s: wrong priority", ErrVerify, name)
	case want.Base() && got.Type != want.Type:
		return fmt.Errorf("%w: chain %s: type %s, want %s", ErrVerify, name, got.Type, want.Type)
	case want.Base() && (got.Policy == nil || *got.Policy != *want.Policy):
		return fmt.Errorf("%w: chain %s: policy is not %s", ErrVerify, name, policyName(want.Policy))
	case len(got.Rules) != len(want.Rules):
		return fmt.Errorf("%w: chain %s: %d rules, want %d", ErrVerify, name, len(got.Rules), len(want.Rules))
	}
	for i := range want.Rules {
		g, w := got.Rules[i], want.Rules[i]
		if g.Comment != w.Comment || !exprsEqual(g.Exprs, w.Exprs) {
			return fmt.Errorf("%w: chain %s: rule %d (%q) differs from the built rule (%q): %s", ErrVerify, name, i, g.Comment, w.Comment, exprDiff(g.Exprs, w.Exprs))
		}
	}
	return nil
}

func policyName(p *nftables.ChainPolicy) string {
	if p != nil && *p == nftables.ChainPolicyAccept {
		return "accept"
	}
	return "drop"
}

// exprsEqual compares expressions as the kernel returns them with the ones
// built, ignoring only what the kernel does not echo (a lookup's set ID).
func exprsEqual(got, want []expr.Any) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range want {
		g, w := got[i], want[i]
		if gl, ok := g.(*expr.Lookup); ok {
			if wl, ok := w.(*expr.Lookup); ok {
				a, b := *gl, *wl
				a.SetID, b.SetID = 0, 0
				if a != b {
					return false
				}
				continue
			}
		}
		if !reflect.DeepEqual(g, w) {
			return false
		}
	}
	return true
}

// exprDiff describes the first difference between two expression lists.
func exprDiff(got, want []expr.Any) string {
	for i := 0; i < len(got) || i < len(want); i++ {
		switch {
		case i >= len(got):
			return fmt.Sprintf("expression %d missing, want %T%+v", i, want[i], want[i])
		case i >= len(want):
			return fmt.Sprintf("extra expression %d %T%+v", i, got[i], got[i])
		case !exprsEqual(got[i:i+1], want[i:i+1]):
			return fmt.Sprintf("expression %d is %T%+v, want %T%+v", i, got[i], got[i], want[i], want[i])
		}
	}
	return "comments differ"
}
