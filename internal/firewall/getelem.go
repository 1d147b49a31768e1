package firewall

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Reading elements back by key. Dumping a set (NFT_MSG_GETSETELEM with
// NLM_F_DUMP, what nftables.Conn.GetSetElements does) costs time in
// proportion to the set: on a host with 500 sandboxes, reading one
// sandbox's elements back from every shared set took about 8 ms, on the
// critical path of every start. An ElementReader instead asks the kernel
// for the given keys only (NFT_MSG_GETSETELEM without NLM_F_DUMP: the set
// backend's lookup), one request per set, all requests in one send, so the
// cost of reading a sandbox's elements back does not grow with the number
// of sandboxes.

// nftaSetElemKeyEnd is NFTA_SET_ELEM_KEY_END (the end of a concatenated
// range, for pipapo sets), which golang.org/x/sys/unix does not name.
const nftaSetElemKeyEnd = 10

// ElementReader reads elements of IronClaw's table by key over its own
// netlink socket, in one network namespace. It is not safe for concurrent
// use. After an error it is closed and must not be used again: the
// socket may still hold replies to the failed requests.
type ElementReader struct {
	c *netlink.Conn
}

// NewElementReader opens an ElementReader in the network namespace nsFd
// refers to (0: the calling thread's).
func NewElementReader(nsFd int) (*ElementReader, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("open nftables element reader: %w", err)
	}
	return &ElementReader{c: c}, nil
}

// Close closes the reader's socket. It is idempotent.
func (r *ElementReader) Close() error {
	if r == nil || r.c == nil {
		return nil
	}
	err := r.c.Close()
	r.c = nil
	return err
}

// Get asks the kernel for els (by set and key; for an interval set, the
// range starting at the key) and returns what it holds for them, with
// their ranges and values as the kernel has them. An element the kernel
// does not hold fails the whole call (ENOENT).
func (r *ElementReader) Get(els []Element) ([]Element, error) {
	out, err := r.get(els)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("read elements: %w", err)
	}
	return out, nil
}

// get is Get without closing the reader after an error.
func (r *ElementReader) get(els []Element) ([]Element, error) {
	if r.c == nil {
		return nil, errors.New("reader closed")
	}
	var order []string
	bySet := map[string][]Element{}
	for _, e := range els {
		if _, ok := bySet[e.Set]; !ok {
			order = append(order, e.Set)
		}
		bySet[e.Set] = append(bySet[e.Set], e)
	}
	var msgs []netlink.Message
	for _, set := range order {
		d, ok := setDefOf(set)
		if !ok {
			return nil, fmt.Errorf("unknown set %s", set)
		}
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, TableName)
		ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
		ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ne *netlink.AttributeEncoder) error {
			for _, e := range bySet[set] {
				ne.Nested(unix.NFTA_LIST_ELEM, func(ee *netlink.AttributeEncoder) error {
					ee.Nested(unix.NFTA_SET_ELEM_KEY, func(ve *netlink.AttributeEncoder) error {
						ve.Bytes(unix.NFTA_DATA_VALUE, e.Key)
						return nil
					})
					if d.interval && len(e.KeyEnd) > 0 {
						ee.Nested(nftaSetElemKeyEnd, func(ve *netlink.AttributeEncoder) error {
							ve.Bytes(unix.NFTA_DATA_VALUE, e.KeyEnd)
							return nil
						})
					}
					return nil
				})
			}
			return nil
		})
		b, err := ae.Encode()
		if err != nil {
			return nil, fmt.Errorf("elements of %s: %w", set, err)
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
				Flags: netlink.Request | netlink.Acknowledge,
			},
			// struct nfgenmsg: family, version, resource id.
			Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, b...),
		})
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	return r.roundTrip(msgs)
}

// roundTrip sends msgs in one send and reads replies until every request
// is acknowledged.
func (r *ElementReader) roundTrip(msgs []netlink.Message) ([]Element, error) {
	if _, err := r.c.SendMessages(msgs); err != nil {
		return nil, err
	}
	var out []Element
	for acks := 0; acks < len(msgs); {
		replies, err := r.c.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range replies {
			switch m.Header.Type {
			case netlink.Error:
				acks++
			case netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM):
				els, err := decodeElements(m.Data)
				if err != nil {
					return nil, err
				}
				out = append(out, els...)
			}
		}
	}
	return out, nil
}

// decodeElements decodes an NFT_MSG_NEWSETELEM message (after nlmsghdr).
func decodeElements(b []byte) ([]Element, error) {
	if len(b) < 4 {
		return nil, errors.New("short element message")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return nil, err
	}
	var set string
	var out []Element
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			ad.Nested(func(ld *netlink.AttributeDecoder) error {
				for ld.Next() {
					if ld.Type() != unix.NFTA_LIST_ELEM {
						continue
					}
					var e Element
					ld.Nested(func(ed *netlink.AttributeDecoder) error {
						for ed.Next() {
							var dst *[]byte
							switch ed.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								dst = &e.Key
							case nftaSetElemKeyEnd:
								dst = &e.KeyEnd
							case unix.NFTA_SET_ELEM_DATA:
								dst = &e.Val
							default:
								continue
							}
							ed.Nested(func(vd *netlink.AttributeDecoder) error {
								for vd.Next() {
									if vd.Type() == unix.NFTA_DATA_VALUE {
										*dst = vd.Bytes()
									}
								}
								return nil
							})
						}
						return nil
					})
					out = append(out, e)
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	d, ok := setDefOf(set)
	if !ok {
		return nil, fmt.Errorf("element of unknown set %q", set)
	}
	for i := range out {
		out[i].Set = set
		if !d.interval {
			out[i].KeyEnd = nil
		}
		if d.data == nil {
			out[i].Val = nil
		}
	}
	return out, nil
}

// VerifyHostElements checks, through r (a reader in the host's
// namespace), that the host table holds every element of part exactly (the
// same range, the same value), the link's entry in the set of part's
// generation included. Unlike VerifyHostPart it does not dump the shared
// sets, so its cost does not grow with the number of sandboxes; the price
// is that it cannot see elements part does not have. There are none that
// matter as long as the caller's prev for ApplyHostHeld was true: that
// apply deleted every element of the link in part's generation that part
// does not have, and the link's entry in the other generation's set.
// Elements that no apply put there are found by VerifyHostPart (the first
// install, a reapply, Net.Verify, `ironclaw net show`).
func VerifyHostElements(r *ElementReader, part *HostPart) error {
	got, err := r.Get(part.Elements)
	if err != nil {
		return fmt.Errorf("%w: host elements of %s: %v", ErrVerify, part.Iface, err)
	}
	return compareElements("host "+part.Iface, got, part.Elements)
}

// Has reports whether the kernel holds e (by set and key; for an interval
// set, a range that starts at the key). Unlike Get, a missing element
// leaves the reader usable.
func (r *ElementReader) Has(e Element) (bool, error) {
	_, err := r.get([]Element{e})
	if err == nil {
		return true, nil
	}
	var oe *netlink.OpError
	if errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOENT) {
		// One request, answered by one error: the socket holds nothing
		// more.
		return false, nil
	}
	r.Close()
	return false, fmt.Errorf("read elements: %w", err)
}
