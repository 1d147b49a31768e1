package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func TestRunPrintsAndExits(t *testing.T) {
	r := ironclaw(t, nil, "run", "--", "python3", "-c", "print(1)")
	if r.code != 0 || r.stdout != "1\n" {
		t.Fatalf("python3 -c 'print(1)': code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestHostFilesInvisible(t *testing.T) {
	secret := filepath.Join(os.TempDir(), "ironclaw-secret-"+strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(secret, []byte("top secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(secret)

	out := mustSh(t, "ls -a /")
	got := strings.Fields(out)
	sort.Strings(got)
	want := []string{".", "..", "bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr", "workspace"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ls -a / = %v, want %v", got, want)
	}
	for _, p := range []string{"/root", "/home", "/var", "/run", "/sys", "/etc/shadow", "/etc/ssh", "/work", secret, "/tmp/" + filepath.Base(secret)} {
		r := sh(t, "test -e "+p)
		if r.code == 0 {
			t.Errorf("host path %s is visible in the sandbox", p)
		}
	}
	// /etc holds what IronClaw generated and a curated read-only set.
	if passwd := mustSh(t, "cat /etc/passwd"); strings.Contains(passwd, "_apt") || !strings.Contains(passwd, "sandbox:x:1000:1000") {
		t.Errorf("/etc/passwd is not the generated one:\n%s", passwd)
	}
}

func TestSystemDirsAndReadOnlyMountsCannotBeWritten(t *testing.T) {
	ro := t.TempDir()
	rw := t.TempDir()
	os.Chmod(rw, 0o777)
	for _, p := range []string{"/usr/x", "/bin/x", "/lib/x", "/sbin/x", "/etc/x", "/x", "/dev/x", "/proc/x", "/etc/passwd", "/ro/x"} {
		r := sh(t, "echo hi > "+p, "--mount", ro+":/ro", "--user", "root")
		if r.code == 0 {
			t.Errorf("writing %s succeeded, even as root in the sandbox", p)
		}
	}
	entries, _ := os.ReadDir(ro)
	if len(entries) != 0 {
		t.Errorf("read-only mount was written: %v", entries)
	}
	out := mustSh(t, "echo hi > /rw/file && echo tmp > /tmp/t && echo ws > /workspace/w && cat /rw/file /tmp/t /workspace/w", "--mount", rw+":/rw:rw")
	if out != "hi\ntmp\nws\n" {
		t.Errorf("writable places: %q", out)
	}
	b, err := os.ReadFile(filepath.Join(rw, "file"))
	if err != nil || string(b) != "hi\n" {
		t.Fatalf("rw mount write not visible on the host: %q %v", b, err)
	}
	// The sandbox user is an unprivileged uid on the host.
	st, _ := os.Stat(filepath.Join(rw, "file"))
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid != jail.DefaultUIDBase+1000 {
		t.Errorf("file written in the sandbox is owned by host uid %d, want %d", uid, jail.DefaultUIDBase+1000)
	}
}

func TestProcessIdentityAndIsolation(t *testing.T) {
	out := mustSh(t, `
echo "procs $(ls /proc | grep -c '^[0-9]')"
echo "init $(tr '\0' ' ' < /proc/1/cmdline)"
echo "host $(hostname)"
grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Uid)' /proc/self/status
echo "ifaces $(ls /sys/class/net 2>/dev/null | tr '\n' ' ')$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "cgroup $(cat /proc/self/cgroup | tr '\n' ' ')"
`, "--name", "e2e-identity")
	fields := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			fields[strings.TrimSuffix(f[0], ":")] = strings.Join(f[1:], " ")
		}
	}
	// init, sh and the few commands of the pipeline: nothing of the host.
	if n, _ := strconv.Atoi(fields["procs"]); n < 2 || n > 6 {
		t.Errorf("sandbox sees %s processes in /proc, want only its own", fields["procs"])
	}
	if !strings.HasPrefix(fields["init"], "ironclaw-init") {
		t.Errorf("PID 1 is %q, want ironclaw-init", fields["init"])
	}
	if fields["host"] != "e2e-identity" {
		t.Errorf("hostname = %q", fields["host"])
	}
	for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"} {
		if fields[k] != want {
			t.Errorf("%s = %q, want %q", k, fields[k], want)
		}
	}
	if !strings.HasPrefix(fields["Uid"], "1000") {
		t.Errorf("Uid = %q, want 1000", fields["Uid"])
	}
	if fields["ifaces"] != "lo" {
		t.Errorf("network interfaces = %q, want only lo", fields["ifaces"])
	}
	// The cgroup namespace hides the host's cgroup paths.
	if strings.Contains(fields["cgroup"], "ironclaw") {
		t.Errorf("/proc/self/cgroup shows host cgroup paths: %s", fields["cgroup"])
	}
	// Root inside is no one outside: no capabilities, mount fails.
	r := sh(t, "grep CapEff /proc/self/status; mount -t tmpfs none /tmp", "--user", "root")
	if r.code == 0 || !strings.Contains(r.stdout, "0000000000000000") {
		t.Errorf("mount as sandbox root: code %d, %s %s", r.code, r.stdout, r.stderr)
	}
}

func TestLandlockLimitsFileAccess(t *testing.T) {
	// /proc/self/comm is writable by its owner; Landlock grants /proc
	// read-only, so the write is denied by Landlock, not by permissions.
	r := sh(t, "echo renamed > /proc/self/comm")
	if r.code == 0 {
		t.Fatal("writing /proc/self/comm succeeded: Landlock is not enforced")
	}
	if !strings.Contains(r.stderr, "Permission denied") {
		t.Errorf("write to /proc/self/comm: %s (want Permission denied)", r.stderr)
	}
}

func TestPidsLimitStopsForkBomb(t *testing.T) {
	r := ironclaw(t, nil, "run", "--pids", "32", "--", "python3", "-c", `
import os, time
n = 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    n += 1
print(n)
`)
	n, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if err != nil || n >= 32 || n < 10 {
		t.Fatalf("forked %q children under --pids 32 (stderr %q), want fewer than 32", r.stdout, r.stderr)
	}
	// A real fork bomb is contained, and the timeout reaps it.
	r = sh(t, "b() { b | b & }; b; sleep 60", "--pids", "64", "--timeout", "2s")
	if r.code != 124 {
		t.Errorf("fork bomb: exit %d, want 124 (timeout); stderr %q", r.code, r.stderr)
	}
}

// TestInitOutlivesExhaustedPids: init shares the sandbox's pids limit
// with the command. Once the command has used it up, init must still
// forward signals and report the exit: signals make init's Go runtime
// hand work between threads, and a runtime that cannot create a thread
// aborts (init then died and the run ended with 137, six times in ten
// before init kept spare threads).
func TestInitOutlivesExhaustedPids(t *testing.T) {
	testRequireRoot(t)
	script := `
import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *a: None)
n = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    n += 1
print(n, flush=True)
time.sleep(2)
print("done", flush=True)
`
	for i := range 3 {
		cmd := exec.Command(bin, "--root", root, "run", "--pids", "24", "--", "python3", "-c", script)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(out)
		if line, err := br.ReadString('\n'); err != nil {
			t.Fatalf("run %d: no fork count: %q %v (stderr %q)", i, line, err, errb.String())
		}
		// The limit is used up; init forwards each signal to the command.
		for range 200 {
			_ = cmd.Process.Signal(syscall.SIGUSR1)
			time.Sleep(2 * time.Millisecond)
		}
		rest, _ := io.ReadAll(br)
		err = cmd.Wait()
		if err != nil || string(rest) != "done\n" {
			t.Fatalf("run %d: %v, output %q; stderr %q", i, err, rest, lastLines(errb.String(), 3))
		}
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func TestMemoryHogIsOOMKilledAndReported(t *testing.T) {
	r := ironclaw(t, nil, "run", "--memory", "48m", "--", "python3", "-c", "x = bytearray(400 << 20); print('survived')")
	if r.code != 137 {
		t.Errorf("memory hog: exit %d, want 137", r.code)
	}
	if strings.Contains(r.stdout, "survived") || !strings.Contains(r.stderr, "out of memory") || !strings.Contains(r.stderr, "48MiB") {
		t.Errorf("OOM not reported: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

func TestTimeoutKillsTree(t *testing.T) {
	marker := "sleep 300." + strconv.Itoa(os.Getpid())
	r := sh(t, "sh -c '"+marker+"' & "+marker+" & "+marker, "--timeout", "1s")
	if r.code != 124 || !strings.Contains(r.stderr, "timed out after 1s") {
		t.Fatalf("timeout: exit %d stderr %q", r.code, r.stderr)
	}
	if r.took > 20*time.Second {
		t.Errorf("timeout took %s", r.took)
	}
	for _, p := range processes() {
		if strings.Contains(p, marker) {
			t.Errorf("process survived the timeout: %s", p)
		}
	}
}

func TestExitCodesPropagate(t *testing.T) {
	cases := []struct {
		script string
		code   int
	}{
		{"exit 0", 0}, {"exit 3", 3}, {"exit 255", 255},
		{"kill -TERM $$", 143}, {"kill -KILL $$", 137}, {"kill -SEGV $$", 139},
	}
	for _, c := range cases {
		if r := sh(t, c.script); r.code != c.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", c.script, r.code, c.code, r.stderr)
		}
	}
	r := ironclaw(t, nil, "run", "--", "no-such-command-xyz")
	if r.code != 127 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "command not found") {
		t.Errorf("missing command: exit %d, stderr %q (want 127 and one line)", r.code, r.stderr)
	}
	r = ironclaw(t, nil, "run", "--", "/etc/passwd")
	if r.code != 126 {
		t.Errorf("non-executable: exit %d, stderr %q (want 126)", r.code, r.stderr)
	}
}

func TestStdinRoundTripsBinary(t *testing.T) {
	data := make([]byte, 4<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	r := ironclaw(t, data, "run", "--", "cat")
	if r.code != 0 || len(r.stdout) != len(data) || sha256.Sum256([]byte(r.stdout)) != sha256.Sum256(data) {
		t.Fatalf("cat round trip: exit %d, %d bytes back of %d (stderr %q)", r.code, len(r.stdout), len(data), r.stderr)
	}
	r = ironclaw(t, []byte("to stderr"), "run", "--", "sh", "-c", "cat >&2")
	if r.stderr != "to stderr" || r.stdout != "" {
		t.Errorf("stderr stream: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

func TestSignalsAreForwarded(t *testing.T) {
	testRequireRoot(t)
	for sig, name := range map[syscall.Signal]string{syscall.SIGTERM: "TERM", syscall.SIGINT: "INT", syscall.SIGHUP: "HUP"} {
		cmd := exec.Command(bin, "--root", root, "run", "--", "sh", "-c",
			fmt.Sprintf(`trap 'echo got; exit 42' %s; echo ready; while :; do sleep 0.1; done`, name))
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(out)
		if line, err := br.ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("%v: sandbox did not start: %q %v", sig, line, err)
		}
		cmd.Process.Signal(sig)
		rest, _ := io.ReadAll(br)
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != 42 || string(rest) != "got\n" {
			t.Errorf("%v: exit %d, output %q; want the trap to run and exit 42", sig, code, rest)
		}
	}
}

func TestTTY(t *testing.T) {
	testRequireRoot(t)
	cmd := exec.Command(bin, "--root", root, "run", "-t", "--", "sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty; stty size")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 99})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	out, _ := io.ReadAll(ptmx) // EIO when the command ends
	if err := cmd.Wait(); err != nil {
		t.Fatalf("run -t: %v, output %q", err, out)
	}
	if !bytes.Contains(out, []byte("is-a-tty")) || !bytes.Contains(out, []byte("33 99")) {
		t.Errorf("run -t output %q: want a terminal of 33x99", out)
	}
}

func TestEnvironmentIsClean(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "env")
	os.WriteFile(envFile, []byte("# comment\nFROM_FILE=yes\nOVERRIDE=file\n"), 0o644)
	os.Setenv("IRONCLAW_HOST_SECRET", "leak")
	defer os.Unsetenv("IRONCLAW_HOST_SECRET")
	out := mustSh(t, "env | sort", "--env-file", envFile, "-e", "OVERRIDE=flag", "-e", "EXTRA=1")
	if strings.Contains(out, "IRONCLAW_HOST_SECRET") {
		t.Errorf("host environment leaked:\n%s", out)
	}
	for _, want := range []string{"FROM_FILE=yes", "OVERRIDE=flag", "EXTRA=1", "HOME=/workspace", "PATH=" + jail.DefaultPath} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("environment lacks %s:\n%s", want, out)
		}
	}
}

func TestRootfs(t *testing.T) {
	testRequireRoot(t)
	rootfs := t.TempDir()
	os.Chmod(rootfs, 0o755)
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	os.MkdirAll(filepath.Join(rootfs, "data"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "data", "hello.txt"), []byte("from rootfs\n"), 0o644)
	src := filepath.Join(t.TempDir(), "lsroot.go")
	os.WriteFile(src, []byte(`package main
import ("fmt"; "os")
func main() {
	ents, _ := os.ReadDir("/")
	for _, e := range ents { fmt.Println(e.Name()) }
	b, err := os.ReadFile("/data/hello.txt")
	fmt.Print(string(b), err == nil, "\n")
}
`), 0o644)
	build := exec.Command("go", "build", "-o", filepath.Join(rootfs, "bin", "lsroot"), src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	r := ironclaw(t, nil, "run", "--rootfs", rootfs, "--", "/bin/lsroot")
	if r.code != 0 {
		t.Fatalf("--rootfs run: %d %s", r.code, r.stderr)
	}
	got := strings.Fields(r.stdout)
	if strings.Contains(r.stdout, "usr") || !strings.Contains(r.stdout, "from rootfs") || !strings.Contains(r.stdout, "data") {
		t.Errorf("--rootfs view: %v", got)
	}
}

func TestStartFailureRollsBack(t *testing.T) {
	cases := []struct {
		args []string
		step string
	}{
		{[]string{"--mount", "/no/such/dir:/x"}, "mount /x"},
		// The target's parent is inside read-only /usr: init fails after
		// the cgroup and state directory exist, and rolls them back.
		{[]string{"--mount", os.TempDir() + ":/usr/no/such/place"}, "mount /usr/no/such/place"},
		{[]string{"--memory", "1"}, "memory"},
	}
	for _, c := range cases {
		r := ironclaw(t, nil, append(append([]string{"run", "--name", "rollback"}, c.args...), "--", "true")...)
		if r.code != 125 || !strings.Contains(r.stderr, c.step) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stderr %q; want 125 and one line naming %q", c.args, r.code, r.stderr, c.step)
		}
		if _, err := os.Stat(filepath.Join(root, "sandboxes", string(sandbox.KeyOf("rollback")))); err == nil {
			t.Errorf("%v: failed start left its state directory", c.args)
		}
	}
}

func TestSameNameTwiceIsRefused(t *testing.T) {
	testRequireRoot(t)
	cmd := exec.Command(bin, "--root", root, "run", "--name", "twice", "--", "sh", "-c", "echo ready; sleep 30")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait(); ironclaw(t, nil, "gc") }()
	bufio.NewReader(out).ReadString('\n')
	r := ironclaw(t, nil, "run", "--name", "twice", "--", "true")
	if r.code != 125 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("second sandbox with the same name: exit %d, stderr %q", r.code, r.stderr)
	}
	// A near-identical name is another sandbox.
	if r := ironclaw(t, nil, "run", "--name", "twicE", "--", "true"); r.code != 0 {
		t.Errorf("near-identical name refused: %s", r.stderr)
	}
}

func TestSIGKILLedIronclawLeavesNothingAfterGC(t *testing.T) {
	testRequireRoot(t)
	name := "killed-" + strconv.Itoa(os.Getpid())
	cmd := exec.Command(bin, "--root", root, "run", "--name", name, "--memory", "64m", "--pids", "50", "--",
		"sh", "-c", "sleep 300 & echo ready; wait")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		t.Fatalf("sandbox did not start: %q", line)
	}
	r, err := state.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := r.SandboxDir(sandbox.KeyOf(name))
	var rec struct{ Cgroups []string }
	if err := state.ReadJSON(filepath.Join(dir, "jail.json"), &rec); err != nil || len(rec.Cgroups) == 0 {
		t.Fatalf("jail record: %+v %v", rec, err)
	}
	cmd.Process.Kill()
	cmd.Wait()

	// The sandbox dies with its owner (parent-death signal, control EOF)...
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && testutil.CgroupsHoldProcesses(rec.Cgroups) {
		time.Sleep(20 * time.Millisecond)
	}
	if testutil.CgroupsHoldProcesses(rec.Cgroups) {
		t.Error("sandbox processes outlived the SIGKILLed ironclaw")
	}
	// ...but its records and cgroups remain until a gc or the next start.
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("state dir vanished before gc: %v", err)
	}
	if g := ironclaw(t, nil, "gc"); g.code != 0 || !strings.Contains(g.stdout, "reclaimed 1") {
		t.Fatalf("gc: %d %q %q", g.code, g.stdout, g.stderr)
	}
	for _, p := range append(rec.Cgroups, dir) {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s remains after gc", p)
		}
	}
}

