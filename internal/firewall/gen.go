package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// Consistent reads. The reads of the ruleset that google/nftables offers
// (GetRules, GetSets, GetSetElements, ListChains...) are netlink dumps,
// and it does not check NLM_F_DUMP_INTR on them: a dump that a commit
// interrupts (on the host, pool maintainers and other sandboxes commit
// all the time) silently returns part of the old state and part of the
// new, or misses elements altogether. Reading several objects (every
// chain's rules, every set) is several dumps, which a commit between them
// makes inconsistent even when each is whole. So every read of a group
// of dumps here runs between two readings of the namespace's ruleset
// generation (NFT_MSG_GETGEN, NFTA_GEN_ID: the kernel's base_seq, which
// every commit bumps before it makes its changes visible, and which the
// kernel's own dump consistency check uses), and is done again while the
// generation moved, a bounded number of times; then the read fails with
// ErrRulesetChanging. A read that is not a dump (ElementReader's lookups
// by key) is one request answered from one state and needs none of this.

// maxReads bounds the attempts of a consistent read: with the pauses of
// retryFrom (about 130 ms in all), a read gives up on commits that never
// leave it a quiet moment.
const maxReads = 24

// GenReader reads the ruleset generation of one network namespace over
// its own lasting netlink socket (google/nftables v0.3.0 has no call for
// NFT_MSG_GETGEN). A caller that reads the ruleset often (every sandbox
// start verifies it) keeps one per namespace and passes it to the reads
// that take one; given nil, a read opens a socket for itself, which costs
// about two generation round trips more. After a failed request the
// socket, which may still hold a reply, is closed and the next request
// opens another. It is not safe for concurrent use.
type GenReader struct {
	dial   func() (*netlink.Conn, error)
	c      *netlink.Conn
	closed bool
}

// NewGenReader opens a GenReader in the network namespace nsFd refers to
// (0: the calling thread's).
func NewGenReader(nsFd int) (*GenReader, error) {
	return dialGen(&nftables.Conn{NetNS: nsFd})
}

// dialGen opens a GenReader in the namespace c talks to (c.NetNS, 0 for
// the calling thread's), or through c's test dial.
func dialGen(c *nftables.Conn) (*GenReader, error) {
	g := &GenReader{dial: func() (*netlink.Conn, error) {
		return netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: c.NetNS})
	}}
	if c.TestDial != nil {
		g.dial = func() (*netlink.Conn, error) { return nltest.Dial(c.TestDial), nil }
	}
	if err := g.open(); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *GenReader) open() error {
	if g.closed {
		return errors.New("open nftables generation reader: closed")
	}
	nc, err := g.dial()
	if err != nil {
		return fmt.Errorf("open nftables generation reader: %w", err)
	}
	g.c = nc
	return nil
}

// Close closes the reader's socket. It is idempotent.
func (g *GenReader) Close() error {
	if g == nil || g.closed {
		return nil
	}
	g.closed = true
	if g.c == nil {
		return nil
	}
	err := g.c.Close()
	g.c = nil
	return err
}

// Generation returns the namespace's ruleset generation, which every
// commit there changes.
func (g *GenReader) Generation() (uint32, error) {
	if g.c == nil {
		if err := g.open(); err != nil {
			return 0, err
		}
	}
	id, err := g.request()
	if err != nil {
		g.c.Close() // it may hold the reply to the failed request
		g.c = nil
		return 0, fmt.Errorf("read nftables generation: %w", err)
	}
	return id, nil
}

func (g *GenReader) request() (uint32, error) {
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		// struct nfgenmsg: family, version, resource id.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	replies, err := g.c.Execute(req)
	if err != nil {
		return 0, err
	}
	for _, m := range replies {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWGEN) {
			continue
		}
		if id, ok := decodeGen(m.Data); ok {
			return id, nil
		}
	}
	return 0, errors.New("no NFTA_GEN_ID in the reply")
}

