package firewall

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The host table of earlier IronClaw versions dispatched each sandbox to
// regular chains of its own ("ic-<key>-fwd-in" and so on) through verdict
// maps (fwd_in, fwd_out, local_in, nat_pre, nat_post). EnsureHostBase
// rewrites the base chains of such a table, after which nothing reaches
// those chains and maps any more, but they stay. RemoveOldLayout removes
// them. While the old maps still hold entries (live sandboxes of the
// earlier IronClaw, which would lose their host-side rules and NAT),
// EnsureHostBase refuses the rewrite (ErrOldLayoutInUse); entries of links
// that are gone are deleted by DeleteOldLayoutLinks (`ironclaw gc`).

// oldHostMaps are the names of the earlier layout's verdict maps.
var oldHostMaps = []string{"fwd_in", "fwd_out", "local_in", "nat_pre", "nat_post"}

// The layout that came next (before generations) kept one fixed ruleset
// too, but its allow sets had a version field after the link
// ("link . version . address range [. protocol . port range]") and the
// forward chain looked them up with the key "iifname . (iifname map
// @version) . ip daddr ...": a map lookup's result inside a concatenation,
// which the kernel runs but nft 1.0.6 can neither parse nor list (`nft
// list ruleset` aborted). Its sets keep their names in this layout (links,
// sources, ...) except the map "version", the versioned allow sets and the
// map "redirect" (now "redirects": nft's parser takes "redirect" for its
// keyword), whose names the current layout does not use. While "version" holds
// entries (live sandboxes of that build), EnsureHostBase refuses to rewrite
// the base chains, as for the earlier layout; RemoveHost deletes a link's
// elements from these sets too, DeleteOldLayoutLinks deletes the "version"
// entries of links that are gone, and RemoveOldLayout deletes the sets
// once no rule looks them up.

// oldVersionMap is the name of that layout's map from link to version.
const oldVersionMap = "version"

// oldVersionedSets are that layout's sets whose names the current one
// does not use.
var oldVersionedSets = []setDef{
	{name: oldVersionMap, fields: []nftables.SetDatatype{fIf}, data: &fVer},
	{name: "redirect", fields: []nftables.SetDatatype{fIf, fAddr, fProto, fPort}, data: &fPort},
	{name: "allow_local", fields: []nftables.SetDatatype{fIf, fVer, fAddr}, interval: true},
	{name: "allow_local_ports", fields: []nftables.SetDatatype{fIf, fVer, fAddr, fProto, fPort}, interval: true},
	{name: "allow_internal", fields: []nftables.SetDatatype{fIf, fVer, fAddr}, interval: true},
	{name: "allow_internal_ports", fields: []nftables.SetDatatype{fIf, fVer, fAddr, fProto, fPort}, interval: true},
	{name: "allow_public", fields: []nftables.SetDatatype{fIf, fVer, fAddr}, interval: true},
	{name: "allow_public_ports", fields: []nftables.SetDatatype{fIf, fVer, fAddr, fProto, fPort}, interval: true},
}

// oldObject returns how RemoveOldLayout names s ("map NAME", "set NAME")
// when s is a set or map of an earlier layout, and "" otherwise.
func oldObject(s *nftables.Set) string {
	switch {
	case slices.Contains(oldHostMaps, s.Name) && verdictMap(s):
		return "map " + s.Name
	case verdictMap(s):
		return ""
	}
	for _, d := range oldVersionedSets {
		switch {
		case d.name != s.Name || s.IsMap != (d.data != nil):
		case s.IsMap:
			return "map " + s.Name
		default:
			return "set " + s.Name
		}
	}
	return ""
}

// OldChainPrefix prefixes the names of the earlier layout's per-sandbox
// chains.
const OldChainPrefix = "ic-"