// processes lists the command lines of all host processes.
func processes() []string {
	var out []string
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && len(b) > 0 {
			out = append(out, strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "))
		}
	}
	return out
}

func testRequireRoot(t *testing.T) {
	t.Helper()
	// ironclaw() gates itself; tests that start the binary by hand do it here.
	ironclawGate(t)
}

// TestSIGKILLDuringSetupLeavesNothingAfterGC kills ironclaw at spread-out
// moments of its start (state claimed, cgroup made, init spawned, mounts
// half done...) and checks that gc leaves nothing each time.
func TestSIGKILLDuringSetupLeavesNothingAfterGC(t *testing.T) {
	testRequireRoot(t)
	for i := 0; i < 24; i++ {
		delay := time.Duration(i) * 700 * time.Microsecond
		cmd := exec.Command(bin, "--root", root, "run", "--name", "setup-kill", "--memory", "64m", "--", "true")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Kill()
		cmd.Wait()
		if g := ironclaw(t, nil, "gc"); g.code != 0 {
			t.Fatalf("gc after a kill at %s: %s", delay, g.stderr)
		}
		r, err := state.Open(root)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			// A killed owner's init may take a moment to die; gc again.
			err := leaksNow(r)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kill at %s: %v", delay, err)
			}
			time.Sleep(20 * time.Millisecond)
			ironclaw(t, nil, "gc")
		}
	}
}

// leaksNow reports sandbox directories, cgroups and init processes of the
// suite's root that exist right now.
func leaksNow(r *state.Root) error {
	ents, _ := os.ReadDir(filepath.Join(root, "sandboxes"))
	if len(ents) > 0 {
		return fmt.Errorf("%d sandbox dir(s) left", len(ents))
	}
	for _, c := range []string{"memory", "pids", "cpu", "unified", ""} {
		if sub, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", c, r.Name())); len(sub) > 0 {
			for _, s := range sub {
				if s.IsDir() {
					return fmt.Errorf("cgroup %s/%s left", c, s.Name())
				}
			}
		}
	}
	for _, p := range processes() {
		if strings.HasPrefix(p, "ironclaw-init "+r.Name()) {
			return fmt.Errorf("init process left: %s", p)
		}
	}
	return nil
}
