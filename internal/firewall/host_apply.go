package firewall

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// EnsureHostBase makes sure the shared host table exists with its sets
// and its fixed base chains. It reads them first and writes (one
// transaction: sets created if missing, base chains flushed and refilled,
// so rules are never doubled) only if they differ, then reads them back.
// When only SetDenyInternal differs (a build with other InternalRanges
// wrote it, see Format), the transaction changes that set's elements and
// nothing else: no chain is rewritten under the live sandboxes. Concurrent
// callers are safe: each transaction is atomic and they all write the
// same thing. Each reading is of one generation of the ruleset, whose
// number it reads through g (nil: a socket of its own; else a reader in
// c's namespace).
func EnsureHostBase(c *nftables.Conn, g *GenReader) error {
	base := BuildHostBase()
	var deny []Element
	err := consistent(c, g, func() (err error) {
		deny, err = readHostBase(c, base)
		return err
	})
	if err == nil {
		extra, missing := diffElements(deny, hostBaseElements())
		if len(extra)+len(missing) == 0 {
			return nil
		}
		if err := queueElements(c, extra, missing); err != nil {
			return fmt.Errorf("apply host base: %w", err)
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("apply host base: set %s: %w", SetDenyInternal, err)
		}
		return verifyHostBase(c, g, base)
	}
	// A table of an earlier layout whose maps still name links would
	// lose those sandboxes' host-side rules and NAT in the rewrite: fail
	// closed until they are gone (their owner removes their entries, or
	// gc removes the entries of links that no longer exist).
	if links, err := OldLayoutLinks(c); err != nil {
		return fmt.Errorf("apply host base: %w", err)
	} else if len(links) > 0 {
		return fmt.Errorf("apply host base: %w: links %s; let those sandboxes end, run `ironclaw gc`, and retry",
			ErrOldLayoutInUse, strings.Join(links, ", "))
	}
	t := table()
	c.AddTable(t)
	for _, d := range hostSets {
		if err := c.AddSet(d.nft(t), nil); err != nil {
			return fmt.Errorf("apply host base: set %s: %w", d.name, err)
		}
	}
	d, _ := setDefOf(SetDenyInternal)
	c.FlushSet(d.nft(t))
	if err := queueElements(c, nil, hostBaseElements()); err != nil {
		return fmt.Errorf("apply host base: %w", err)
	}
	for i := range base {
		nc := addChain(c, t, &base[i])
		c.FlushChain(nc)
		addRules(c, t, nc, &base[i])
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply host base: %w", err)
	}
	return verifyHostBase(c, g, base)
}

// verifyHostBase checks that the base chains are hooked with exactly the
// built rules, that every set exists with the built key, flags and value
// type, and that SetDenyInternal holds InternalRanges, in one generation
// of the ruleset.
func verifyHostBase(c *nftables.Conn, g *GenReader, base []Chain) error {
	return consistent(c, g, func() error {
		deny, err := readHostBase(c, base)
		if err != nil {
			return err
		}
		return compareElements("set "+SetDenyInternal, deny, hostBaseElements())
	})
}

// readHostBase checks the base chains and the sets (as verifyHostBase)
// and returns the elements of SetDenyInternal.
func readHostBase(c *nftables.Conn, base []Chain) ([]Element, error) {
	if err := verifyChains(c, base); err != nil {
		return nil, err
	}
	if err := verifySets(c, hostSets); err != nil {
		return nil, err
	}
	d, _ := setDefOf(SetDenyInternal)
	els, err := c.GetSetElements(d.nft(table()))
	if err != nil {
		return nil, fmt.Errorf("%w: read set %s: %v", ErrVerify, SetDenyInternal, err)
	}
	var got []Element
	for _, el := range els {
		got = append(got, elementOf(d, el))
	}
	return got, nil
}

// verifySets checks that every set of defs exists in IronClaw's table
// with the built key, flags and value type.
func verifySets(c *nftables.Conn, defs []setDef) error {
	sets, err := c.GetSets(table())
	if err != nil {
		return fmt.Errorf("%w: list sets of table inet %s: %v", ErrVerify, TableName, err)
	}
	for _, d := range defs {
		i := slices.IndexFunc(sets, func(s *nftables.Set) bool { return s.Name == d.name })
		if i < 0 {
			return fmt.Errorf("%w: set %s is missing", ErrVerify, d.name)
		}
		got, want := sets[i], d.nft(table())
		switch {
		case got.KeyType.Bytes != want.KeyType.Bytes || got.Interval != want.Interval || got.IsMap != want.IsMap ||
			got.Concatenation != want.Concatenation || got.Anonymous || got.Constant || got.HasTimeout:
			return fmt.Errorf("%w: set %s is not the built set (key %d bytes, interval %v, map %v)", ErrVerify, d.name, got.KeyType.Bytes, got.Interval, got.IsMap)
		case want.IsMap && got.DataType.Bytes != want.DataType.Bytes:
			return fmt.Errorf("%w: map %s has %d-byte values, want %d", ErrVerify, d.name, got.DataType.Bytes, want.DataType.Bytes)
		}
	}
	return nil
}

