package nete2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

var bin, root string

func TestMain(m *testing.M) {
	parents := testroot.Snapshot()
	testutil.HostNetNSMain(m, func() error {
		if root != "" {
			// Networked runs keep the network pool filled (--net-pool):
			// its maintainers must have ended, and it may hold free
			// slots only (no used, claimed or orphaned one), which a
			// drain then removes before the strict check.
			if err := settlePool(); err != nil {
				return err
			}
		}
		return errors.Join(testutil.SuiteLeaks(root, state.NameOf(root), network.IfPrefix), parents.Leaked())
	})
}

// settlePool waits for the pool's maintainers to end, requires that only
// free slots are left, and drains them.
func settlePool() error {
	if !testutil.WaitMaintainers(root, 30*time.Second) {
		return fmt.Errorf("network pool maintainers still running: %v", testutil.Maintainers(root))
	}
	st, err := network.Pool(network.Config{Root: root})
	if err != nil {
		return err
	}
	if st.Claimed+st.Used+st.Orphaned > 0 {
		return fmt.Errorf("network pool left with slots that are not free: %+v", st)
	}
	if out, err := exec.Command(bin, "--root", root, "net", "pool", "drain").CombinedOutput(); err != nil {
		return fmt.Errorf("net pool drain: %v: %s", err, out)
	}
	return nil
}

// build compiles ironclaw and ironclaw-agent once per test binary.
func build(t *testing.T) {
	t.Helper()
	testutil.RequireHostNetNS(t)
	if bin != "" {
		return
	}
	var err error
	if bin, root, err = testutil.BuildSuite("ironclaw-nete2e-"); err != nil {
		t.Fatal(err)
	}
}

// connect runs a python3 TCP/UDP client inside a fresh sandbox with the
// given allow rules and reports what it got for each target.
func connect(t *testing.T, allow []string, targets ...string) string {
	t.Helper()
	args := []string{"--root", root, "run"}
	for _, a := range allow {
		args = append(args, "--allow", a)
	}
	script := `
import socket, sys
for t in sys.argv[1:]:
    proto, host, port = t.split(":")
    try:
        if proto == "tcp":
            s = socket.create_connection((host, int(port)), timeout=1.5)
            print(t, s.recv(64).decode().strip())
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1.5)
            s.sendto(b"hi", (host, int(port)))
            print(t, s.recv(64).decode().strip())
    except Exception as e:
        print(t, "BLOCKED", type(e).__name__)
`
	args = append(append(args, "--", "python3", "-c", script), targets...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ironclaw run %v: %v\n%s", allow, err, errb.String())
	}
	return out.String()
}

func TestEgressAllowlistThroughTheBinary(t *testing.T) {
	build(t)
	peerA, peerB := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("203.0.113.20")
	inet := testutil.NewInternet(t, peerA, peerB)
	for _, ap := range []string{"203.0.113.10:8080", "203.0.113.10:9090", "203.0.113.20:8080"} {
		testutil.Serve(t, inet.NS, netip.MustParseAddrPort(ap))
	}
	out := connect(t, []string{"203.0.113.10/32:8080/tcp"},
		"tcp:203.0.113.10:8080", "tcp:203.0.113.10:9090", "tcp:203.0.113.20:8080", "udp:203.0.113.10:8080",
		"tcp:"+inet.HostAddr.String()+":22", "tcp:169.254.169.254:80")
	want := map[string]bool{
		"tcp:203.0.113.10:8080": true, "tcp:203.0.113.10:9090": false, "tcp:203.0.113.20:8080": false,
		"udp:203.0.113.10:8080": false, "tcp:" + inet.HostAddr.String() + ":22": false, "tcp:169.254.169.254:80": false,
	}
	for target, pass := range want {
		line := lineFor(out, target)
		if got := !strings.Contains(line, "BLOCKED"); got != pass {
			t.Errorf("%s: %q, want pass=%v", target, line, pass)
		}
	}
	// Without rules the sandbox has loopback only.
	out = connect(t, nil, "tcp:203.0.113.10:8080")
	if !strings.Contains(out, "BLOCKED") {
		t.Errorf("loopback-only sandbox reached a peer: %q", out)
	}
}

func TestNetShowVerifiesLiveRules(t *testing.T) {
	build(t)
	inet := testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	_ = inet
	cmd := exec.Command(bin, "--root", root, "run", "--name", "shown", "--allow", "203.0.113.10/32:443", "--", "sh", "-c", "echo ready; sleep 30")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	show, err := exec.Command(bin, "--root", root, "net", "show", "shown").CombinedOutput()
	if err != nil || !strings.Contains(string(show), "203.0.113.10") {
		t.Fatalf("net show: %v\n%s", err, show)
	}
	if !strings.Contains(strings.ToLower(string(show)), "verif") {
		t.Errorf("net show does not say whether the rules verify:\n%s", show)
	}
}

