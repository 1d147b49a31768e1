package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// Status is what Inspect found about a sandbox's network.
type Status struct {
	// Networked is false when the sandbox has no network record (a
	// loopback-only sandbox, or one that does not exist).
	Networked   bool
	Names       Names
	NetnsPath   string
	SandboxAddr netip.Addr
	HostAddr    netip.Addr
	Allow       []string
	Services    firewall.Services
	// Slot is the pool slot the network was claimed from, if any.
	Slot string
	// Report holds the live rules and the verification result.
	Report Report
}

// Inspect reads the network record in dir (a sandbox state directory),
// reads the sandbox's rules back from the kernel and verifies them against
// the recorded policy, from any process (`ironclaw net show`). The error is
// about reading; a ruleset that does not verify is Status.Report.Err.
func Inspect(ctx context.Context, dir string) (*Status, error) {
	rec, err := readRecord(dir, RecordFile)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return &Status{}, nil
	}
	if !sandbox.Key(rec.Key).Valid() {
		return nil, fmt.Errorf("inspect: record has an invalid key %q", rec.Key)
	}
	st := &Status{Networked: true, Names: rec.Names, NetnsPath: rec.netnsPath(), Slot: rec.Slot}
	t, err := rec.target()
	if err != nil {
		return st, fmt.Errorf("inspect: %w (setup did not finish)", err)
	}
	st.SandboxAddr, st.HostAddr, st.Allow, st.Services = t.SandboxAddr, t.HostAddr, t.Policy.Rules(), t.Services
	ns, err := netns.Open(st.NetnsPath)
	if err != nil {
		st.Report.Err = fmt.Errorf("%w: %v", firewall.ErrVerify, err)
		return st, nil
	}
	defer ns.Close()
	sc, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		return st, err
	}
	hc, err := nftables.New()
	if err != nil {
		return st, err
	}
	st.Report, err = verify(sc, hc, t, rec.version())
	if err != nil {
		return st, errors.Join(fmt.Errorf("inspect: %w", err))
	}
	return st, nil
}
