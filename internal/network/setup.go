package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/egress"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// Net is the live network of one sandbox. It owns the namespace, the link,
// the address lease, the firewall rules and the egress servers until Close.
type Net struct {
	cfg  Config
	dir  string
	key  sandbox.Key
	log  *slog.Logger
	mu   sync.Mutex
	rec  *record
	ns   *netns.NS
	eg   *egress.Server
	tgt  *firewall.Target
	slot *slot // set when the network came from the pool
	// sc and hc are lasting nftables connections to the sandbox's
	// namespace and the host (see conns); hr reads the host's elements
	// back by key; sg and hg read the ruleset generation of the
	// sandbox's namespace and of the host, for consistent reads.
	sc, hc *nftables.Conn
	hr     *firewall.ElementReader
	sg, hg *firewall.GenReader
	// prevInner is the sandbox ruleset last applied and verified, and
	// prevPart what the host holds for the link since then: that apply's
	// part and, until pruned, the superseded generation's elements (see
	// firewall.ApplyHostHeld). Nil when unknown; they let a change write
	// only what differs. pruneMu guards prevPart.
	prevInner *firewall.SandboxRuleset
	prevPart  *firewall.HostPart
	// ver is the host policy version of the last apply (attempted or
	// not), live the one of the last apply that verified; their parity
	// is the generation (see firewall.SetGenerationA).
	ver, live uint32
	// prunes tracks the background deletion of superseded host elements
	// (see pruneLater). pruneMu lets one prune or one apply run at a
	// time: a prune must not run beside a change, which may write the
	// generation it is pruning.
	prunes  sync.WaitGroup
	pruneMu sync.Mutex

	// ready is closed once the policy the network was made with is
	// applied and verified, or failed to be (installErr); pending is that
	// policy's target (without services) until then. A Net from Begin
	// installs in the background; every other Net is ready when made.
	ready      chan struct{}
	installErr error
	pending    *firewall.Target

	closed bool
}

// readyNow is the ready channel of a Net that installs nothing in the
// background.
func readyNow() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// Wait waits until the policy the network was made with is applied, read
// back and verified, and returns what went wrong if it was not. The
// workload must not start before Wait returned nil. For a Net not made by
// Begin it returns at once.
func (n *Net) Wait(ctx context.Context) error {
	select {
	case <-n.ready:
		return n.installErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// target returns the applied target, or the pending one while the
// installation runs. The caller holds n.mu.
func (n *Net) target() *firewall.Target {
	select {
	case <-n.ready:
		return n.tgt
	default:
		return n.pending
	}
}

// File returns the sandbox's network namespace, for setns(2) by the jail
// before it starts the sandbox's init; it stays open until Close. Nil for
// a policy that allows nothing (the jail then makes a private namespace,
// CLONE_NEWNET) and after Close.
func (n *Net) File() *os.File {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil {
		return nil
	}
	return n.ns.File()
}

// Path returns the namespace's bind-mount path ("" when File is nil).
func (n *Net) Path() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil {
		return ""
	}
	return n.ns.Path()
}

// ResolvConf returns the sandbox's /etc/resolv.conf: the DNS stub for a
// policy with domain rules, otherwise a file with no nameserver.
func (n *Net) ResolvConf() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return resolvConf(n.target())
}

func resolvConf(t *firewall.Target) []byte {
	if t == nil || len(t.Policy.Domains) == 0 {
		return []byte("# ironclaw: no DNS (no domain allow rules)\n")
	}
	return []byte("# ironclaw: DNS stub, answers allowed names only\nnameserver " + t.HostAddr.String() + "\noptions ndots:0 attempts:2 timeout:2\n")
}

// Addr returns the sandbox's address (invalid when File is nil).
func (n *Net) Addr() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	t := n.target()
	if t == nil || n.ns == nil {
		return netip.Addr{}
	}
	return t.SandboxAddr
}

// Gateway returns the host side of the link (invalid when File is nil).
func (n *Net) Gateway() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	t := n.target()
	if t == nil || n.ns == nil {
		return netip.Addr{}
	}
	return t.HostAddr
}

