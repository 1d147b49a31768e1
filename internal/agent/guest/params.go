package guest

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Kernel command-line parameters read by the guest init. The host-side
// image and VM packages write them; both sides use these names.
const (
	ParamRoot     = "ironclaw.root"     // block device of the read-only rootfs, e.g. /dev/vda
	ParamRW       = "ironclaw.rw"       // block device of the writable layer (ext4); absent: tmpfs
	ParamNet      = "ironclaw.net"      // <ifname>,<addr/prefix>[,<gateway>]
	ParamChannel  = "ironclaw.channel"  // virtio-serial:<port name> or vsock:<port>
	ParamHostname = "ironclaw.hostname" // guest hostname
	ParamPowerOff = "ironclaw.poweroff" // "poweroff" (default) or "reboot": how shutdown ends the VM
	ParamDebug    = "ironclaw.debug"    // "1": log at debug level to the console
	ParamOwner    = "ironclaw.owner"    // "UID:GID": owner of what the agent's uploads and mkdir create (default: root)
)

// TokenPath is where the per-sandbox token sits in the initramfs. The init
// reads and deletes it before switching root.
const TokenPath = "/ironclaw/token"

// ModulesList is the initramfs file naming the modules to load, one path a
// line, in dependency order.
const ModulesList = "/lib/modules/ironclaw.modules"

// Params are the parsed ironclaw.* kernel parameters.
type Params struct {
	Root     string
	RW       string
	Net      *NetConfig
	Channel  Channel
	Hostname string
	Reboot   bool
	Debug    bool
	// Owner, when set, owns the files and directories the agent's file
	// operations create (the sandbox's user, as in a jail).
	Owner *Owner
	// ModParams maps a module name to its "param=value" options from the
	// command line ("virtio_mmio.device=..." and the like).
	ModParams map[string][]string
}

// Owner is a numeric file owner.
type Owner struct{ UID, GID uint32 }

// String renders o in the ironclaw.owner syntax.
func (o Owner) String() string {
	return strconv.FormatUint(uint64(o.UID), 10) + ":" + strconv.FormatUint(uint64(o.GID), 10)
}

// ParseOwner parses "UID:GID".
func ParseOwner(v string) (Owner, error) {
	u, g, ok := strings.Cut(v, ":")
	uid, err1 := strconv.ParseUint(u, 10, 32)
	gid, err2 := strconv.ParseUint(g, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return Owner{}, fmt.Errorf("%q: want UID:GID", v)
	}
	return Owner{UID: uint32(uid), GID: uint32(gid)}, nil
}

// NetConfig is one interface's static configuration.
type NetConfig struct {
	Iface   string
	Addr    netip.Prefix
	Gateway netip.Addr // invalid: no default route
}

// String renders n in the ironclaw.net syntax.
func (n NetConfig) String() string {
	s := n.Iface + "," + n.Addr.String()
	if n.Gateway.IsValid() {
		s += "," + n.Gateway.String()
	}
	return s
}

// Channel is how the agent reaches the host.
type Channel struct {
	Kind string // "virtio-serial" or "vsock"
	Name string // virtio-serial port name
	Port uint32 // vsock port
}

// String renders c in the ironclaw.channel syntax.
func (c Channel) String() string {
	if c.Kind == "vsock" {
		return "vsock:" + strconv.FormatUint(uint64(c.Port), 10)
	}
	return c.Kind + ":" + c.Name
}

