// Package network gives a sandbox its network: for a policy that allows
// anything, a network namespace of its own joined to the host by a veth
// pair with an address from a pool, NAT to the host's uplink, the
// default-deny firewall inside the namespace and on the host (package
// firewall), and, for domain rules, the DNS stub and proxy (package egress).
//
// Setup is fail-closed: it returns only after both rulesets have been
// applied, read back from the kernel and verified; on any error it rolls
// back everything it made. Every object is named after the sandbox's Key
// ("ic…" links and namespaces; on the host, set elements of table inet
// ironclaw keyed by the link's name) and listed in a record file (net.json) in the sandbox's state directory,
// written before the object is made, so Reclaim can remove whatever a
// killed process left and never touches anything it did not make.
//
// Replies reach a sandbox through the host's uplink, which needs IPv4
// forwarding on for it; IronClaw turns it on only while it has sandbox
// networks, and guards it so that the host forwards nothing else arriving
// there (see forwarding.go).
package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// Config are the host-wide settings of sandbox networking.
type Config struct {
	// Root is IronClaw's state root (/run/ironclaw); address leases and
	// pool slots live below Root/net.
	Root string
	// NetnsDir is where namespace bind mounts go; empty means /run/netns
	// (where `ip netns` finds them).
	NetnsDir string
	// Pool is the network sandbox addresses come from, carved into /30s;
	// empty means 10.200.0.0/16.
	Pool netip.Prefix
	// Resolver is the DNS server (host:port) the egress proxy resolves
	// names through; required for domain rules. DefaultResolver reads
	// the host's /etc/resolv.conf.
	Resolver string
	// Link is the kind of network: LinkVeth for a jail, LinkTap for a
	// micro-VM (the veth plus a tap in the namespace, see tap.go).
	Link LinkKind
	// Logger; nil discards.
	Logger *slog.Logger
	// DeferRemoval makes a network that Begin has to make itself (no
	// free slot in the pool) a pool slot of its own, claimed by the
	// sandbox: at Close it is shut and left used, and a pool maintainer
	// (KeepPool) destroys it, off the sandbox's exit path, instead of
	// Close removing it (about 30 ms here). Set it only where a
	// maintainer runs after the sandbox (Wake starts one); otherwise used
	// slots wait for `ironclaw gc`.
	DeferRemoval bool
	// Prepare is the policy Fill prepares new pool slots with, so that a
	// sandbox that claims one for the same policy finds its rules in
	// place and only reads them back and verifies them: no nftables
	// commit on its start path (see Net.holds). A slot prepared for one
	// policy may still be claimed for another, which is then installed
	// as on a slot prepared with none. Only address rules are prepared: a
	// policy with domain rules needs the egress servers of the process
	// that claims the slot, and its slots, like the zero Policy's, let
	// nothing out.
	Prepare firewall.Policy
	// Wake, if set, is called when the pool needs maintenance: Begin
	// took a slot from it or found none, or Close left a used slot. It
	// must not block.
	Wake func()

	// step, when set (by tests), is called at each step of setup, so a
	// test can kill the process there.
	step func(name string)
	// fail, when set (by tests), is asked at a few named points whether
	// to fail there, so a test can inject a failure the kernel would not
	// produce on demand.
	fail func(name string) error
}

func (c *Config) at(name string) {
	if c.step != nil {
		c.step(name)
	}
}

func (c *Config) wake() {
	if c.Wake != nil {
		c.Wake()
	}
}

// injected returns the failure a test injects at the point called name.
func (c *Config) injected(name string) error {
	if c.fail != nil {
		return c.fail(name)
	}
	return nil
}

// LinkKind selects how a sandbox namespace is joined to the host.
type LinkKind int

// Link kinds.
const (
	// LinkVeth joins the namespace to the host with a veth pair; the
	// workload runs in the namespace.
	LinkVeth LinkKind = iota
	// LinkTap adds a tap inside the namespace for a VMM running there;
	// the namespace routes the guest to the veth (see tap.go).
	LinkTap
)

// DefaultPool is the address pool used when Config.Pool is empty.
var DefaultPool = netip.MustParsePrefix("10.200.0.0/16")

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if out.Root == "" {
		return out, errors.New("network config: no state root")
	}
	if out.NetnsDir == "" {
		out.NetnsDir = "/run/netns"
	}
	if !out.Pool.IsValid() {
		out.Pool = DefaultPool
	}
	if out.Link != LinkVeth && out.Link != LinkTap {
		return out, fmt.Errorf("network config: link kind %d: %w", out.Link, sandbox.ErrUnsupported)
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	if err := out.addrPool().Validate(); err != nil {
		return out, fmt.Errorf("network config: %w", err)
	}
	return out, nil
}

func (c *Config) addrPool() netns.AddrPool {
	return netns.AddrPool{Prefix: c.Pool, Dir: filepath.Join(c.Root, "net", "leases")}
}

// Names are the kernel object names of one sandbox's network, all derived
// from its Key.
type Names struct {
	// Netns is the file name of the namespace bind mount.
	Netns string `json:"netns"`
	// HostIf is the host side of the veth pair: "ic" and 13 key
	// characters, 15 bytes, the most IFNAMSIZ allows. It also keys every
	// element of the sandbox in the host table's sets.
	HostIf string `json:"host_if"`
}

// SandboxIf is the name of the sandbox's side of its link, inside its own
// namespace.
const SandboxIf = "eth0"

// IfPrefix is the prefix every IronClaw link and namespace name starts with.
const IfPrefix = "ic"

// NamesOf returns the object names for key. Keys are 26 base32 characters
// of SHA-256; an interface name holds 13 of them (65 bits).
func NamesOf(key sandbox.Key) Names {
	return Names{
		Netns:  "ic-" + string(key),
		HostIf: IfPrefix + key.Short(13),
	}
}