// Setup gives the sandbox key (state directory dir) its network for
// policy. For a policy that allows nothing it makes nothing and returns a
// Net whose File is nil. Otherwise it returns only once the rulesets are
// applied, read back and verified; on any error everything made so far is
// removed. The caller holds dir's lock for the sandbox's lifetime.
func Setup(ctx context.Context, cfg Config, dir string, key sandbox.Key, policy firewall.Policy) (*Net, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if !key.Valid() {
		return nil, fmt.Errorf("network setup: invalid sandbox key %q", key)
	}
	n := &Net{cfg: c, dir: dir, key: key, log: c.Logger.With("sandbox_key", string(key)), ready: readyNow()}
	if !policy.Networked() {
		return n, nil
	}
	if err := n.setup(ctx, policy); err != nil {
		if rerr := n.teardown(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
		}
		return nil, fmt.Errorf("network setup: %w", err)
	}
	return n, nil
}

func (n *Net) setup(ctx context.Context, policy firewall.Policy) error {
	names := NamesOf(n.key)
	n.rec = &record{Version: 1, Key: string(n.key), Names: names, NetnsDir: n.cfg.NetnsDir, Format: firewall.Format}
	if err := writeRecord(n.dir, RecordFile, n.rec); err != nil {
		return err
	}
	n.cfg.at("record")
	lease, err := n.cfg.addrPool().Take(string(n.key), func(l netns.Lease) error {
		n.rec.Lease = &l
		return writeRecord(n.dir, RecordFile, n.rec)
	})
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n.cfg.at("lease")
	ns, err := netns.Create(n.cfg.NetnsDir, names.Netns)
	if err != nil {
		return err
	}
	n.ns = ns
	n.cfg.at("netns")
	host, err := netns.Current()
	if err != nil {
		return err
	}
	defer host.Close()
	if err := netns.CreateVeth(host, ns, netns.Veth{HostName: names.HostIf, PeerName: SandboxIf, HostAddr: lease.Host, PeerAddr: lease.Sandbox}); err != nil {
		return err
	}
	n.cfg.at("veth")
	if err := n.enableForwarding(host); err != nil {
		return err
	}
	if n.cfg.Link == LinkTap {
		if err := createTap(ns); err != nil {
			return err
		}
		n.cfg.at("tap")
	}
	// The link is new, but its name is a hash of the sandbox's key, and
	// an earlier owner of that name (another root, a failed removal) may
	// have left elements under it. Verification by key cannot see those,
	// and this Net's versions start where that owner's did: so the first
	// install reads the link's elements back, deletes what it would not
	// have made, and verifies the host part in full.
	n.prevPart = nil
	return n.install(ctx, host, lease, policy)
}

// install computes the target, starts egress if the policy needs it,
// applies and verifies both rulesets.
func (n *Net) install(ctx context.Context, host *netns.NS, lease netns.Lease, policy firewall.Policy) error {
	deny, err := denyList(host, n.cfg.Pool)
	if err != nil {
		return err
	}
	t := &firewall.Target{
		Policy:      policy,
		SandboxAddr: lease.Sandbox.Addr(), HostAddr: lease.Host.Addr(), HostIf: n.rec.Names.HostIf,
		Deny: deny,
	}
	if n.cfg.Link == LinkTap {
		t.Guest = guestOf()
	}
	if len(policy.Domains) > 0 {
		if err := n.startEgress(ctx, t); err != nil {
			return err
		}
		n.cfg.at("egress")
	}
	if err := n.apply(t); err != nil {
		return err
	}
	n.tgt = t
	return nil
}

// startEgress starts the DNS stub and proxy for t's policy if they are
// not running, and sets t's services to theirs. A running server keeps
// its policy: the caller switches it once the rules are in place.
func (n *Net) startEgress(ctx context.Context, t *firewall.Target) error {
	if n.eg != nil {
		t.Services = n.eg.Services()
		return nil
	}
	resolver := n.cfg.Resolver
	if resolver == "" {
		var err error
		if resolver, err = DefaultResolver(); err != nil {
			return err
		}
	}
	eg, err := egress.Start(ctx, egress.Config{Listen: t.HostAddr, Resolver: resolver, Deny: t.Deny, Logger: n.log}, t.Policy)
	if err != nil {
		return err
	}
	n.eg = eg
	t.Services = eg.Services()
	return nil
}