// RemoveOldLayout deletes, in one transaction, the objects of the earlier
// host layouts left in IronClaw's host table that nothing uses: the
// verdict maps of oldHostMaps, the map "version" and the versioned allow
// sets (oldVersionedSets) that no rule looks up, and the regular chains
// named OldChainPrefix… that no rule outside them jumps to and no other
// verdict map holds. Base chains, the current layout's sets and chains and
// anything else are never touched, nor any other table. It returns what it
// deleted ("map NAME", "set NAME", "chain NAME"); without the table it
// does nothing.
func RemoveOldLayout(c *nftables.Conn) ([]string, error) {
	var chains []*nftables.Chain
	var maps []*nftables.Set
	var usedChains map[string]bool
	var exists bool
	err := consistent(c, nil, func() (err error) {
		exists, chains, maps, usedChains, err = readOldLayout(c)
		return err
	})
	if err != nil || !exists {
		return nil, err
	}
	t := table()
	oldChain := func(ch *nftables.Chain) bool {
		return ch.Hooknum == nil && strings.HasPrefix(ch.Name, OldChainPrefix)
	}
	var removed []string
	for _, s := range maps {
		// Flushing the elements first releases the chains they jump to
		// within this transaction, so the chains can go in it too.
		c.FlushSet(s)
		c.DelSet(s)
		removed = append(removed, oldObject(s))
	}
	for _, ch := range chains {
		if ch.Table.Name == TableName && oldChain(ch) && !usedChains[ch.Name] {
			c.DelChain(&nftables.Chain{Table: t, Name: ch.Name})
			removed = append(removed, "chain "+ch.Name)
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("remove old host layout (%s): %w", strings.Join(removed, ", "), err)
	}
	return removed, nil
}

// readOldLayout reads what RemoveOldLayout needs: whether the table
// exists, its chains, the unused maps and sets of the earlier layouts, and
// the chains that stay in use.
func readOldLayout(c *nftables.Conn) (exists bool, chains []*nftables.Chain, maps []*nftables.Set, usedChains map[string]bool, err error) {
	t := table()
	if ok, err := hostTableExists(c); err != nil {
		return false, nil, nil, nil, fmt.Errorf("remove old host layout: %w", err)
	} else if !ok {
		return false, nil, nil, nil, nil
	}
	chains, err = c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, nil, nil, nil, fmt.Errorf("remove old host layout: list chains: %w", err)
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return false, nil, nil, nil, fmt.Errorf("remove old host layout: list sets: %w", err)
	}
	oldChain := func(ch *nftables.Chain) bool {
		return ch.Hooknum == nil && strings.HasPrefix(ch.Name, OldChainPrefix)
	}
	// What the rest of the table uses: sets looked up and chains jumped to
	// from chains that stay, and chains held by verdict maps that stay.
	usedSets := map[string]bool{}
	usedChains = map[string]bool{}
	for _, ch := range chains {
		if ch.Table.Name != TableName || oldChain(ch) {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return false, nil, nil, nil, fmt.Errorf("remove old host layout: rules of %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				switch e := e.(type) {
				case *expr.Lookup:
					usedSets[e.SetName] = true
				case *expr.Dynset:
					usedSets[e.SetName] = true
				case *expr.Verdict:
					if e.Chain != "" {
						usedChains[e.Chain] = true
					}
				}
			}
		}
	}
	for _, s := range sets {
		if oldObject(s) != "" && !usedSets[s.Name] {
			maps = append(maps, s)
			continue
		}
		if !verdictMap(s) {
			continue
		}
		els, err := c.GetSetElements(s)
		if err != nil {
			return false, nil, nil, nil, fmt.Errorf("remove old host layout: elements of %s: %w", s.Name, err)
		}
		for _, el := range els {
			if ch := verdictChain(el.Val); ch != "" {
				usedChains[ch] = true
			}
		}
	}
	return true, chains, maps, usedChains, nil
}

// verdictMap reports whether s, as read back, is a verdict map.
// google/nftables v0.3.0 records a verdict map's data type as its key type
// (TypeVerdict), so both are checked.
func verdictMap(s *nftables.Set) bool {
	return s.IsMap && (s.DataType.Name == nftables.TypeVerdict.Name || s.KeyType.Name == nftables.TypeVerdict.Name)
}

