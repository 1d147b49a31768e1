// Package doctor inspects what this host offers IronClaw (user namespaces,
// cgroups, Landlock, seccomp, nftables, KVM, VMMs) and says, for each
// missing piece, what to do about it.
//
// Checks probe the kernel where a probe is cheap and safe; they never
// change host state.
package doctor

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/cgroup"
)

// Status is the verdict of one check.
type Status string

// Check verdicts.
const (
	OK      Status = "ok"
	Warn    Status = "warn"    // works, with a caveat
	Missing Status = "missing" // a feature that needs it cannot be used
)

// Check is one thing the host offers or lacks.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	// Fix says what to do when Status is not OK.
	Fix string `json:"fix,omitempty"`
}

// Probe is a named check function. Other packages contribute probes (the
// firewall's nftables probe, the VM backend's KVM boot probe) through
// Config, so that this package does not import them.
type Probe func(ctx context.Context) []Check

// Run runs the built-in checks and then extra, in order.
func Run(ctx context.Context, extra ...Probe) []Check {
	checks := []Check{userNamespaces(), cgroups(), landlock(), seccomp()}
	for _, p := range extra {
		checks = append(checks, p(ctx)...)
	}
	return checks
}

func userNamespaces() Check {
	c := Check{Name: "user namespaces"}
	n, err := readInt("/proc/sys/user/max_user_namespaces")
	switch {
	case err != nil:
		c.Status, c.Detail = Missing, "cannot read /proc/sys/user/max_user_namespaces: "+err.Error()
		c.Fix = "use a kernel built with CONFIG_USER_NS=y"
	case n == 0:
		c.Status, c.Detail = Missing, "user.max_user_namespaces is 0"
		c.Fix = "sysctl -w user.max_user_namespaces=15000"
	default:
		c.Status, c.Detail = OK, fmt.Sprintf("up to %d", n)
	}
	if os.Geteuid() != 0 {
		c.Status = Missing
		c.Detail += "; ironclaw is not running as root"
		c.Fix = "run ironclaw as root (it maps each sandbox to an unprivileged uid range itself)"
	}
	return c
}

func cgroups() Check {
	c := Check{Name: "cgroups"}
	h, err := cgroup.Detect()
	if err != nil {
		c.Status, c.Detail, c.Fix = Missing, err.Error(), "mount cgroup2 on /sys/fs/cgroup"
		return c
	}
	var have, lack []string
	for _, ctl := range []string{"memory", "pids", "cpu"} {
		if h.Available[ctl] {
			have = append(have, ctl)
		} else {
			lack = append(lack, ctl)
		}
	}
	sort.Strings(have)
	c.Detail = fmt.Sprintf("%s host, limits applied in cgroup v%d; controllers: %s", h.Mode, h.Version, strings.Join(have, ", "))
	switch {
	case len(lack) > 0:
		c.Status = Missing
		c.Detail += "; missing: " + strings.Join(lack, ", ")
		c.Fix = "enable the missing controllers (cgroup v2: add them to cgroup.subtree_control of the root); limits that need them are refused, never dropped"
	case h.Version == cgroup.V1:
		c.Status = Warn
		c.Detail += "; moving a sandbox into a v1 cgroup waits for an RCU grace period (several ms per start)"
		c.Fix = "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) for faster starts: sandboxes are then cloned straight into their cgroup"
	default:
		c.Status = OK
	}
	return c
}

func landlock() Check {
	c := Check{Name: "landlock"}
	v, err := llsys.LandlockGetABIVersion()
	switch {
	case err != nil || v <= 0:
		c.Status, c.Detail = Warn, "not available in this kernel"
		c.Fix = "use Linux 5.13+ with CONFIG_SECURITY_LANDLOCK=y and landlock in the lsm= boot list; sandboxes still run, without this extra layer"
	default:
		c.Status, c.Detail = OK, fmt.Sprintf("ABI %d", v)
	}
	return c
}

func seccomp() Check {
	c := Check{Name: "seccomp"}
	if _, err := unix.PrctlRetInt(unix.PR_GET_SECCOMP, 0, 0, 0, 0); err != nil {
		c.Status, c.Detail, c.Fix = Missing, "prctl(PR_GET_SECCOMP): "+err.Error(), "use a kernel built with CONFIG_SECCOMP_FILTER=y"
		return c
	}
	b, err := os.ReadFile("/proc/sys/kernel/seccomp/actions_avail")
	if err != nil {
		c.Status, c.Detail, c.Fix = Missing, "no /proc/sys/kernel/seccomp/actions_avail", "use a kernel built with CONFIG_SECCOMP_FILTER=y"
		return c
	}
	acts := strings.Fields(string(b))
	c.Status, c.Detail = OK, "filter actions: "+strings.Join(acts, " ")
	for _, need := range []string{"user_notif", "log"} {
		if !contains(acts, need) {
			c.Status = Warn
			c.Fix = "--seccomp-mode audit needs the " + need + " action (Linux 5.0+)"
		}
	}
	return c
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
