package network

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

const helperEnv = "IRONCLAW_TEST_NET_HELPER"

type helperSpec struct {
	Root, NetnsDir, Resolver, Dir, Key, KillAt string
	Rules                                      []string
	// Deferred runs Begin with Config.DeferRemoval on an empty pool
	// (the network becomes a slot of its own) instead of Setup.
	Deferred bool
}

// TestNetHelperProcess is not a test: it is the body of the helper process
// TestKillDuringSetup re-executes the test binary as. It runs Setup and
// SIGKILLs itself at the step named in its spec.
func TestNetHelperProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		return
	}
	var s helperSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		t.Fatal(err)
	}
	kill := func() { syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	cfg := Config{Root: s.Root, NetnsDir: s.NetnsDir, Resolver: s.Resolver, step: func(name string) {
		if name == s.KillAt {
			kill()
		}
	}}
	p, err := firewall.ParsePolicy(s.Rules)
	if err != nil {
		t.Fatal(err)
	}
	if s.Deferred {
		cfg.DeferRemoval = true
		if _, err := Begin(t.Context(), cfg, s.Dir, sandbox.Key(s.Key), p); err != nil {
			t.Fatal(err)
		}
	} else if _, err := Setup(t.Context(), cfg, s.Dir, sandbox.Key(s.Key), p); err != nil {
		t.Fatal(err)
	}
	kill() // "done": killed with a complete network
}

// TestKillDuringSetup SIGKILLs a process in the middle of Setup, at every
// step, and checks that Reclaim then leaves nothing behind.
func TestKillDuringSetup(t *testing.T) {
	e := newEnv(t)
	for _, step := range []string{"record", "lease", "netns", "veth", "uplink-recorded", "uplink-guarded", "egress", "sandbox-rules", "host-rules", "done"} {
		t.Run(step, func(t *testing.T) {
			dir, key := e.sandboxDir(t, "killed-at-"+step)
			runKilledHelper(t, helperSpec{Root: e.cfg.Root, NetnsDir: e.cfg.NetnsDir, Resolver: e.cfg.Resolver,
				Dir: dir, Key: string(key), KillAt: step, Rules: []string{"203.0.113.0/24", "allowed.test"}})
			names := NamesOf(key)
			left := leftovers(t, e, dir, names)
			if step == "done" && len(left) < 4 {
				t.Fatalf("after a complete setup expected a namespace, a link, chains and a lease to reclaim; found %v", left)
			}
			if err := Reclaim(dir); err != nil {
				t.Fatalf("reclaim: %v", err)
			}
			if left := leftovers(t, e, dir, names); len(left) > 0 {
				t.Fatalf("left behind after Reclaim: %v", left)
			}
			if err := Reclaim(dir); err != nil {
				t.Fatalf("second reclaim: %v", err)
			}
		})
	}
}

// leftovers lists what exists of a sandbox's network objects.
func leftovers(t *testing.T, e *testEnv, dir string, names Names) []string {
	t.Helper()
	var out []string
	if _, err := os.Stat(filepath.Join(dir, RecordFile)); err == nil {
		out = append(out, "record")
	}
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	ok, err := netns.LinkExists(host, names.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		out = append(out, "link "+names.HostIf)
	}
	if netns.Mounted(filepath.Join(e.cfg.NetnsDir, names.Netns)) {
		out = append(out, "netns mount")
	}
	if _, err := os.Stat(filepath.Join(e.cfg.NetnsDir, names.Netns)); err == nil {
		out = append(out, "netns file")
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := firewall.ReadTable(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) > 0 {
		part, err := firewall.ReadHostPart(c, names.HostIf)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range part.Elements {
			out = append(out, "element "+e.String())
		}
		guarded, err := firewall.ReadUplinks(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range guarded {
			out = append(out, "guarded uplink "+g)
		}
	}
	// The test host's uplink had forwarding off before any sandbox.
	if v, err := netns.Forwarding(host, testutil.UplinkName); err != nil {
		t.Fatal(err)
	} else if v != "0" {
		out = append(out, "forwarding on "+testutil.UplinkName)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.Root, "net", fwdRecordFile)); err == nil {
		out = append(out, "forwarding record")
	}
	leases, err := os.ReadDir(filepath.Join(e.cfg.Root, "net", "leases"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, l := range leases {
		out = append(out, "lease "+l.Name())
	}
	return out
}

// TestNamesDistinct checks that IDs that differ only slightly, long IDs
// and Unicode IDs get distinct names within the kernel's limits, and that
// two near-identical IDs really get separate objects side by side.
func TestNamesDistinct(t *testing.T) {
	ids := []string{"vm-1", "vm_1", "vm-1 ", "VM-1", "vm.1", "vm-11", strings.Repeat("x", sandbox.MaxIDLen), strings.Repeat("x", sandbox.MaxIDLen-1) + "y",
		"日本語のサンドボックス🙂", "sandbox\u00e9", "sandbox\u0065\u0301"}
	seen := map[string]string{}
	for _, id := range ids {
		n := NamesOf(sandbox.KeyOf(id))
		if len(n.HostIf) > netns.MaxIfName || !strings.HasPrefix(n.HostIf, IfPrefix) {
			t.Errorf("%q: interface name %q does not fit IFNAMSIZ or lacks the prefix", id, n.HostIf)
		}
		for _, name := range []string{"link " + n.HostIf, "netns " + n.Netns} {
			if prev, dup := seen[name]; dup {
				t.Errorf("%.40q and %.40q share the %s", prev, id, name)
			}
			seen[name] = id
		}
	}

	e := newEnv(t)
	var nets []*Net
	for _, id := range []string{"vm-1", "vm_1", "日本語のサンドボックス🙂" + strings.Repeat("長", 300)} {
		nets = append(nets, e.setup(t, id, "203.0.113.10:8080/tcp"))
	}
	for i, a := range nets {
		if rep, err := a.Verify(t.Context()); err != nil || rep.Err != nil {
			t.Errorf("sandbox %d does not verify: %v %v", i, err, rep.Err)
		}
		for _, b := range nets[i+1:] {
			if a.rec.Names.HostIf == b.rec.Names.HostIf || a.Addr() == b.Addr() || a.Path() == b.Path() {
				t.Errorf("two sandboxes share objects: %+v / %+v", a.rec.Names, b.rec.Names)
			}
		}
	}
}

// TestSetupRollsBack makes Setup fail after the namespace, link and lease
// exist (the egress proxy cannot start: no usable resolver) and checks that
// nothing is left.
func TestSetupRollsBack(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg
	cfg.Resolver = "not-an-address"
	dir, key := e.sandboxDir(t, "rollback")
	p, _ := firewall.ParsePolicy([]string{"allowed.test"})
	var reached []string
	cfg.step = func(s string) { reached = append(reached, s) }
	if n, err := Setup(t.Context(), cfg, dir, key, p); err == nil {
		n.Close()
		t.Fatal("Setup succeeded with an unusable resolver")
	}
	if len(reached) < 4 {
		t.Fatalf("setup failed too early to test rollback: reached %v", reached)
	}
	if left := leftovers(t, e, dir, NamesOf(key)); len(left) > 0 {
		t.Fatalf("left behind after a failed Setup: %v", left)
	}
}

// runKilledHelper runs TestNetHelperProcess with spec in a child process
// and requires it to have been SIGKILLed at spec.KillAt.
func runKilledHelper(t *testing.T, spec helperSpec) {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/proc/self/exe", "-test.run=^TestNetHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper was not killed at %s: %v\n%s", spec.KillAt, err, out)
	}
}