// decodeGen returns NFTA_GEN_ID of an NFT_MSG_NEWGEN message (after
// nlmsghdr).
func decodeGen(b []byte) (uint32, bool) {
	if len(b) < 4 {
		return 0, false
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return 0, false
	}
	ad.ByteOrder = binary.BigEndian
	var id uint32
	found := false
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_ID {
			id, found = ad.Uint32(), true
		}
	}
	return id, found && ad.Err() == nil
}

// consistent runs read, a group of dumps through c, until the generation
// of c's namespace is the same before and after it (see retryConsistent),
// reading the generation through g, or through a socket of its own when g
// is nil. g must be in c's namespace.
func consistent(c *nftables.Conn, g *GenReader, read func() error) error {
	if g != nil {
		return retryConsistent(g.Generation, maxReads, read)
	}
	g, err := dialGen(c)
	if err != nil {
		return err
	}
	err = retryConsistent(g.Generation, maxReads, read)
	return errors.Join(err, g.Close())
}

// retryConsistent runs read between two readings of gen, and again while
// they differ, at most attempts times, with a short growing pause between
// attempts so that a read longer than the gaps between commits still
// finds a quiet moment. What read returned counts only from an attempt
// the generation did not move during: its result then describes one state
// of the ruleset, error (a mismatch, a missing object) or not. read must
// start from scratch each time. After attempts moved reads it fails with
// ErrRulesetChanging.
func retryConsistent(gen func() (uint32, error), attempts int, read func() error) error {
	_, err := retryFrom(gen, nil, attempts, read)
	return err
}

// retryFrom is retryConsistent with the reading before the first attempt
// given (nil: read it), and returns the reading after the attempt that
// counted.
func retryFrom(gen func() (uint32, error), known *uint32, attempts int, read func() error) (uint32, error) {
	var before uint32
	if known != nil {
		before = *known
	} else {
		var err error
		if before, err = gen(); err != nil {
			return 0, err
		}
	}
	pause := 50 * time.Microsecond
	for i := 0; i < attempts; i++ {
		if i > 0 {
			// Jittered (0.5x to 1.5x), so that a read does not fall
			// in step with a committer that commits at a fixed rate.
			time.Sleep(pause/2 + rand.N(pause))
			pause = min(2*pause, 8*time.Millisecond)
			var err error
			if before, err = gen(); err != nil {
				return 0, err
			}
		}
		rerr := read()
		after, err := gen()
		if err != nil {
			return 0, err
		}
		if after == before {
			return after, rerr
		}
	}
	return 0, fmt.Errorf("%w: the generation moved during each of %d reads", ErrRulesetChanging, attempts)
}

// genChain checks dumps done one after another, each on its own, against
// the ruleset generation: the reading after one dump is the reading before
// the next, so n dumps cost n+1 readings, not 2n. A nil genChain checks
// nothing.
type genChain struct {
	gen  func() (uint32, error)
	last uint32
	have bool
}

// newGenChain returns a genChain reading through g (nil for a nil g).
func newGenChain(g *GenReader) *genChain {
	if g == nil {
		return nil
	}
	return &genChain{gen: g.Generation}
}

// do runs read, a single dump, until the generation held still during it
// (see retryConsistent).
func (ch *genChain) do(read func() error) error {
	if ch == nil {
		return read()
	}
	var known *uint32
	if ch.have {
		known = &ch.last
	}
	after, err := retryFrom(ch.gen, known, maxReads, read)
	ch.last, ch.have = after, err == nil
	return err
}

// wholeThenEach runs read, a series of dumps, once between two readings of
// g's generation (read given a nil genChain), which is all it costs while
// nothing commits; if the generation moved, again with every dump checked
// on its own through a genChain (n+1 readings for n dumps), which finds
// quiet moments on a host where commits come more often than the whole
// series takes. read must start from scratch each time.
func wholeThenEach(g *GenReader, read func(ch *genChain) error) error {
	_, err := retryFrom(g.Generation, nil, 1, func() error { return read(nil) })
	if !errors.Is(err, ErrRulesetChanging) {
		return err
	}
	return read(newGenChain(g))
}
