package nete2e

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

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
	cmd.Process.Kill()
	cmd.Wait()
	if links, _ := testutil.LeakedLinks("ic"); len(links) == 0 {
		t.Fatal("expected the killed run's veth to remain until gc")
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
