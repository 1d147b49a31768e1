package daemonnet

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/api/apitest"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

var bin, root string

func TestMain(m *testing.M) {
	parents := testroot.Snapshot()
	testutil.HostNetNSMain(m, func() error {
		return errors.Join(testutil.SuiteLeaks(root, state.NameOf(root), network.IfPrefix), parents.Leaked())
	})
}

func build(t *testing.T) {
	t.Helper()
	testutil.RequireHostNetNS(t)
	if bin != "" {
		return
	}
	var err error
	if bin, root, err = testutil.BuildSuite("ironclaw-daemonnet-"); err != nil {
		t.Fatal(err)
	}
}

type daemon struct {
	cmd  *exec.Cmd
	c    *client.Client
	done chan struct{}
}

func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(bin, append([]string{"--root", root, "serve"}, args...)...), done: make(chan struct{})}
	d.cmd.Stderr = os.Stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	sock := filepath.Join(root, "ironclaw.sock")
	for deadline := time.Now().Add(30 * time.Second); !client.Reachable(context.Background(), sock, time.Second); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("daemon did not answer")
		}
	}
	var err error
	if d.c, err = client.New(client.Config{Socket: sock}); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *daemon) stop(sig syscall.Signal) {
	d.c.Close()
	d.cmd.Process.Signal(sig)
	<-d.done
}

// probe connects from inside the sandbox to each target and reports what
// it got, one line per target.
func probe(t *testing.T, c *client.Client, id string, targets ...string) map[string]bool {
	t.Helper()
	script := `
import socket, sys
for t in sys.argv[1:]:
    host, port = t.split(":")
    try:
        s = socket.create_connection((host, int(port)), timeout=1.5)
        print(t, "OK", s.recv(64).decode().strip())
    except Exception as e:
        print(t, "BLOCKED", type(e).__name__)
`
	res, err := c.ExecBuffered(context.Background(), id, api.ExecRequest{Argv: append([]string{"python3", "-c", script}, targets...)})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("probe: %+v %v", res, err)
	}
	out := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			out[f[0]] = f[1] == "OK"
		}
	}
	return out
}