// apply records t, then applies and verifies the sandbox and host rulesets.
func (n *Net) apply(t *firewall.Target) error {
	// A background prune of this link finishes first (it is off the
	// path unless changes come faster than prunes).
	n.pruneMu.Lock()
	defer n.pruneMu.Unlock()
	// Every apply that changes the target gets a new host version, whose
	// parity is the generation it writes: the other one than the live
	// one, whose elements stay until pruned; the switch is one element
	// moved from one generation set to the other. One that changes
	// nothing (a pool slot prepared for this very policy) keeps the
	// version: both rulesets then equal what the kernel is known to
	// hold, no commit is made, and they are verified all the same.
	if !n.holds(t) {
		n.ver++
	}
	n.rec.Target = &targetRecord{Allow: t.Policy.Rules(), Sandbox: t.SandboxAddr, Host: t.HostAddr, Deny: t.Deny, Services: t.Services, Guest: t.Guest, Version: n.ver}
	if err := writeRecord(n.dir, RecordFile, n.rec); err != nil {
		return err
	}
	inner, err := firewall.BuildSandbox(t)
	if err != nil {
		return err
	}
	part, err := firewall.BuildHost(t, n.ver)
	if err != nil {
		return err
	}
	prevInner, prevPart := n.prevInner, n.prevPart
	n.prevInner, n.prevPart = nil, nil
	n.cfg.at("rules-built")
	held, err := n.applyRules(&inner, &part, prevInner, prevPart)
	if err != nil && (prevInner != nil || prevPart != nil) {
		// The kernel did not hold what was last applied (someone changed
		// it): apply everything.
		n.log.Warn("ruleset changed behind our back; reapplying in full", "err", err)
		held, err = n.applyRules(&inner, &part, nil, nil)
	}
	if err == nil {
		err = n.cfg.injected("applied")
	}
	if err != nil {
		return err
	}
	n.prevInner, n.prevPart, n.live = &inner, held, n.ver
	return nil
}

// holds reports whether the rulesets last applied and verified on this
// network (prevInner and prevPart) were built from a target equal to t, so
// that applying t again changes nothing.
func (n *Net) holds(t *firewall.Target) bool {
	if n.prevInner == nil || n.prevPart == nil || n.rec.Target == nil {
		return false
	}
	r := n.rec.Target
	return slices.Equal(r.Allow, t.Policy.Rules()) &&
		r.Sandbox == t.SandboxAddr && r.Host == t.HostAddr &&
		n.rec.Names.HostIf == t.HostIf &&
		slices.Equal(r.Deny, t.Deny) &&
		r.Services == t.Services &&
		(r.Guest == nil) == (t.Guest == nil) && (r.Guest == nil || *r.Guest == *t.Guest) &&
		n.prevPart.Version == n.ver
}

// pruneLater deletes the host elements of the superseded generation in
// the background: deleting interval-set elements costs the kernel
// milliseconds on a host with many sandboxes, and they can no longer match
// anything. Close waits for it.
func (n *Net) pruneLater() {
	hostIf := n.rec.Names.HostIf
	n.prunes.Add(1)
	go func() {
		defer n.prunes.Done()
		if !n.pruneMu.TryLock() {
			return // one is running; the next update prunes the rest
		}
		defer n.pruneMu.Unlock()
		c, err := nftables.New()
		if err == nil {
			_, err = firewall.PruneHost(c, hostIf)
		}
		if err != nil {
			// The next change deletes them (prevPart still names them).
			n.log.Warn("prune superseded host elements", "err", err)
			return
		}
		if n.prevPart != nil {
			live := n.prevPart.Live()
			n.prevPart = &live
		}
	}()
}