// elementOf converts an element read from set d.
func elementOf(d setDef, el nftables.SetElement) Element {
	e := Element{Set: d.name, Key: el.Key}
	if d.interval {
		e.KeyEnd = el.KeyEnd
	}
	if d.data != nil {
		e.Val = el.Val
	}
	return e
}

// compareElements checks that got holds exactly want's elements.
func compareElements(what string, got, want []Element) error {
	// diffElements(prev=got, part=want): del are extra, add are missing.
	extra, missing := diffElements(got, want)
	if len(missing)+len(extra) == 0 {
		return nil
	}
	var b strings.Builder
	for _, e := range missing {
		fmt.Fprintf(&b, "; missing %s", e)
	}
	for _, e := range extra {
		fmt.Fprintf(&b, "; unexpected %s", e)
	}
	return fmt.Errorf("%w: %s elements differ from the built ones%s", ErrVerify, what, b.String())
}

func setElement(e Element, withVal bool) nftables.SetElement {
	el := nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd}
	if withVal {
		el.Val = e.Val
	}
	return el
}

// diffElements returns the elements of prev that part does not have and
// those of part that prev does not have.
func diffElements(prev, part []Element) (del, add []Element) {
	have := map[string]bool{}
	for _, e := range prev {
		have[e.id()] = true
	}
	want := map[string]bool{}
	for _, e := range part {
		want[e.id()] = true
		if !have[e.id()] {
			add = append(add, e)
		}
	}
	for _, e := range prev {
		if !want[e.id()] {
			del = append(del, e)
		}
	}
	return del, add
}

// queueElements queues the deletion of del and then the addition of add,
// grouped by host set, on c. Deleting first lets a new range take the
// place of an old one it overlaps within the same transaction.
func queueElements(c *nftables.Conn, del, add []Element) error {
	return queueSetElements(c, hostSets, del, add)
}

// queueSetElements is queueElements for the sets defs.
func queueSetElements(c *nftables.Conn, defs []setDef, del, add []Element) error {
	t := table()
	queue := func(els []Element, adding bool, op func(*nftables.Set, []nftables.SetElement) error) error {
		for _, d := range defs {
			var batch []nftables.SetElement
			for _, e := range els {
				if e.Set == d.name {
					batch = append(batch, setElement(e, adding))
				}
			}
			if len(batch) > 0 {
				if err := op(d.nft(t), batch); err != nil {
					return fmt.Errorf("set %s: %w", d.name, err)
				}
			}
		}
		return nil
	}
	if err := queue(del, false, c.SetDeleteElements); err != nil {
		return err
	}
	return queue(add, true, c.SetAddElements)
}

// ApplyHost adds or replaces one sandbox's part of the shared host table
// in one transaction: it reads the sandbox's elements from the kernel and
// deletes the ones part does not have while adding the missing ones. The
// table, its sets and its base chains are EnsureHostBase's, which must
// run first (VerifyHost checks both).
func ApplyHost(c *nftables.Conn, part *HostPart) error {
	return ApplyHostChanges(c, nil, part)
}

// ApplyHostChanges is ApplyHostHeld without its result.
func ApplyHostChanges(c *nftables.Conn, prev, part *HostPart) error {
	_, err := ApplyHostHeld(c, nil, prev, part)
	return err
}