// ParseCmdline parses a kernel command line. Unknown ironclaw.* parameters
// and malformed values are errors: a VM misconfigured by its host must not
// come up half-configured.
func ParseCmdline(cmdline string) (Params, error) {
	p := Params{Channel: Channel{Kind: "virtio-serial", Name: "org.ironclaw.agent"}, ModParams: map[string][]string{}}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		if mod, param, ok := strings.Cut(k, "."); ok && mod != "ironclaw" && param != "" {
			mod = strings.ReplaceAll(mod, "-", "_")
			p.ModParams[mod] = append(p.ModParams[mod], param+"="+v)
			continue
		}
		if !strings.HasPrefix(k, "ironclaw.") {
			continue
		}
		switch k {
		case ParamRoot:
			p.Root = v
		case ParamRW:
			p.RW = v
		case ParamHostname:
			p.Hostname = v
		case ParamDebug:
			p.Debug = v == "1"
		case ParamPowerOff:
			switch v {
			case "poweroff":
			case "reboot":
				p.Reboot = true
			default:
				return p, fmt.Errorf("%s=%q: want poweroff or reboot", k, v)
			}
		case ParamOwner:
			o, err := ParseOwner(v)
			if err != nil {
				return p, fmt.Errorf("%s: %w", k, err)
			}
			p.Owner = &o
		case ParamNet:
			n, err := ParseNet(v)
			if err != nil {
				return p, fmt.Errorf("%s: %w", k, err)
			}
			p.Net = &n
		case ParamChannel:
			c, err := ParseChannel(v)
			if err != nil {
				return p, fmt.Errorf("%s: %w", k, err)
			}
			p.Channel = c
		default:
			return p, fmt.Errorf("unknown parameter %s", k)
		}
	}
	if p.Root != "" && !strings.HasPrefix(p.Root, "/dev/") {
		return p, fmt.Errorf("%s=%q: want a /dev path", ParamRoot, p.Root)
	}
	if p.RW != "" && !strings.HasPrefix(p.RW, "/dev/") {
		return p, fmt.Errorf("%s=%q: want a /dev path", ParamRW, p.RW)
	}
	return p, nil
}

// ParseNet parses "<ifname>,<addr/prefix>[,<gateway>]".
func ParseNet(v string) (NetConfig, error) {
	parts := strings.Split(v, ",")
	if len(parts) < 2 || len(parts) > 3 {
		return NetConfig{}, fmt.Errorf("%q: want <ifname>,<addr/prefix>[,<gateway>]", v)
	}
	if parts[0] == "" || len(parts[0]) > 15 || strings.ContainsAny(parts[0], "/ ") {
		return NetConfig{}, fmt.Errorf("%q: bad interface name %q", v, parts[0])
	}
	pfx, err := netip.ParsePrefix(parts[1])
	if err != nil {
		return NetConfig{}, fmt.Errorf("%q: address: %w", v, err)
	}
	n := NetConfig{Iface: parts[0], Addr: pfx}
	if len(parts) == 3 {
		gw, err := netip.ParseAddr(parts[2])
		if err != nil {
			return NetConfig{}, fmt.Errorf("%q: gateway: %w", v, err)
		}
		if !pfx.Masked().Contains(gw) {
			return NetConfig{}, fmt.Errorf("%q: gateway %s is outside %s", v, gw, pfx.Masked())
		}
		n.Gateway = gw
	}
	return n, nil
}

// ParseChannel parses "virtio-serial:<name>" or "vsock:<port>".
func ParseChannel(v string) (Channel, error) {
	kind, arg, ok := strings.Cut(v, ":")
	if !ok || arg == "" {
		return Channel{}, fmt.Errorf("%q: want virtio-serial:<name> or vsock:<port>", v)
	}
	switch kind {
	case "virtio-serial":
		if strings.ContainsAny(arg, "/ ") {
			return Channel{}, fmt.Errorf("%q: bad port name", v)
		}
		return Channel{Kind: kind, Name: arg}, nil
	case "vsock":
		port, err := strconv.ParseUint(arg, 10, 32)
		if err != nil {
			return Channel{}, fmt.Errorf("%q: port: %w", v, err)
		}
		return Channel{Kind: kind, Port: uint32(port)}, nil
	}
	return Channel{}, fmt.Errorf("%q: unknown channel kind %q", v, kind)
}