// applyRules applies both rulesets (only the chains that differ from prev,
// when known) and verifies them. It returns what the host then holds for
// the link.
func (n *Net) applyRules(inner *firewall.SandboxRuleset, part *firewall.HostPart, prevInner *firewall.SandboxRuleset, prevPart *firewall.HostPart) (*firewall.HostPart, error) {
	// The sandbox's namespace and the host have separate nftables
	// instances: install and verify both side by side.
	errc := make(chan error, 1)
	go func() {
		sc, err := n.sandboxConn()
		if err == nil {
			err = firewall.ApplySandboxChanges(sc, prevInner, inner)
		}
		if err == nil {
			n.cfg.at("sandbox-rules")
			var sg *firewall.GenReader
			if sg, err = n.sandboxGen(); err == nil {
				err = firewall.VerifySandbox(sc, sg, inner)
			}
		}
		errc <- err
	}()
	held, herr := n.applyHost(prevPart, part)
	if err := errors.Join(<-errc, herr); err != nil {
		return nil, err
	}
	return held, nil
}

// applyHost applies the host part and verifies it: by key (the cost of
// which does not grow with the number of sandboxes, see
// firewall.VerifyHostElements) when the kernel is known to hold prev, in
// full after a full reapply. It returns what the host then holds for the
// link.
func (n *Net) applyHost(prev, part *firewall.HostPart) (*firewall.HostPart, error) {
	hc, err := n.hostConn()
	if err != nil {
		return nil, err
	}
	hg, err := n.hostGen()
	if err != nil {
		return nil, err
	}
	if err := firewall.EnsureHostBase(hc, hg); err != nil {
		return nil, err
	}
	held, err := firewall.ApplyHostHeld(hc, hg, prev, part)
	if err != nil {
		return nil, err
	}
	n.cfg.at("host-rules")
	if prev == nil {
		if err := firewall.VerifyHostPart(hc, hg, part); err != nil {
			return nil, err
		}
		return &held, nil
	}
	if n.hr == nil {
		if n.hr, err = firewall.NewElementReader(0); err != nil {
			return nil, err
		}
	}
	if err := firewall.VerifyHostElements(n.hr, part); err != nil {
		n.hr.Close() // a failed read may leave replies behind
		n.hr = nil
		return nil, err
	}
	return &held, nil
}

func (n *Net) sandboxConn() (*nftables.Conn, error) {
	if n.sc == nil {
		c, err := nftables.New(nftables.WithNetNSFd(n.ns.Fd()), nftables.AsLasting())
		if err != nil {
			return nil, fmt.Errorf("nftables in %s: %w", n.ns.Path(), err)
		}
		n.sc = c
	}
	return n.sc, nil
}

func (n *Net) hostConn() (*nftables.Conn, error) {
	if n.hc == nil {
		c, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return nil, fmt.Errorf("nftables on the host: %w", err)
		}
		n.hc = c
	}
	return n.hc, nil
}

// sandboxGen returns the lasting reader of the sandbox namespace's
// ruleset generation, made on first use.
func (n *Net) sandboxGen() (*firewall.GenReader, error) {
	if n.sg == nil {
		g, err := firewall.NewGenReader(n.ns.Fd())
		if err != nil {
			return nil, fmt.Errorf("nftables generation in %s: %w", n.ns.Path(), err)
		}
		n.sg = g
	}
	return n.sg, nil
}

// hostGen returns the lasting reader of the host's ruleset generation,
// made on first use.
func (n *Net) hostGen() (*firewall.GenReader, error) {
	if n.hg == nil {
		g, err := firewall.NewGenReader(0)
		if err != nil {
			return nil, fmt.Errorf("nftables generation on the host: %w", err)
		}
		n.hg = g
	}
	return n.hg, nil
}

// conns returns the lasting nftables connections to the sandbox's
// namespace and to the host, made on first use.
func (n *Net) conns() (sandboxConn, hostConn *nftables.Conn, err error) {
	if sandboxConn, err = n.sandboxConn(); err != nil {
		return nil, nil, err
	}
	if hostConn, err = n.hostConn(); err != nil {
		return nil, nil, err
	}
	return sandboxConn, hostConn, nil
}