// verdictChain returns the chain a verdict map element's data (as
// nftables.Conn.GetSetElements returns it in Val: the nested
// NFTA_VERDICT_* attributes) jumps or goes to, or "".
func verdictChain(val []byte) string {
	ad, err := netlink.NewAttributeDecoder(val)
	if err != nil {
		return ""
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
	if ad.Err() != nil || (code != int32(expr.VerdictJump) && code != int32(expr.VerdictGoto)) {
		return ""
	}
	return chain
}

// OldLayoutLinks returns the interface names the earlier layouts' maps in
// IronClaw's host table (the verdict maps, and the map "version") still
// hold entries for (sorted, without duplicates); none without the table
// or the maps. They are read from one generation of the ruleset.
func OldLayoutLinks(c *nftables.Conn) ([]string, error) {
	var links []string
	err := consistent(c, nil, func() (err error) {
		links, err = oldLayoutLinks(c)
		return err
	})
	return links, err
}

func oldLayoutLinks(c *nftables.Conn) ([]string, error) {
	maps, err := oldLayoutMaps(c)
	if err != nil {
		return nil, err
	}
	var links []string
	for _, s := range maps {
		els, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("old host layout: elements of %s: %w", s.Name, err)
		}
		for _, el := range els {
			if n := keyLink(el.Key); n != "" {
				links = append(links, n)
			}
		}
	}
	slices.Sort(links)
	return slices.Compact(links), nil
}

// DeleteOldLayoutLinks deletes, in one transaction, the entries of the
// earlier layouts' maps keyed by the interface names links (those of
// sandboxes that no longer exist), so that EnsureHostBase may rewrite the
// table and RemoveOldLayout remove what is left.
func DeleteOldLayoutLinks(c *nftables.Conn, links []string) error {
	if len(links) == 0 {
		return nil
	}
	var maps []*nftables.Set
	var dels [][]nftables.SetElement
	err := consistent(c, nil, func() error {
		maps, dels = nil, nil
		all, err := oldLayoutMaps(c)
		if err != nil {
			return err
		}
		for _, s := range all {
			els, err := c.GetSetElements(s)
			if err != nil {
				return fmt.Errorf("old host layout: elements of %s: %w", s.Name, err)
			}
			var del []nftables.SetElement
			for _, el := range els {
				if slices.Contains(links, keyLink(el.Key)) {
					del = append(del, nftables.SetElement{Key: el.Key})
				}
			}
			maps, dels = append(maps, s), append(dels, del)
		}
		return nil
	})
	if err != nil {
		return err
	}
	n := 0
	for i, s := range maps {
		if len(dels[i]) == 0 {
			continue
		}
		if err := c.SetDeleteElements(s, dels[i]); err != nil {
			return fmt.Errorf("old host layout: delete entries of %s: %w", s.Name, err)
		}
		n += len(dels[i])
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("old host layout: delete entries of %s: %w", strings.Join(links, ", "), err)
	}
	return nil
}

// oldLayoutMaps returns the earlier layouts' maps keyed by link present in
// IronClaw's host table: the verdict maps and the map "version".
func oldLayoutMaps(c *nftables.Conn) ([]*nftables.Set, error) {
	if ok, err := hostTableExists(c); err != nil {
		return nil, fmt.Errorf("old host layout: %w", err)
	} else if !ok {
		return nil, nil
	}
	sets, err := c.GetSets(table())
	if err != nil {
		return nil, fmt.Errorf("old host layout: list sets: %w", err)
	}
	var maps []*nftables.Set
	for _, s := range sets {
		if strings.HasPrefix(oldObject(s), "map ") {
			maps = append(maps, s)
		}
	}
	return maps, nil
}

// keyLink returns the interface name a key starts with (its first
// IFNAMSIZ bytes, up to the first NUL).
func keyLink(key []byte) string {
	key = key[:min(len(key), unix.IFNAMSIZ)]
	if i := bytes.IndexByte(key, 0); i >= 0 {
		key = key[:i]
	}
	return string(key)
}