// ApplyHostHeld is ApplyHost for a host table known to hold prev for the
// link: every element the kernel holds for it, of both generations (what
// the last ApplyHostHeld returned and its verification confirmed, pruned
// or not; or an empty HostPart for a link that has none yet). It writes
// only the difference, in one transaction, without reading anything: it
// adds part's missing elements and deletes the link's other elements,
// except the allow elements of the generation that is not part's, which
// are left for PruneHost (no packet reaches them once the link is in
// part's generation set). A nil prev is read from the kernel, and then
// every element of the link that part does not have is deleted, of both
// generations: what the kernel holds then is what the link's owner knows
// of, whoever wrote the rest (an earlier owner of the link's name, a
// change that failed). It returns what the kernel then holds for the
// link, for the next call. The caller verifies afterwards, which catches a
// prev that was not true, except for an element that prev does not name
// (an allow element of part's generation, the link in the other
// generation's set): only a full verification (VerifyHostPart) sees that.
// (Taking the link out of the other set whatever prev says, by adding and
// deleting it in the same transaction, made each such commit as slow as
// an interval element's deletion in BenchmarkPerPacket's set-up: tens of
// times a plain commit.)
//
// g reads the ruleset generation for the reading of a nil prev (nil: a
// socket of its own; else a reader in c's namespace).
func ApplyHostHeld(c *nftables.Conn, g *GenReader, prev, part *HostPart) (HostPart, error) {
	keepSuperseded := prev != nil
	if prev == nil {
		cur, err := readHostPartOnce(c, g, part.Iface, sandboxSets(), false)
		if err != nil {
			return HostPart{}, fmt.Errorf("apply host ruleset: %w", err)
		}
		prev = &cur
	}
	held := HostPart{Iface: part.Iface, Version: part.Version, Elements: slices.Clone(part.Elements)}
	if keepSuperseded && part.Version != 0 {
		held.Elements = append(held.Elements, (&HostPart{Iface: part.Iface, Version: part.Version, Elements: prev.Elements}).Superseded()...)
		sortElements(held.Elements)
	}
	del, add := diffElements(prev.Elements, held.Elements)
	if len(del)+len(add) == 0 {
		return held, nil
	}
	if err := queueElements(c, del, add); err != nil {
		return HostPart{}, fmt.Errorf("apply host ruleset: %w", err)
	}
	if err := c.Flush(); err != nil {
		return HostPart{}, fmt.Errorf("apply host ruleset: %w", err)
	}
	return held, nil
}

// ReadHostPart reads the elements of the link hostIf back from the host
// table's sets: every element whose key starts with its interface name,
// from one generation of the ruleset. A set that does not exist holds
// nothing.
func ReadHostPart(c *nftables.Conn, hostIf string) (HostPart, error) {
	return readHostPartOnce(c, nil, hostIf, sandboxSets(), false)
}

// readHostPartOnce is readHostPart checked against the ruleset generation,
// read through g (nil: a reader of its own): the whole reading in one
// generation, or, when commits came meanwhile, each set's dump in one
// (wholeThenEach).
func readHostPartOnce(c *nftables.Conn, g *GenReader, hostIf string, defs []setDef, onlyExisting bool) (HostPart, error) {
	if g == nil {
		var err error
		if g, err = dialGen(c); err != nil {
			return HostPart{Iface: hostIf}, err
		}
		defer g.Close()
	}
	var part HostPart
	err := wholeThenEach(g, func(ch *genChain) (err error) {
		part, err = readHostPart(c, ch, hostIf, defs, onlyExisting)
		return err
	})
	return part, err
}

// readHostPart reads the link's elements of the sets defs (those that
// exist, if onlyExisting), each set's dump checked through g (nil: not
// here, the caller checks the whole reading). A dump that a commit
// interrupts may miss elements, whoever's commit it was. Checking each set
// on its own is enough: what the sets hold for one link changes only by
// that link's owner, which does not change it while it reads it (its
// changes and prunes are serialized, and gc removes the elements of links
// that are gone); and on a busy host with hundreds of sandboxes a reading
// of every set would seldom find a moment without commits.
func readHostPart(c *nftables.Conn, g *genChain, hostIf string, defs []setDef, onlyExisting bool) (HostPart, error) {
	part := HostPart{Iface: hostIf}
	t := table()
	var exists map[string]bool
	if onlyExisting {
		sets, err := getSets(c, g)
		if err != nil {
			return part, fmt.Errorf("read host sets: %w", err)
		}
		exists = map[string]bool{}
		for _, s := range sets {
			exists[s.Name] = true
		}
	}
	prefix := ifnameBytes(hostIf)
	var inGen [2]bool
	for _, d := range defs {
		if exists != nil && !exists[d.name] {
			continue
		}
		els, err := getSetElements(c, g, d.nft(t))
		if err != nil {
			return part, fmt.Errorf("read set %s: %w", d.name, err)
		}
		for _, el := range els {
			if !bytes.HasPrefix(el.Key, prefix) {
				continue
			}
			e := elementOf(d, el)
			for g := range generations {
				if d.name == generations[g].set {
					inGen[g] = true
				}
			}
			part.Elements = append(part.Elements, e)
		}
	}
	switch {
	case inGen[0] && !inGen[1]:
		part.Version = 1
	case inGen[1] && !inGen[0]:
		part.Version = 2
	}
	sortElements(part.Elements)
	return part, nil
}

