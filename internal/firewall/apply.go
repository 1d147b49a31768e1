package firewall

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
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
// rs, in one transaction, so the kernel switches from the old ruleset to
// the new one atomically and never runs with a partial one. The table,
// its sets and chains are created if missing and otherwise kept: each
// chain is flushed and refilled, each set flushed and refilled. Keeping
// the base chains avoids unregistering and re-registering their hooks,
// which costs an RCU grace period; a chain the table should not have is
// caught by VerifySandbox.
func ApplySandbox(c *nftables.Conn, rs *SandboxRuleset) error {
	return ApplySandboxChanges(c, nil, rs)
}

// ApplySandboxChanges is ApplySandbox for a table known to hold prev (the
// last ruleset applied and verified): chains equal in both are left alone
// and only the elements that differ are deleted and added, so a policy
// change on a sandbox whose addresses stay is elements only. The caller
// verifies the whole table afterwards, which catches a prev that was not
// true.
func ApplySandboxChanges(c *nftables.Conn, prev, rs *SandboxRuleset) error {
	t := table()
	var prevChains []Chain
	if prev == nil {
		c.AddTable(t)
		for _, d := range sandboxTableSets {
			s := d.nft(t)
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("apply sandbox ruleset: set %s: %w", d.name, err)
			}
			c.FlushSet(s)
		}
	} else {
		prevChains = prev.Chains
	}
	for i := range rs.Chains {
		if unchanged(prevChains, &rs.Chains[i]) {
			continue
		}
		nc := addChain(c, t, &rs.Chains[i])
		c.FlushChain(nc)
		addRules(c, t, nc, &rs.Chains[i])
	}
	var del, add []Element
	if prev == nil {
		add = rs.Elements
	} else {
		del, add = diffElements(prev.Elements, rs.Elements)
	}
	if err := queueSetElements(c, sandboxTableSets, del, add); err != nil {
		return fmt.Errorf("apply sandbox ruleset: %w", err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply sandbox ruleset: %w", err)
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
// its hook, policy and rules, from one generation of the ruleset. It
// returns nil and no error if the table does not exist.
func ReadTable(c *nftables.Conn) ([]Chain, error) {
	var out []Chain
	err := consistent(c, nil, func() (err error) {
		out, err = readTable(c)
		return err
	})
	return out, err
}

// readTable is ReadTable without the generation check.
func readTable(c *nftables.Conn) ([]Chain, error) {
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

// ReadSandbox reads the sandbox table back: its chains (ReadTable) and
// the elements of its sets (a set that does not exist holds nothing), all
// from one generation of the ruleset.
func ReadSandbox(c *nftables.Conn) (SandboxRuleset, error) {
	var rs SandboxRuleset
	err := consistent(c, nil, func() (err error) {
		rs, err = readSandbox(c)
		return err
	})
	return rs, err
}

func readSandbox(c *nftables.Conn) (SandboxRuleset, error) {
	var rs SandboxRuleset
	var err error
	if rs.Chains, err = readTable(c); err != nil || rs.Chains == nil {
		return rs, err
	}
	sets, err := c.GetSets(table())
	if err != nil {
		return rs, fmt.Errorf("read ruleset: list sets: %w", err)
	}
	for _, d := range sandboxTableSets {
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == d.name }) {
			continue
		}
		els, err := c.GetSetElements(d.nft(table()))
		if err != nil {
			return rs, fmt.Errorf("read ruleset: set %s: %w", d.name, err)
		}
		for _, el := range els {
			rs.Elements = append(rs.Elements, elementOf(d, el))
		}
	}
	sortElements(rs.Elements)
	return rs, nil
}

// VerifySandbox reads the sandbox table back and checks that it is exactly
// want: the same chains (no more), hooked at the same hooks with the same
// priorities, types and policies, holding the same rules in order; every
// set with the built definition, holding exactly the built elements. What
// it compares is read from one generation of the ruleset (see gen.go),
// whose number it reads through g (nil: a socket of its own; else a
// reader in c's namespace).
func VerifySandbox(c *nftables.Conn, g *GenReader, want *SandboxRuleset) error {
	return consistent(c, g, func() error { return verifySandbox(c, want) })
}

func verifySandbox(c *nftables.Conn, want *SandboxRuleset) error {
	got, err := readTable(c)
	if err != nil {
		return err
	}
	if len(got) == 0 {
		return fmt.Errorf("%w: table inet %s is missing", ErrVerify, TableName)
	}
	if len(got) != len(want.Chains) {
		return fmt.Errorf("%w: table inet %s has %d chains, want %d", ErrVerify, TableName, len(got), len(want.Chains))
	}
	byName := map[string]*Chain{}
	for i := range got {
		byName[got[i].Name] = &got[i]
	}
	for i := range want.Chains {
		g, ok := byName[want.Chains[i].Name]
		if !ok {
			return fmt.Errorf("%w: chain %s is missing", ErrVerify, want.Chains[i].Name)
		}
		if err := compareChain(g, &want.Chains[i]); err != nil {
			return err
		}
	}
	if err := verifySets(c, sandboxTableSets); err != nil {
		return err
	}
	var els []Element
	for _, d := range sandboxTableSets {
		got, err := c.GetSetElements(d.nft(table()))
		if err != nil {
			return fmt.Errorf("%w: read set %s: %v", ErrVerify, d.name, err)
		}
		for _, el := range got {
			els = append(els, elementOf(d, el))
		}
	}
	return compareElements("sandbox table", els, want.Elements)
}

// ReadChain reads one chain of IronClaw's table back with its rules, from
// one generation of the ruleset.
func ReadChain(c *nftables.Conn, name string) (*Chain, error) {
	var ch *Chain
	err := consistent(c, nil, func() (err error) {
		ch, err = readChain(c, name)
		return err
	})
	return ch, err
}

func readChain(c *nftables.Conn, name string) (*Chain, error) {
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

// verifyChains checks that IronClaw's table has the chains of want with
// their rules. The chains are listed in one dump, then each one's rules.
func verifyChains(c *nftables.Conn, want []Chain) error {
	all, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("%w: list chains: %v", ErrVerify, err)
	}
	t := table()
	for i := range want {
		j := slices.IndexFunc(all, func(nc *nftables.Chain) bool { return nc.Table.Name == TableName && nc.Name == want[i].Name })
		if j < 0 {
			return fmt.Errorf("%w: chain %s is missing", ErrVerify, want[i].Name)
		}
		nc := all[j]
		rs, err := c.GetRules(t, nc)
		if err != nil {
			return fmt.Errorf("%w: read rules of %s: %v", ErrVerify, nc.Name, err)
		}
		got := &Chain{Name: nc.Name, Type: nc.Type, Hook: nc.Hooknum, Priority: nc.Priority, Policy: nc.Policy}
		for _, r := range rs {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			got.Rules = append(got.Rules, Rule{Comment: cm, Exprs: r.Exprs})
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