// TestDaemonNetworkPolicy creates a networked sandbox through the daemon,
// proves its allow rules with real traffic to a peer namespace, replaces
// them while it runs and destroys it without leaving a link, rule or
// namespace; a second one dies with a SIGKILLed daemon and the next
// daemon reclaims it.
func TestDaemonNetworkPolicy(t *testing.T) {
	build(t)
	peer := netip.MustParseAddr("203.0.113.10")
	inet := testutil.NewInternet(t, peer)
	testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:8080"))
	testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:9090"))
	// No network pool here: every link must go with its sandbox.
	d := startDaemon(t, "--net-pool", "0")
	ctx := context.Background()
	sb, err := d.c.Create(ctx, api.CreateRequest{ID: "netbox", Network: &api.Network{Allow: []string{"203.0.113.10/32:8080/tcp"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sb.Addresses) != 2 || sb.Network.Allow[0] != "203.0.113.10/32:8080/tcp" {
		t.Errorf("created: addresses %v, network %+v", sb.Addresses, sb.Network)
	}
	got := probe(t, d.c, "netbox", "203.0.113.10:8080", "203.0.113.10:9090")
	if !got["203.0.113.10:8080"] || got["203.0.113.10:9090"] {
		t.Fatalf("initial policy: %v, want 8080 open and 9090 blocked", got)
	}
	sb, err = d.c.UpdateNetwork(ctx, "netbox", []string{"203.0.113.10/32:9090/tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if len(sb.Network.Allow) != 1 || sb.Network.Allow[0] != "203.0.113.10/32:9090/tcp" {
		t.Errorf("after update: %+v", sb.Network)
	}
	got = probe(t, d.c, "netbox", "203.0.113.10:8080", "203.0.113.10:9090")
	if got["203.0.113.10:8080"] || !got["203.0.113.10:9090"] {
		t.Fatalf("updated policy: %v, want 8080 blocked and 9090 open", got)
	}
	// The kernel holds the new rules and they verify.
	st, err := network.Inspect(ctx, filepath.Join(root, "sandboxes", sb.Key))
	if err != nil || st.Report.Err != nil || len(st.Allow) != 1 {
		t.Errorf("inspect: %+v %v", st, err)
	}
	if _, err := d.c.UpdateNetwork(ctx, "netbox", []string{"not a rule"}); !client.IsCode(err, api.CodeInvalidField) {
		t.Errorf("bad rule: %v", err)
	}

	if err := d.c.Destroy(ctx, "netbox"); err != nil {
		t.Fatal(err)
	}
	if links, err := testutil.LeakedLinks("ic"); err != nil || len(links) > 0 {
		t.Errorf("links left after destroying a networked sandbox: %v %v", links, err)
	}

	// A networked sandbox lives as long as the daemon that runs its
	// egress servers: a SIGKILLed daemon takes it along, and the next
	// daemon reclaims everything it had.
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "netbox2", Network: &api.Network{Allow: []string{"203.0.113.10/32:8080/tcp"}}}); err != nil {
		t.Fatal(err)
	}
	d.stop(syscall.SIGKILL)
	d = startDaemon(t, "--net-pool", "0")
	defer d.stop(syscall.SIGTERM)
	if sb, err := d.c.Get(ctx, "netbox2"); err == nil && sb.State == "running" {
		t.Errorf("a networked sandbox is running after its daemon was killed: %+v", sb)
	}
	if links, err := testutil.LeakedLinks("ic"); err != nil || len(links) > 0 {
		t.Errorf("links left after the restart reclaimed a networked sandbox: %v %v", links, err)
	}
}

// TestDaemonKeepsNetworkPool: the daemon keeps --net-pool free network
// slots once networked sandboxes are asked for: the first one, on an
// empty pool, makes its network as a slot of its own, the pool fills in
// the background while it runs, a destroyed sandbox's used slot is
// destroyed in the background, and a stopped daemon leaves free slots
// only, which a drain removes.
func TestDaemonKeepsNetworkPool(t *testing.T) {
	build(t)
	peer := netip.MustParseAddr("203.0.113.10")
	inet := testutil.NewInternet(t, peer)
	testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:8080"))
	cfg := network.Config{Root: root}
	pool := func() network.PoolState {
		st, err := network.Pool(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	waitPool := func(want network.PoolState) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); pool() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("pool %+v, want %+v", pool(), want)
			}
		}
	}
	if st := pool(); st != (network.PoolState{}) {
		t.Fatalf("pool not empty at the start: %+v", st)
	}
	d := startDaemon(t, "--net-pool", "2")
	ctx := context.Background()
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "pooled-net", Network: &api.Network{Allow: []string{"203.0.113.10/32:8080/tcp"}}}); err != nil {
		t.Fatal(err)
	}
	waitPool(network.PoolState{Free: 2, Claimed: 1})
	if got := probe(t, d.c, "pooled-net", "203.0.113.10:8080"); !got["203.0.113.10:8080"] {
		t.Fatalf("the allowed peer is not reachable: %v", got)
	}
	// The next one takes a free slot; the keeper refills.
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "pooled-net-2", Network: &api.Network{Allow: []string{"203.0.113.10/32:8080/tcp"}}}); err != nil {
		t.Fatal(err)
	}
	waitPool(network.PoolState{Free: 2, Claimed: 2})
	if got := probe(t, d.c, "pooled-net-2", "203.0.113.10:8080"); !got["203.0.113.10:8080"] {
		t.Fatalf("the allowed peer is not reachable from a pool slot: %v", got)
	}
	for _, id := range []string{"pooled-net", "pooled-net-2"} {
		if err := d.c.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	waitPool(network.PoolState{Free: 2})
	d.stop(syscall.SIGTERM)
	if st := pool(); st != (network.PoolState{Free: 2}) {
		t.Fatalf("pool after the daemon stopped: %+v, want 2 free slots only", st)
	}
	if out, err := exec.Command(bin, "--root", root, "net", "pool", "drain").CombinedOutput(); err != nil {
		t.Fatalf("drain: %v %s", err, out)
	}
	if links, err := testutil.LeakedLinks("ic"); err != nil || len(links) > 0 {
		t.Errorf("links left after a drain: %v %v", links, err)
	}
}