// VerifyHost reads back the host table's base chains and sets and this
// sandbox's elements, and checks them against what was built.
func VerifyHost(c *nftables.Conn, part *HostPart) error {
	if err := verifyHostBase(c, nil, BuildHostBase()); err != nil {
		return err
	}
	return VerifyHostPart(c, nil, part)
}

// VerifyHostPart is VerifyHost without the base chains and sets, for a
// caller that has just verified them (EnsureHostBase): the kernel must hold
// exactly part's elements for the link, no fewer and no more, the link
// being in the set of part's generation only. Allow elements of the other
// generation, which no packet reaches, are not compared. The elements are
// read from one generation of the ruleset, whose number it reads through g
// (nil: a socket of its own; else a reader in c's namespace).
func VerifyHostPart(c *nftables.Conn, g *GenReader, part *HostPart) error {
	all, err := readHostPartOnce(c, g, part.Iface, sandboxSets(), false)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrVerify, err)
	}
	if part.Version == 0 {
		// No generation is live: nothing of either may be there.
		return compareElements("host "+part.Iface, all.Elements, part.Elements)
	}
	if all.Version == 0 || GenerationOf(all.Version) != GenerationOf(part.Version) {
		return fmt.Errorf("%w: host elements of %s: the link is not in %s alone", ErrVerify, part.Iface, generations[GenerationOf(part.Version)].set)
	}
	all.Version = part.Version
	return compareElements("host "+part.Iface, all.Live().Elements, part.Elements)
}

// RemoveHost deletes one sandbox's elements from the host table in one
// transaction and touches nothing else in it. It reads the link's elements
// back first and deletes exactly those, so whatever the table holds for
// the link goes, even elements no record knows of (the reading is one dump
// per set; removal is off the start path). It is idempotent; without the
// table it does nothing.
func RemoveHost(c *nftables.Conn, hostIf string) error {
	if ok, err := hostTableExists(c); err != nil {
		return fmt.Errorf("remove host ruleset: %w", err)
	} else if !ok {
		return nil
	}
	g, err := dialGen(c)
	if err != nil {
		return fmt.Errorf("remove host ruleset: %w", err)
	}
	defer g.Close()
	// The sets of the layout before generations too, while they exist:
	// a sandbox of that layout reclaimed by this build goes entirely.
	defs := append(sandboxSets(), oldVersionedSets...)
	// Another remover (gc's sweep of links that are gone, or the link's
	// own owner) may delete some of the elements between the read and the
	// deletion, which then fails as a whole with ENOENT: read again.
	for attempt := 0; ; attempt++ {
		cur, err := readHostPartOnce(c, g, hostIf, defs, true)
		if err != nil {
			return fmt.Errorf("remove host ruleset: %w", err)
		}
		if len(cur.Elements) == 0 {
			return nil
		}
		if err := queueSetElements(c, defs, cur.Elements, nil); err != nil {
			return fmt.Errorf("remove host ruleset: %w", err)
		}
		err = c.Flush()
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.ENOENT) || attempt == 5 {
			return fmt.Errorf("remove host ruleset: %w", err)
		}
	}
}

// HostLinks returns the links that have elements in the host table's
// sandbox sets, each once, sorted. Without the table it returns none.
// Each set's dump is of one generation of the ruleset; a link whose
// elements come or go meanwhile may be listed or not.
func HostLinks(c *nftables.Conn) ([]string, error) {
	g, err := dialGen(c)
	if err != nil {
		return nil, fmt.Errorf("list host links: %w", err)
	}
	defer g.Close()
	var links []string
	err = wholeThenEach(g, func(ch *genChain) (err error) {
		links, err = hostLinks(c, ch)
		return err
	})
	return links, err
}