func TestKilledRunLeavesNothingAfterGC(t *testing.T) {
	build(t)
	if err := settlePool(); err != nil {
		t.Fatal(err)
	}
	testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	cmd := exec.Command(bin, "--root", root, "run", "--name", "killed-net", "--allow", "203.0.113.10/32:80", "--", "sh", "-c", "echo ready; sleep 60")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	var rec struct{ Cgroups []string }
	if err := state.ReadJSON(filepath.Join(st.SandboxDir(sandbox.KeyOf("killed-net")), "jail.json"), &rec); err != nil || len(rec.Cgroups) == 0 {
		t.Fatalf("jail record: %+v %v", rec, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if links, _ := testutil.LeakedLinks("ic"); len(links) == 0 {
		t.Fatal("expected the killed run's veth to remain until gc")
	}
	// The sandbox dies with its owner (parent-death signal), but not at
	// the instant the owner is reaped; gc leaves a sandbox whose init
	// still holds its lock alone, so wait for its processes to be gone.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && testutil.CgroupsHoldProcesses(rec.Cgroups) {
		time.Sleep(20 * time.Millisecond)
	}
	if testutil.CgroupsHoldProcesses(rec.Cgroups) {
		t.Fatal("sandbox processes outlived the SIGKILLed ironclaw")
	}
	if g, err := exec.Command(bin, "--root", root, "gc").CombinedOutput(); err != nil || !strings.Contains(string(g), "reclaimed 1") {
		t.Fatalf("gc: %v %s", err, g)
	}
	if links, _ := testutil.LeakedLinks("ic"); len(links) > 0 {
		t.Errorf("links left after gc: %v", links)
	}
}

func lineFor(out, target string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, target+" ") {
			return l
		}
	}
	return "(no output for " + target + ")"
}