// TestDaemonWarmNetworkPool: warm pools whose templates have address
// rules serve creates with any address rules: a member of the create's
// own rules when one is ready, else one of another pool of the same
// shape, given the create's rules. Such a member runs its first command
// under the asked rules only (real traffic to a peer namespace, the
// kernel's rules read back, and the network_updated event before the
// exec_started one), and `ironclaw run --allow` through the daemon takes
// such a member and leaves its destroy to the daemon.
func TestDaemonWarmNetworkPool(t *testing.T) {
	build(t)
	peer := netip.MustParseAddr("203.0.113.10")
	inet := testutil.NewInternet(t, peer)
	for _, port := range []string{"7070", "8080", "9090"} {
		testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:"+port))
	}
	pool := func(name, rule string) map[string]any {
		return map[string]any{"name": name, "size": 1, "template": map[string]any{"network": map[string]any{"allow": []string{rule}}}}
	}
	pools, err := json.Marshal([]map[string]any{pool("net8080", "203.0.113.10/32:8080/tcp"), pool("net9090", "203.0.113.10/32:9090/tcp")})
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "pools.json")
	if err := os.WriteFile(cfg, pools, 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "--net-pool", "0", "--pool-config", cfg)
	sock := filepath.Join(root, "ironclaw.sock")
	size := func(name string) string { return apitest.Metric(t, sock, `ironclaw_pool_size{class="`+name+`"}`) }
	waitPools := func() {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); size("net8080") != "1" || size("net9090") != "1"; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the networked warm pools did not fill")
			}
		}
	}
	ctx := context.Background()
	ports := []string{"203.0.113.10:7070", "203.0.113.10:8080", "203.0.113.10:9090"}
	for i, tc := range []struct {
		allow, open string
		from        string // the pool that must have served it
		retargeted  bool
	}{
		{"203.0.113.10/32:9090/tcp", "203.0.113.10:9090", "net9090", false}, // its own pool, though not the first
		{"203.0.113.10/32:7070/tcp", "203.0.113.10:7070", "net8080", true},  // the first pool of its shape
		{"203.0.113.10/32:8080/tcp", "203.0.113.10:8080", "net8080", false},
	} {
		waitPools()
		id := "warm-net-" + strconv.Itoa(i)
		sb, err := d.c.Create(ctx, api.CreateRequest{ID: id, Network: &api.Network{Allow: []string{tc.allow}}})
		if err != nil {
			t.Fatal(err)
		}
		if !sb.FromPool || len(sb.Network.Allow) != 1 || sb.Network.Allow[0] != tc.allow || len(sb.Addresses) != 2 {
			t.Fatalf("%s: created %+v, want a pool member with the asked rules", tc.allow, sb)
		}
		got := probe(t, d.c, id, ports...)
		for _, p := range ports {
			if got[p] != (p == tc.open) {
				t.Errorf("%s: %s reachable %v", tc.allow, p, got[p])
			}
		}
		want, err := firewall.ParsePolicy([]string{tc.allow})
		if err != nil {
			t.Fatal(err)
		}
		st, err := network.Inspect(ctx, filepath.Join(root, "sandboxes", sb.Key))
		if err != nil || st.Report.Err != nil || !slices.Equal(st.Allow, want.Rules()) {
			t.Errorf("%s: inspect: %+v %v", tc.allow, st, err)
		}
		// The log names the pool, and says when the rules were given:
		// before the first exec.
		var evs []api.Event
		for deadline := time.Now().Add(5 * time.Second); !slices.ContainsFunc(evs, isType("exec_started")); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no exec_started in the log: %+v", tc.allow, evs)
			}
			if evs, err = d.c.Logs(ctx, id, 0); err != nil {
				t.Fatal(err)
			}
		}
		checkClaimLog(t, tc.allow, evs, tc.from, tc.retargeted)
		if err := d.c.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	// `ironclaw run` through the daemon: a pool member given the run's
	// rules, which its command runs under; the daemon destroys it once
	// the command has ended.
	waitPools()
	before := apitest.Metric(t, sock, `ironclaw_sandbox_create_seconds_count{source="pool"}`)
	script := `
import socket, sys
for t in sys.argv[1:]:
    host, port = t.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.5)
        print(t, "OK")
    except Exception as e:
        print(t, "BLOCKED")
`
	out, err := exec.Command(bin, "--root", root, "run", "--allow", "203.0.113.10/32:7070/tcp", "--",
		"python3", "-c", script, "203.0.113.10:7070", "203.0.113.10:8080", "203.0.113.10:9090").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "203.0.113.10:7070 OK") || !strings.Contains(string(out), "203.0.113.10:8080 BLOCKED") ||
		!strings.Contains(string(out), "203.0.113.10:9090 BLOCKED") {
		t.Fatalf("ironclaw run through the daemon: %v\n%s", err, out)
	}
	if after := apitest.Metric(t, sock, `ironclaw_sandbox_create_seconds_count{source="pool"}`); after == before {
		t.Errorf("the run did not take a pool member (pool creates %s before and after)", after)
	}
	// Its events, stored and then live, until the daemon destroyed it
	// (the run's sandbox has a generated ic- ID, the ones above not).
	var runEvents []api.Event
	errDestroyed := errors.New("destroyed")
	evctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = d.c.Events(evctx, client.EventFilter{Since: 0}, func(ev api.Event) error {
		if !strings.HasPrefix(ev.Sandbox, "ic-") {
			return nil
		}
		runEvents = append(runEvents, ev)
		if ev.Type == "destroyed" {
			return errDestroyed
		}
		return nil
	})
	if !errors.Is(err, errDestroyed) {
		t.Fatalf("the run's sandbox was not destroyed: %v, events %+v", err, runEvents)
	}
	checkClaimLog(t, "ironclaw run", runEvents, "net8080", true)

	// Networked members die with their daemon; the next one reclaims
	// them.
	d.stop(syscall.SIGTERM)
	d = startDaemon(t, "--net-pool", "0")
	d.stop(syscall.SIGTERM)
	if out, err := exec.Command(bin, "--root", root, "net", "pool", "drain").CombinedOutput(); err != nil {
		t.Fatalf("drain: %v %s", err, out)
	}
	if links, err := testutil.LeakedLinks("ic"); err != nil || len(links) > 0 {
		t.Errorf("links left: %v %v", links, err)
	}
}

func isType(typ string) func(api.Event) bool {
	return func(ev api.Event) bool { return ev.Type == typ }
}

// checkClaimLog checks one sandbox's events: created from pool, and, when
// it was given its rules at the claim, network_updated before
// exec_started, else no network_updated at all.
func checkClaimLog(t *testing.T, what string, evs []api.Event, pool string, retargeted bool) {
	t.Helper()
	created := slices.IndexFunc(evs, isType("created"))
	if created < 0 || evs[created].Pool != pool {
		t.Errorf("%s: events %+v, want created from pool %s", what, evs, pool)
		return
	}
	var types []string
	for _, ev := range evs {
		if ev.Sandbox == evs[created].Sandbox {
			types = append(types, ev.Type)
		}
	}
	updated, started := slices.Index(types, "network_updated"), slices.Index(types, "exec_started")
	switch {
	case started < 0:
		t.Errorf("%s: no exec_started: %v", what, types)
	case retargeted && (updated < 0 || updated > started):
		t.Errorf("%s: %v, want network_updated before exec_started", what, types)
	case !retargeted && updated >= 0:
		t.Errorf("%s: %v: a member of the asked rules was given them again", what, types)
	}
}