// closeConns closes the lasting connections. Closing a netlink socket
// that lives in another namespace takes milliseconds (the netlink library
// tears down the thread it made there), which would sit on every sandbox's
// exit path; async does it in the background and logs a failure.
func (n *Net) closeConns(async bool) error {
	conns := []*nftables.Conn{n.sc, n.hc}
	hr, gens := n.hr, []*firewall.GenReader{n.sg, n.hg}
	n.sc, n.hc, n.hr, n.sg, n.hg = nil, nil, nil, nil, nil
	closeAll := func() error {
		errs := []error{hr.Close()}
		for _, g := range gens {
			errs = append(errs, g.Close())
		}
		for _, c := range conns {
			if c != nil {
				errs = append(errs, c.CloseLasting())
			}
		}
		return errors.Join(errs...)
	}
	if !async {
		return closeAll()
	}
	go func() {
		if err := closeAll(); err != nil {
			n.log.Warn("close nftables connections", "err", err)
		}
	}()
	return nil
}

// denyList is the first deny tier: the host's own IPv4 addresses and the
// sandbox pool.
func denyList(host *netns.NS, pool netip.Prefix) ([]netip.Prefix, error) {
	addrs, err := netns.Addrs(host)
	if err != nil {
		return nil, err
	}
	out := []netip.Prefix{pool}
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		if pool.Contains(a) || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, netip.PrefixFrom(a, 32))
	}
	return out, nil
}

// DefaultResolver returns the first nameserver of the host's
// /etc/resolv.conf as host:53.
func DefaultResolver() (string, error) {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return "", fmt.Errorf("find the host's resolver: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "nameserver" {
			if a, err := netip.ParseAddr(fs[1]); err == nil {
				return net.JoinHostPort(a.String(), "53"), nil
			}
		}
	}
	return "", errors.New("find the host's resolver: no nameserver in /etc/resolv.conf")
}

// Update replaces the sandbox's policy: it applies and verifies both
// rulesets (one transaction each), then switches the egress proxy and DNS
// stub to the new policy, then cuts tracked connections the new policy no
// longer allows, both in the sandbox's namespace and on the host. Updating
// a sandbox created with a policy that allows nothing fails with
// sandbox.ErrUnsupported: its namespace has no link.
//
// The outcome of an error is one of two:
//   - An error wrapping ErrFlowsNotCut: the new policy is in force (rules
//     applied and verified, proxy and stub switched, record updated), but
//     connections it no longer allows may still be open. Calling Update
//     again with the same policy tries to cut them again.
//   - Any other error: the old policy is still in force everywhere. The
//     proxy and stub were never switched, and the old rulesets and record
//     were put back (if putting them back failed too, the error says so,
//     and Verify reports what the kernel holds).
func (n *Net) Update(ctx context.Context, policy firewall.Policy) error {
	return n.update(ctx, policy, true)
}

// UpdateUnused is Update for a network whose sandbox has run no workload
// yet (a warm pool member being handed out), which is about to start its
// first command. Two things Update does are left out:
//   - No connection of the sandbox can exist, so it looks for none to
//     cut. Finding them takes a conntrack dump in the sandbox's namespace
//     and one on the host, and each walks the kernel's whole conntrack
//     hash table whatever it holds: 10-20 ms each on a small host with the
//     default 262144 buckets.
//   - The superseded policy generation's host elements, which match
//     nothing once the link has moved to the new generation, are not
//     pruned in the background right away (about 16 ms of kernel work,
//     beside the sandbox's first command). A later Update deletes them in
//     its own transaction, and the removal of the link's host elements
//     takes them with the rest: Close for a network of its own, the pool's
//     Maintain when it destroys a used slot.
func (n *Net) UpdateUnused(ctx context.Context, policy firewall.Policy) error {
	return n.update(ctx, policy, false)
}