// poolState reads the suite root's network pool.
func poolState(t *testing.T) network.PoolState {
	t.Helper()
	st, err := network.Pool(network.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// runTrue runs /bin/true in a networked sandbox with extra environment.
func runTrue(t *testing.T, env ...string) {
	t.Helper()
	cmd := exec.Command(bin, "--root", root, "run", "--allow", "203.0.113.10/32:8080", "--", "true")
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
}

// TestPoolMaintainsItself: a networked run on an empty pool, with no
// manual command, leads to --net-pool free slots, prepared for the run's
// rules, and no used slot, and its maintainer ends; the next run takes a
// free slot; a run with a domain rule leads to slots that let nothing out;
// with --net-pool 0 nothing is prepared and no maintainer starts.
func TestPoolMaintainsItself(t *testing.T) {
	build(t)
	testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	if err := settlePool(); err != nil {
		t.Fatal(err)
	}
	if st := poolState(t); st != (network.PoolState{}) {
		t.Fatalf("pool not empty after a drain: %+v", st)
	}
	waitFree := func(want, prepared int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st := poolState(t)
			gone := len(testutil.Maintainers(root)) == 0
			if st == (network.PoolState{Free: want, Prepared: prepared}) && gone {
				return
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(root + "/net/maintain.log")
				t.Fatalf("pool %+v, maintainers %v; want %d free slots, nothing else, no maintainer\nlog:\n%s", st, testutil.Maintainers(root), want, log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	runTrue(t, "IRONCLAW_NET_POOL=")
	waitFree(2, 2)
	fors, _ := filepath.Glob(root + "/net/slots/*/for")
	for _, f := range fors {
		if b, err := os.ReadFile(f); err != nil || string(b) != "203.0.113.10:8080" {
			t.Errorf("%s: %q %v; want the run's rule", f, b, err)
		}
	}
	// The next run takes a free slot; its maintainer refills the pool
	// to the size it is given.
	runTrue(t, "IRONCLAW_NET_POOL=3")
	waitFree(3, 3)
	// A run with a domain rule: its maintainer prepares slots that let
	// nothing out (a domain rule needs the egress servers of its run).
	if out, err := exec.Command(bin, "--root", root, "run", "--net-pool", "4", "--allow", "example.test:443", "--", "true").CombinedOutput(); err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	waitFree(4, 2)
	if log, err := os.ReadFile(root + "/net/maintain.log"); err != nil || len(log) > 0 {
		t.Errorf("maintainers logged (or no log): %v\n%s", err, log)
	}
	if out, err := exec.Command(bin, "--root", root, "net", "pool", "fill", "1", "--allow", "bogus:rule:1").CombinedOutput(); err == nil || !strings.Contains(string(out), "--allow") {
		t.Errorf("a bad --allow of net pool fill was not refused by name: %v %s", err, out)
	}

	// Maintenance off: the run makes and removes its own network, and
	// leaves the pool as it was.
	if err := settlePool(); err != nil {
		t.Fatal(err)
	}
	runTrue(t, "IRONCLAW_NET_POOL=0")
	if m := testutil.Maintainers(root); len(m) > 0 {
		t.Fatalf("--net-pool 0 started maintainers %v", m)
	}
	time.Sleep(300 * time.Millisecond)
	if st := poolState(t); st != (network.PoolState{}) || len(testutil.Maintainers(root)) > 0 {
		t.Fatalf("--net-pool 0: pool %+v, maintainers %v; want nothing", st, testutil.Maintainers(root))
	}
	if links, err := testutil.LeakedLinks(network.IfPrefix); err != nil || len(links) > 0 {
		t.Fatalf("--net-pool 0 left links %v %v", links, err)
	}
	if r, err := exec.Command(bin, "--root", root, "run", "--net-pool", "x", "--", "true").CombinedOutput(); err == nil || !strings.Contains(string(r), "--net-pool") {
		t.Errorf("a bad --net-pool was not refused by name: %v %s", err, r)
	}
}

// TestConcurrentMaintainers: two maintainers started at once prepare the
// pool once between them (one flock per root); one started while the
// lock is held does nothing.
func TestConcurrentMaintainers(t *testing.T) {
	build(t)
	if err := settlePool(); err != nil {
		t.Fatal(err)
	}
	maintain := func() *exec.Cmd {
		return exec.Command(bin, "--root", root, "net", "pool", "maintain", "--free", "2")
	}
	a, b := maintain(), maintain()
	var oa, ob bytes.Buffer
	a.Stdout, b.Stdout = &oa, &ob
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(a.Wait(), b.Wait()); err != nil {
		t.Fatalf("%v\n%s%s", err, oa.String(), ob.String())
	}
	made := 0
	for _, out := range []string{oa.String(), ob.String()} {
		var d, m int
		if _, err := fmt.Sscanf(out, "destroyed %d used slots, prepared %d", &d, &m); err == nil {
			made += m
		} else if !strings.Contains(out, "another maintainer") {
			t.Fatalf("maintainer said %q", out)
		}
	}
	if st := poolState(t); made != 2 || st != (network.PoolState{Free: 2}) {
		t.Fatalf("two maintainers prepared %d slots between them, pool %+v; want 2 and 2 free\n%s%s", made, st, oa.String(), ob.String())
	}
	// While the lock is held, a maintainer does nothing, at once.
	lock, err := os.OpenFile(root+"/net/"+network.MaintainLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--root", root, "net", "pool", "maintain", "--free", "4").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "another maintainer") {
		t.Fatalf("maintainer while the lock is held: %v %s", err, out)
	}
	if st := poolState(t); st != (network.PoolState{Free: 2}) {
		t.Fatalf("a maintainer turned away changed the pool: %+v", st)
	}
}

// TestMaintainerHoldsNoInheritedDescriptor: a descriptor the run inherited
// without close-on-exec (a harness's pipe) is not held open by the
// maintainer the run leaves behind, so whoever reads the pipe sees its end
// when the run exits.
func TestMaintainerHoldsNoInheritedDescriptor(t *testing.T) {
	build(t)
	testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	if err := settlePool(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := settlePool(); err != nil {
			t.Error(err)
		}
	}()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(pw.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	pipe := fmt.Sprintf("pipe:[%d]", st.Ino)
	// A large pool keeps the maintainer at work long enough to be seen.
	cmd := exec.Command(bin, "--root", root, "run", "--allow", "203.0.113.10/32:8080", "--", "true")
	cmd.Env = append(os.Environ(), "IRONCLAW_NET_POOL=40")
	cmd.ExtraFiles = []*os.File{pw} // fd 3 in the run, not close-on-exec
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	pw.Close()
	ms := testutil.Maintainers(root)
	if len(ms) == 0 {
		t.Fatal("no maintainer seen right after the run (40 slots to prepare)")
	}
	for _, pid := range ms {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == pipe {
				t.Errorf("maintainer %d holds the run's inherited pipe as fd %s", pid, fd.Name())
			}
		}
	}
	if !testutil.WaitMaintainers(root, 60*time.Second) {
		t.Fatalf("maintainers still running: %v", testutil.Maintainers(root))
	}
}