// hostLinks is HostLinks with the generation read through g (nil: no
// check, for tests).
func hostLinks(c *nftables.Conn, g *genChain) ([]string, error) {
	if ok, err := hostTableExists(c); err != nil {
		return nil, fmt.Errorf("list host links: %w", err)
	} else if !ok {
		return nil, nil
	}
	sets, err := getSets(c, g)
	if err != nil {
		return nil, fmt.Errorf("list host links: list sets: %w", err)
	}
	seen := map[string]bool{}
	for _, d := range sandboxSets() {
		if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == d.name }) {
			continue
		}
		els, err := getSetElements(c, g, d.nft(table()))
		if err != nil {
			return nil, fmt.Errorf("list host links: read set %s: %w", d.name, err)
		}
		for _, el := range els {
			if len(el.Key) < unix.IFNAMSIZ {
				continue
			}
			if name := strings.TrimRight(string(el.Key[:unix.IFNAMSIZ]), "\x00"); name != "" {
				seen[name] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	slices.Sort(out)
	return out, nil
}

// PruneHost deletes the link's allow elements of the generation that is
// not live, which no packet reaches any more, in one transaction, and
// returns how many it deleted. A link in neither generation set, or in
// both, is left alone, with an error (ErrVerify): which elements are
// superseded is then unknown. The generation's keys are reused by the
// change after next, so PruneHost must not run beside a change of the same
// link: the caller serializes them (Net does).
func PruneHost(c *nftables.Conn, hostIf string) (int, error) {
	cur, err := readHostPartOnce(c, nil, hostIf, sandboxSets(), true)
	if err != nil {
		return 0, fmt.Errorf("prune host ruleset: %w", err)
	}
	if cur.Version == 0 {
		return 0, fmt.Errorf("prune host ruleset: %w: link %s is in neither or both of %s and %s", ErrVerify, hostIf, SetGenerationA, SetGenerationB)
	}
	old := cur.Superseded()
	if len(old) == 0 {
		return 0, nil
	}
	if err := queueElements(c, old, nil); err != nil {
		return 0, fmt.Errorf("prune host ruleset: %w", err)
	}
	if err := c.Flush(); err != nil {
		return 0, fmt.Errorf("prune host ruleset: %w", err)
	}
	return len(old), nil
}

func uplinkSet() *nftables.Set {
	d, _ := setDefOf(SetUplinks)
	return d.nft(table())
}

// GuardUplink adds the interface name to the host table's set of guarded
// uplinks (SetUplinks), whose forwarded packets go to sandbox links only,
// and reads the set back to check. EnsureHostBase must have run.
func GuardUplink(c *nftables.Conn, name string) error {
	if err := c.SetAddElements(uplinkSet(), []nftables.SetElement{{Key: ifnameBytes(name)}}); err != nil {
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
	if ok, err := hostTableExists(c); err != nil {
		return fmt.Errorf("unguard uplink %s: %w", name, err)
	} else if !ok {
		return nil
	}
	s := uplinkSet()
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

// ReadUplinks returns the guarded uplinks (SetUplinks), sorted, from one
// generation of the ruleset.
func ReadUplinks(c *nftables.Conn) ([]string, error) {
	var out []string
	err := consistent(c, nil, func() (err error) {
		out, err = readUplinks(c)
		return err
	})
	return out, err
}

func readUplinks(c *nftables.Conn) ([]string, error) {
	els, err := c.GetSetElements(uplinkSet())
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

// ReadSetSizes returns the number of elements of every sandbox set of the
// host table (for `ironclaw net show` and tests), each set's from one
// generation of the ruleset.
func ReadSetSizes(c *nftables.Conn) (map[string]int, error) {
	g, err := dialGen(c)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	ch := newGenChain(g)
	out := map[string]int{}
	for _, d := range sandboxSets() {
		els, err := getSetElements(c, ch, d.nft(table()))
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", d.name, err)
		}
		out[d.name] = len(els)
	}
	return out, nil
}

// hostTableExists reports whether IronClaw's host table exists.
func hostTableExists(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }), nil
}

// getSets lists the sets of IronClaw's table in one generation of the
// ruleset (checked through ch; a nil ch checks nothing).
func getSets(c *nftables.Conn, ch *genChain) ([]*nftables.Set, error) {
	var sets []*nftables.Set
	err := ch.do(func() (err error) {
		sets, err = c.GetSets(table())
		return err
	})
	return sets, err
}

// getSetElements dumps the elements of s in one generation of the ruleset
// (checked through ch; a nil ch checks nothing).
func getSetElements(c *nftables.Conn, ch *genChain, s *nftables.Set) ([]nftables.SetElement, error) {
	var els []nftables.SetElement
	err := ch.do(func() (err error) {
		els, err = c.GetSetElements(s)
		return err
	})
	return els, err
}
