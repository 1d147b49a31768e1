package netns

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// AddrPool hands out /30 subnets of Prefix, one per networked sandbox, with
// the leases kept as files in Dir so that separate ironclaw processes never
// hand out the same subnet. A lease file is named after the subnet's index
// and holds its owner's name; only that owner releases it.
type AddrPool struct {
	Prefix netip.Prefix
	Dir    string
}

// Lease is one /30: the host side is .1, the sandbox .2 (relative to the
// subnet), with .0 and .3 unused, so every side has a normal subnet and
// broadcast address.
type Lease struct {
	Index   int          `json:"index"`
	Path    string       `json:"path"`
	Subnet  netip.Prefix `json:"subnet"`
	Host    netip.Prefix `json:"host"`
	Sandbox netip.Prefix `json:"sandbox"`
}

// Validate checks the pool's prefix.
func (p AddrPool) Validate() error {
	if !p.Prefix.Addr().Is4() || p.Prefix.Bits() > 30 || p.Prefix.Masked() != p.Prefix {
		return fmt.Errorf("address pool %v: want an IPv4 network of /30 or larger", p.Prefix)
	}
	if p.Dir == "" {
		return errors.New("address pool: no lease directory")
	}
	return nil
}

// Size is the number of /30 subnets in the pool.
func (p AddrPool) Size() int { return 1 << (30 - p.Prefix.Bits()) }

// At returns the lease for subnet index i (not taking it).
func (p AddrPool) At(i int) Lease {
	base := p.Prefix.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i) * 4
	a := func(off uint32) netip.Addr {
		x := v + off
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	return Lease{
		Index:   i,
		Path:    filepath.Join(p.Dir, strconv.Itoa(i)),
		Subnet:  netip.PrefixFrom(a(0), 30),
		Host:    netip.PrefixFrom(a(1), 30),
		Sandbox: netip.PrefixFrom(a(2), 30),
	}
}

// ErrPoolFull is returned when every subnet of the pool is leased.
var ErrPoolFull = errors.New("address pool exhausted")

// Take leases a free subnet for owner. Before creating each candidate's
// lease file it calls record(candidate), which must durably note the
// candidate (the caller's GC record), so that a crash at any point leaves a
// lease that GC can find and release. Probing starts at a slot derived from
// owner, so concurrent callers rarely contend.
func (p AddrPool) Take(owner string, record func(Lease) error) (Lease, error) {
	if err := p.Validate(); err != nil {
		return Lease{}, err
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return Lease{}, fmt.Errorf("lease dir %s: %w", p.Dir, err)
	}
	h := fnv.New32a()
	h.Write([]byte(owner))
	n := p.Size()
	start := int(h.Sum32() % uint32(n))
	for k := 0; k < n; k++ {
		l := p.At((start + k) % n)
		if _, err := os.Lstat(l.Path); err == nil {
			continue
		}
		if err := record(l); err != nil {
			return Lease{}, err
		}
		f, err := os.OpenFile(l.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return Lease{}, fmt.Errorf("lease %s: %w", l.Path, err)
		}
		_, werr := f.WriteString(owner)
		cerr := f.Close()
		if werr != nil || cerr != nil {
			os.Remove(l.Path)
			return Lease{}, fmt.Errorf("lease %s: %w", l.Path, errors.Join(werr, cerr))
		}
		return l, nil
	}
	return Lease{}, fmt.Errorf("%w: all %d subnets of %v are leased", ErrPoolFull, n, p.Prefix)
}

// Release removes the lease file at path if owner holds it. A missing file
// or another owner's lease is left alone without error.
func Release(path, owner string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read lease %s: %w", path, err)
	}
	if !bytes.Equal(b, []byte(owner)) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release lease %s: %w", path, err)
	}
	return nil
}
