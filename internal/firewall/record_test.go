package firewall

import (
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// recorder is an nftables connection that records the netlink requests it
// would send: one entry per send (each Flush is one send of one batch).
type recorder struct {
	sends [][]netlink.Message
}

func (r *recorder) conn(t *testing.T) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		// The test dial is also called for each receive, with no request.
		if len(req) > 0 {
			r.sends = append(r.sends, req)
		}
		return req, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func msgType(m netlink.Message) uint16 { return uint16(m.Header.Type) }

const nftMsg = unix.NFNL_SUBSYS_NFTABLES << 8

// TestApplyIsOneBatch records what Apply sends: every change is a single
// batch (BEGIN ... END in one send), so the kernel applies it atomically;
// the shared host table is never deleted or flushed as a whole, and the
// host part only adds and deletes set elements.
func TestApplyIsOneBatch(t *testing.T) {
	tg := testTarget(t, "203.0.113.0/24:443/tcp", "example.com")
	inner, _ := BuildSandbox(tg)
	part, _ := BuildHost(tg, 1)
	tg2 := *tg
	tg2.Policy, _ = ParsePolicy([]string{"203.0.113.0/25:443/tcp"})
	part2, _ := BuildHost(&tg2, 2)
	inner2, _ := BuildSandbox(&tg2)
	for _, c := range []struct {
		name  string
		apply func(*nftables.Conn) error
	}{
		{"sandbox", func(c *nftables.Conn) error { return ApplySandbox(c, &inner) }},
		{"sandbox change", func(c *nftables.Conn) error { return ApplySandboxChanges(c, &inner, &inner2) }},
		{"host", func(c *nftables.Conn) error { return ApplyHostChanges(c, &HostPart{Iface: tg.HostIf}, &part) }},
		{"host change", func(c *nftables.Conn) error { return ApplyHostChanges(c, &part, &part2) }},
	} {
		var r recorder
		if err := c.apply(r.conn(t)); err != nil {
			t.Fatal(err)
		}
		if len(r.sends) != 1 {
			t.Fatalf("%s: %d sends, want one batch", c.name, len(r.sends))
		}
		msgs := r.sends[0]
		if msgType(msgs[0]) != unix.NFNL_MSG_BATCH_BEGIN || msgType(msgs[len(msgs)-1]) != unix.NFNL_MSG_BATCH_END {
			t.Fatalf("%s: not wrapped in BATCH_BEGIN/END", c.name)
		}
		for _, m := range msgs[1 : len(msgs)-1] {
			switch msgType(m) {
			case nftMsg | unix.NFT_MSG_DELTABLE:
				t.Errorf("%s: deletes a table", c.name)
			case nftMsg | unix.NFT_MSG_DELRULE:
				// A rule flush must name a chain: a DELRULE with only a
				// table would flush the whole (shared) table.
				if !hasAttr(m, unix.NFTA_RULE_CHAIN) {
					t.Errorf("%s: flushes a whole table", c.name)
				}
			}
			// The host part and a policy change in the sandbox are
			// elements only: no chain, rule or set is created or
			// deleted, so the kernel never re-validates or rebuilds
			// rules on a sandbox's change.
			if c.name != "sandbox" {
				if typ := msgType(m); typ != nftMsg|unix.NFT_MSG_NEWSETELEM && typ != nftMsg|unix.NFT_MSG_DELSETELEM {
					t.Errorf("%s: message type %#x, want set elements only", c.name, typ)
				}
				if !hasAttrPrefix(m, unix.NFTA_SET_ELEM_LIST_ELEMENTS, "") {
					t.Errorf("%s: element message without elements", c.name)
				}
			}
		}
	}
}

func attrs(m netlink.Message) map[uint16][]byte {
	out := map[uint16][]byte{}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return out
	}
	for ad.Next() {
		out[ad.Type()] = ad.Bytes()
	}
	return out
}

func hasAttr(m netlink.Message, typ uint16) bool { _, ok := attrs(m)[typ]; return ok }

func hasAttrPrefix(m netlink.Message, typ uint16, prefix string) bool {
	v, ok := attrs(m)[typ]
	return ok && len(v) >= len(prefix) && string(v[:len(prefix)]) == prefix
}
