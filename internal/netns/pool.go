package netns

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
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
// and holds its owner's name; only that owner releases it. A lease file
// never exists without its owner's name: the name is written to a
// temporary file first, which is then hard-linked into place (link(2)
// fails if the lease exists, so exactly one taker wins).
type AddrPool struct {
	Prefix netip.Prefix
	Dir    string

	// step, when set (by tests), is called between the steps of making a
	// lease file, so a test can kill the process there.
	step func(name string)
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
		err := p.create(l.Path, owner)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return Lease{}, err
		}
		return l, nil
	}
	return Lease{}, fmt.Errorf("%w: all %d subnets of %v are leased", ErrPoolFull, n, p.Prefix)
}

func (p AddrPool) at(name string) {
	if p.step != nil {
		p.step(name)
	}
}

// create makes the lease file at path holding owner, atomically: owner is
// written to tmpPath(path, owner) and linked into place. It fails with an
// error wrapping os.ErrExist if the lease is taken. A crash at any point
// leaves at most the lease and the temporary file, both named after path
// and owner, which Release removes.
func (p AddrPool) create(path, owner string) error {
	tmp := tmpPath(path, owner)
	if err := os.WriteFile(tmp, []byte(owner), 0o600); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("lease %s: %w", path, err)
	}
	p.at("written")
	lerr := os.Link(tmp, path)
	p.at("linked")
	if err := os.Remove(tmp); err != nil && lerr == nil {
		lerr = err
		os.Remove(path)
	}
	if lerr != nil {
		return fmt.Errorf("lease %s: %w", path, lerr)
	}
	return nil
}

// tmpPath is the temporary file owner writes before linking it to the
// lease at path: in the same directory (link(2) needs that), named after
// the lease and a hash of the owner, so it is never taken for a lease.
func tmpPath(path, owner string) string {
	h := sha256.Sum256([]byte(owner))
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+hex.EncodeToString(h[:12])+".tmp")
}

// IsLeaseName reports whether name (an entry of a pool's Dir) is a lease
// file rather than a temporary one.
func IsLeaseName(name string) bool {
	_, err := strconv.Atoi(name)
	return err == nil
}

// Release removes the lease file at path if owner holds it, and owner's
// temporary file for it, if a crash left one. A missing file or another
// owner's lease is left alone without error.
func Release(path, owner string) error {
	if err := os.Remove(tmpPath(path, owner)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("release lease %s: %w", path, err)
	}
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
