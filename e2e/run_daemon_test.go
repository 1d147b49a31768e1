package e2e

import (
	"bufio"
	"github.com/ironclaw/ironclaw/internal/api/apitest"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// TestRunThroughDaemon runs the `ironclaw run` tests again with a daemon
// serving the package's state root: every run then goes through it
// (create, exec with stdio and TTY, destroy) and must behave the same.
func TestRunThroughDaemon(t *testing.T) {
	ironclawGate(t)
	d := startDaemon(t, root)
	tests := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"RunPrintsAndExits", TestRunPrintsAndExits},
		{"HostFilesInvisible", TestHostFilesInvisible},
		{"SystemDirsAndReadOnlyMountsCannotBeWritten", TestSystemDirsAndReadOnlyMountsCannotBeWritten},
		{"ProcessIdentityAndIsolation", TestProcessIdentityAndIsolation},
		{"LandlockLimitsFileAccess", TestLandlockLimitsFileAccess},
		// In a long-lived sandbox the agent is init; the workloads get a
		// pids group of their own below the sandbox's (cgroup.SplitPids;
		// threaded on cgroup v2), so a fork bomb cannot starve the agent.
		{"PidsLimitStopsForkBomb", TestPidsLimitStopsForkBomb},
		{"MemoryHogIsOOMKilledAndReported", TestMemoryHogIsOOMKilledAndReported},
		{"TimeoutKillsTree", TestTimeoutKillsTree},
		{"ExitCodesPropagate", TestExitCodesPropagate},
		{"StdinRoundTripsBinary", TestStdinRoundTripsBinary},
		{"SignalsAreForwarded", TestSignalsAreForwarded},
		{"TTY", TestTTY},
		{"EnvironmentIsClean", TestEnvironmentIsClean},
		{"Rootfs", TestRootfs},
		{"StartFailureRollsBack", TestStartFailureRollsBack},
		{"SameNameTwiceIsRefused", TestSameNameTwiceIsRefused},
		{"KilledRunTakesItsSandbox", testKilledRunTakesItsSandbox},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
	// The runs really went through the daemon: it made their sandboxes.
	n, _ := strconv.Atoi(apitest.Metric(t, d.socket, `ironclaw_sandbox_create_seconds_count{source="cold"}`))
	if n < 40 {
		t.Errorf("the daemon made %d sandboxes for the runs, want every run's", n)
	}
	// --no-daemon still runs embedded.
	if r := ironclaw(t, nil, "run", "--no-daemon", "--name", "embedded", "--", "hostname"); r.code != 0 || r.stdout != "embedded\n" {
		t.Errorf("run --no-daemon: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if m, _ := strconv.Atoi(apitest.Metric(t, d.socket, `ironclaw_sandbox_create_seconds_count{source="cold"}`)); m != n {
		t.Errorf("run --no-daemon went through the daemon")
	}
}

// testKilledRunTakesItsSandbox is the daemon's side of
// TestSIGKILLedIronclawLeavesNothingAfterGC: a SIGKILLed `ironclaw run`
// drops its exec stream, and the daemon destroys the sandbox at once.
func testKilledRunTakesItsSandbox(t *testing.T) {
	testRequireRoot(t)
	name := "killed-run-" + strconv.Itoa(os.Getpid())
	cmd := exec.Command(bin, "--root", root, "run", "--name", name, "--", "sh", "-c", "sleep 300 & echo ready; wait")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("sandbox did not start: %q", line)
	}
	dir := filepath.Join(root, "sandboxes", string(sandbox.KeyOf(name)))
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("no state dir while running: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon kept the sandbox of a killed run")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunWithoutAnsweringDaemonRunsEmbedded: `ironclaw run` runs embedded
// beside a socket file left by a daemon that died (no connection), and
// beside one whose daemon accepts connections but never answers (stopped,
// wedged), after a bounded wait that it reports; a named run fails there.
func TestRunWithoutAnsweringDaemonRunsEmbedded(t *testing.T) {
	ironclawGate(t)
	sock := filepath.Join(root, "ironclaw.sock")
	if _, err := os.Stat(sock); err == nil {
		t.Fatal("a daemon socket exists already")
	}
	if r := ironclaw(t, nil, "run", "--", "true"); r.code != 0 { // makes the state root
		t.Fatalf("run: %d %q", r.code, r.stderr)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	defer os.Remove(sock)
	if r := ironclaw(t, nil, "run", "--name", "stale-socket", "--", "hostname"); r.code != 0 || r.stdout != "stale-socket\n" {
		t.Errorf("run beside a stale socket: %d %q %q", r.code, r.stdout, r.stderr)
	}

	os.Remove(sock)
	hung, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		var held []net.Conn // read nothing, answer nothing
		for {
			c, err := hung.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	r := ironclaw(t, nil, "run", "--", "echo", "embedded")
	if r.code != 0 || r.stdout != "embedded\n" || !strings.Contains(r.stderr, "did not answer") {
		t.Errorf("run beside a daemon that never answers: %d %q %q", r.code, r.stdout, r.stderr)
	}
	// A named run does not: the daemon may yet make a sandbox of that
	// name.
	r = ironclaw(t, nil, "run", "--name", "hung-daemon", "--", "echo", "embedded")
	if r.code != 125 || r.stdout != "" || !strings.Contains(r.stderr, "did not answer") {
		t.Errorf("named run beside a daemon that never answers: %d %q %q", r.code, r.stdout, r.stderr)
	}
}