func (n *Net) update(ctx context.Context, policy firewall.Policy, used bool) error {
	if err := n.Wait(ctx); err != nil {
		return fmt.Errorf("network update: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("network update: closed")
	}
	if n.ns == nil {
		return fmt.Errorf("network update: sandbox was started without network: %w", sandbox.ErrUnsupported)
	}
	old := n.tgt
	t := *old
	t.Policy = policy
	t.Services = firewall.Services{}
	started := false
	if len(policy.Domains) > 0 {
		started = n.eg == nil
		if err := n.startEgress(ctx, &t); err != nil {
			return fmt.Errorf("network update: %w", err)
		}
	}
	if err := n.apply(&t); err != nil {
		errs := []error{fmt.Errorf("network update: %w", err)}
		if rerr := n.apply(old); rerr != nil {
			errs = append(errs, fmt.Errorf("network update: put the previous policy back: %w", rerr))
		}
		if started {
			errs = append(errs, n.eg.Close())
			n.eg = nil
		}
		return errors.Join(errs...)
	}
	if n.eg != nil {
		n.eg.SetPolicy(policy)
	}
	n.tgt = &t
	if !used {
		return nil
	}
	n.pruneLater()
	err := n.cfg.injected("cut-flows")
	if err == nil {
		err = cutFlows(n.ns, &t)
	}
	if err != nil {
		return fmt.Errorf("network update: %w: %w", ErrFlowsNotCut, err)
	}
	return nil
}

// Report is what Verify found.
type Report struct {
	// Sandbox and Host are the live chains as read from the kernel (the
	// host's: its fixed base chains, shared by all sandboxes).
	Sandbox []firewall.Chain
	Host    []firewall.Chain
	// SandboxElements are the live elements of the sandbox table's sets
	// (its policy).
	SandboxElements []firewall.Element
	// Elements are this sandbox's live elements of the host table's sets.
	Elements []firewall.Element
	// Err is nil when both rulesets match what was built.
	Err error
}

// Verify reads both rulesets back and checks them against the policy. The
// returned error is about reading; a mismatch is in Report.Err.
func (n *Net) Verify(ctx context.Context) (Report, error) {
	if err := n.Wait(ctx); err != nil {
		return Report{}, fmt.Errorf("network verify: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ns == nil {
		return Report{}, nil
	}
	sc, hc, err := n.conns()
	if err != nil {
		return Report{}, err
	}
	return verify(sc, hc, n.tgt, n.live)
}

// verify reads both rulesets of t back through sc (the sandbox's
// namespace) and hc (the host) and compares them with what t builds, the
// host part at version ver.
func verify(sc, hc *nftables.Conn, t *firewall.Target, ver uint32) (Report, error) {
	var r Report
	inner, err := firewall.BuildSandbox(t)
	if err != nil {
		return r, err
	}
	part, err := firewall.BuildHost(t, ver)
	if err != nil {
		return r, err
	}
	live, err := firewall.ReadSandbox(sc)
	if err != nil {
		return r, err
	}
	r.Sandbox, r.SandboxElements = live.Chains, live.Elements
	for _, c := range firewall.BuildHostBase() {
		if live, err := firewall.ReadChain(hc, c.Name); err == nil {
			r.Host = append(r.Host, *live)
		}
	}
	if live, err := firewall.ReadHostPart(hc, t.HostIf); err == nil {
		r.Elements = live.Live().Elements
	}
	r.Err = errors.Join(firewall.VerifySandbox(sc, nil, &inner), firewall.VerifyHost(hc, &part))
	return r, nil
}

// Close stops egress and removes every object of the network, then the
// record. It is idempotent.
func (n *Net) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	<-n.ready // the installation writes what teardown removes
	n.prunes.Wait()
	if n.rec == nil {
		return nil
	}
	return n.teardown()
}

// teardown removes what n.rec names (used by Close and by a failed Setup).
func (n *Net) teardown() error {
	var shutErr error
	if n.slot != nil {
		shutErr = n.shutSlot()
	}
	errs := []error{shutErr, n.closeConns(true)}
	if n.eg != nil {
		errs = append(errs, n.eg.Close())
		n.eg = nil
	}
	if n.ns != nil {
		errs = append(errs, n.ns.Close())
		n.ns = nil
	}
	if n.slot != nil {
		errs = append(errs, n.slot.release(n.dir, n.key, shutErr == nil))
		n.cfg.wake()
		return errors.Join(errs...)
	}
	if n.rec != nil {
		// The record goes only once everything it names is gone;
		// otherwise it stays for Reclaim to retry.
		err := removeObjects(n.rec)
		if err == nil {
			err = errors.Join(removeRecord(n.dir), restoreForwarding(n.cfg.Root))
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
