package vme2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/ironclaw/ironclaw/internal/vm"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
	"golang.org/x/sys/unix"
)

// bin is the ironclaw binary under test (with ironclaw-agent next to it)
// and root its state root; both outlive single tests, and TestMain's leak
// check reads the root.
var bin, root string

func TestMain(m *testing.M) {
	parents := testroot.Snapshot()
	testutil.HostNetNSMain(m, func() error {
		return errors.Join(testutil.SuiteLeaks(root, state.NameOf(root), network.IfPrefix), parents.Leaked())
	})
}

// setup gates the test and builds ironclaw and ironclaw-agent once.
func setup(t *testing.T) {
	t.Helper()
	testutil.RequireHostNetNS(t)
	testutil.RequireCommand(t, "qemu-system-x86_64")
	testutil.RequireCommand(t, "mkfs.ext4")
	vmtest.Kernel(t)
	vmtest.Busybox(t)
	if bin != "" {
		return
	}
	var err error
	if bin, root, err = testutil.BuildSuite("ironclaw-vme2e-"); err != nil {
		t.Fatal(err)
	}
}

// env is the environment of every ironclaw run: the shared test image
// cache, TCG unless a test asks otherwise.
func env(extra ...string) []string {
	e := append(os.Environ(), "IRONCLAW_CACHE="+vmtest.CacheDir(), "IRONCLAW_VM_ACCEL=tcg")
	return append(e, extra...)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs ironclaw with args and stdin and waits up to two minutes.
func run(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append([]string{"--root", root}, args...)...)
	cmd.Env = env()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(stdin), &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("ironclaw %v: %v", args, err)
	}
	return r
}

func hostRelease(t *testing.T) string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// TestRunInGuest boots one VM through the binary: the command sees the
// guest's kernel (not the host's), data makes a round trip through stdin,
// a file in /workspace and stdout, stderr stays separate, and the exit
// status comes back.
func TestRunInGuest(t *testing.T) {
	setup(t)
	data := make([]byte, 256<<10)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	r := run(t, data, "run", "--backend", "vm", "--", "sh", "-c",
		`uname -r; uname -a >&2; cat > /workspace/in; sha256sum /workspace/in | cut -c1-64; cat /workspace/in; exit 3`)
	if r.code != 3 {
		t.Fatalf("exit %d, want 3; stderr: %s", r.code, r.stderr)
	}
	release, rest, _ := strings.Cut(r.stdout, "\n")
	sumLine, back, _ := strings.Cut(rest, "\n")
	t.Logf("guest kernel %s (host %s); stderr %q", release, hostRelease(t), r.stderr)
	if !strings.HasSuffix(release, "-cloud-amd64") || release == hostRelease(t) {
		t.Errorf("uname -r in the VM = %q: not the guest's Debian cloud kernel", release)
	}
	if !strings.Contains(r.stderr, "Linux ") || strings.Contains(r.stdout, "Linux ") {
		t.Errorf("stderr %q / stdout mixed up", r.stderr)
	}
	if sumLine != hex.EncodeToString(sum[:]) {
		t.Errorf("guest sha256 %q, want %x", sumLine, sum)
	}
	if back != string(data) {
		t.Errorf("data back: %d bytes, differs from the %d sent", len(back), len(data))
	}
}

// TestNetworkAllowDeny boots a VM with one allow rule and probes, from the
// guest, peers of a test Internet (namespaces the test made): the allowed
// host:port answers, every other target is dropped by the firewall; a VM
// without rules has no network at all.
func TestNetworkAllowDeny(t *testing.T) {
	setup(t)
	peerA, peerB, meta := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("203.0.113.20"), netip.MustParseAddr("169.254.169.254")
	inet := testutil.NewInternet(t, peerA, peerB, meta)
	for _, ap := range []string{"203.0.113.10:8080", "203.0.113.10:9090", "203.0.113.20:8080", "169.254.169.254:80"} {
		testutil.Serve(t, inet.NS, netip.MustParseAddrPort(ap))
	}
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	testutil.Serve(t, host, netip.AddrPortFrom(inet.HostAddr, 7070))
	targets := []struct {
		addr string
		pass bool
	}{
		{"203.0.113.10 8080", true},
		{"203.0.113.10 9090", false},
		{"203.0.113.20 8080", false},
		{"169.254.169.254 80", false},
		{inet.HostAddr.String() + " 7070", false},
	}
	script := "for t in"
	for _, tg := range targets {
		script += " " + strings.ReplaceAll(tg.addr, " ", ":")
	}
	// The probes run side by side: a dropped SYN costs the 2 s timeout.
	script += `; do (out=$(nc -w 2 ${t%:*} ${t#*:} </dev/null 2>&1); echo "$t => ${out:-nothing}") & done; wait`
	r := run(t, nil, "run", "--backend", "vm", "--allow", "203.0.113.10/32:8080/tcp", "--", "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("exit %d; stderr: %s", r.code, r.stderr)
	}
	t.Logf("guest:\n%s", r.stdout)
	for _, tg := range targets {
		key := strings.ReplaceAll(tg.addr, " ", ":")
		line := lineFor(r.stdout, key)
		reached := strings.Contains(line, "tcp "+strings.ReplaceAll(tg.addr, " ", ":"))
		if reached != tg.pass {
			t.Errorf("%s: %q, want reached=%v", key, line, tg.pass)
		}
	}
	// Without rules there is no link: the peer is unreachable at once.
	r = run(t, nil, "run", "--backend", "vm", "--", "sh", "-c", `nc -w 2 203.0.113.10 8080 </dev/null 2>&1; ls /sys/class/net`)
	if strings.Contains(r.stdout, "tcp 203.0.113.10") || strings.Contains(r.stdout, "eth0") {
		t.Errorf("a VM without --allow reached the network or has a link: %q", r.stdout)
	}
}

func lineFor(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, key+" ") {
			return l
		}
	}
	return "(no line for " + key + ")"
}

// started is a run whose guest command printed "ready".
type started struct {
	cmd    *exec.Cmd
	dir    string // the sandbox's state directory
	stderr *bytes.Buffer
}

func startReady(t *testing.T, name string, args ...string) *started {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--root", root, "run", "--backend", "vm", "--name", name}, args...)...)
	cmd.Env = env()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- l
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		if l != "ready\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("first line %q; stderr: %s", l, errb.String())
		}
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("no ready line; stderr: %s", errb.String())
	}
	return &started{cmd: cmd, dir: filepath.Join(root, "sandboxes", string(sandbox.KeyOf(name))), stderr: &errb}
}

// qemuPID reads QEMU's PID from the driver's record.
func qemuPID(t *testing.T, dir string) int {
	t.Helper()
	var rec qemu.Record
	if err := state.ReadJSON(filepath.Join(dir, qemu.RecordFile), &rec); err != nil || rec.PID <= 0 {
		t.Fatalf("qemu record in %s: %+v %v", dir, rec, err)
	}
	return rec.PID
}

// TestVMMConfinedAndDestroyed checks the running QEMU from the kernel's
// side — seccomp filter mode with no_new_privs, the sandbox's network
// namespace (with the tap), its cgroup and memory limit — then forwards a
// signal to the command and checks that the exit status reflects it and
// that nothing is left: no QEMU, tap, netns, cgroup or files.
func TestVMMConfinedAndDestroyed(t *testing.T) {
	setup(t)
	testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	s := startReady(t, "vm-live", "--allow", "203.0.113.10/32:8080", "--memory", "256m", "--", "sh", "-c", "echo ready; exec sleep 60")
	pid := qemuPID(t, s.dir)
	st, err := seccomp.ReadStatus(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Seccomp != 2 || !st.NoNewPrivs || st.SeccompFilters < 2 {
		t.Errorf("QEMU %d: %+v, want Seccomp 2, NoNewPrivs, at least 2 filters (IronClaw's outer filter + QEMU's -sandbox)", pid, st)
	}
	key := sandbox.KeyOf("vm-live")
	netnsPath := filepath.Join("/run/netns", network.NamesOf(key).Netns)
	if !sameFile(t, fmt.Sprintf("/proc/%d/ns/net", pid), netnsPath) {
		t.Errorf("QEMU %d is not in the sandbox's netns %s", pid, netnsPath)
	}
	if out, err := exec.Command("ip", "netns", "exec", network.NamesOf(key).Netns, "ip", "-o", "link", "show", network.TapIf).CombinedOutput(); err != nil || !strings.Contains(string(out), "UP") {
		t.Errorf("tap in the sandbox's netns: %v %s", err, out)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil || !strings.Contains(string(cg), string(key)) {
		t.Errorf("QEMU's cgroups %q (%v) do not name the sandbox %s", cg, err, key)
	}
	if lim, ok := memoryLimit(string(cg)); ok {
		if want := int64(256<<20) + qemu.Overhead; lim != want {
			t.Errorf("QEMU's memory limit %d, want guest 256 MiB + overhead = %d", lim, want)
		}
	} else {
		t.Errorf("no memory cgroup limit found for QEMU in %q", cg)
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = s.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
		t.Fatalf("ironclaw after SIGTERM: %v, want exit %d; stderr %s", err, 128+int(syscall.SIGTERM), s.stderr)
	}
	assertGone(t, pid, s.dir, key)
}

// memoryLimit reads the memory limit of the cgroup a /proc/PID/cgroup
// listing names (v1 memory controller, or v2).
func memoryLimit(cg string) (int64, bool) {
	for _, l := range strings.Split(cg, "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		var p string
		switch {
		case strings.Contains(","+f[1]+",", ",memory,"):
			p = filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.limit_in_bytes")
		case f[1] == "":
			p = filepath.Join("/sys/fs/cgroup", f[2], "memory.max")
		default:
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			return v, true
		}
	}
	return 0, false
}

func sameFile(t *testing.T, a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		t.Logf("stat %s / %s: %v / %v", a, b, err1, err2)
		return false
	}
	return os.SameFile(fa, fb)
}

// assertGone checks that a sandbox left nothing: QEMU, netns, links,
// cgroups, state directory.
func assertGone(t *testing.T, pid int, dir string, key sandbox.Key) {
	t.Helper()
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(b, []byte("qemu")) {
		t.Errorf("QEMU %d still runs", pid)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", network.NamesOf(key).Netns)); !os.IsNotExist(err) {
		t.Errorf("netns left: %v", err)
	}
	if links, _ := testutil.LeakedLinks(network.IfPrefix); len(links) > 0 {
		t.Errorf("links left: %v", links)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(dir)
		t.Errorf("state dir left (%v): %v", err, ents)
	}
	r, err := state.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(m, r.Name(), string(key))); err == nil {
			t.Errorf("cgroup left in %s", m)
		}
	}
}

// TestKilledOwnerReclaimedByGC SIGKILLs ironclaw while its VM runs: QEMU,
// which runs as a uid of its own (so the kernel cleared its parent-death
// signal), dies with its owner through its watchdog, the watchdog exits
// with it, and `ironclaw gc` removes the rest from the records.
func TestKilledOwnerReclaimedByGC(t *testing.T) {
	setup(t)
	testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	s := startReady(t, "vm-killed", "--allow", "203.0.113.10/32:8080", "--", "sh", "-c", "echo ready; exec sleep 60")
	pid := qemuPID(t, s.dir)
	wd, err := seccomp.FindWatchdog(pid)
	if err != nil || wd == 0 {
		t.Fatalf("QEMU %d has no watchdog (%v)", pid, err)
	}
	var pidfds []int
	for _, p := range []int{pid, wd} {
		fd, err := unix.PidfdOpen(p, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		pidfds = append(pidfds, fd)
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	for i, fd := range pidfds {
		if n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 5000); err != nil || n != 1 {
			t.Errorf("%s %d outlived its SIGKILLed owner by 5s (%v)", []string{"QEMU", "its watchdog"}[i], []int{pid, wd}[i], err)
		}
	}
	key := sandbox.KeyOf("vm-killed")
	if _, err := os.Stat(s.dir); err != nil {
		t.Fatalf("the killed owner's state dir is gone before gc: %v", err)
	}
	g := exec.Command(bin, "--root", root, "gc")
	g.Env = env()
	if out, err := g.CombinedOutput(); err != nil || !strings.Contains(string(out), "reclaimed 1") {
		t.Fatalf("gc: %v %s", err, out)
	}
	assertGone(t, pid, s.dir, key)
}

// TestCrashMidBoot kills QEMU while the guest boots: ironclaw reports the
// early exit in one line naming the step, exits 125 and leaves nothing.
func TestCrashMidBoot(t *testing.T) {
	setup(t)
	name := "vm-crash"
	dir := filepath.Join(root, "sandboxes", string(sandbox.KeyOf(name)))
	cmd := exec.Command(bin, "--root", root, "run", "--backend", "vm", "--name", name, "--", "true")
	cmd.Env = env()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := 0
	for deadline := time.Now().Add(time.Minute); pid == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var rec qemu.Record
		if state.ReadJSON(filepath.Join(dir, qemu.RecordFile), &rec) == nil {
			pid = rec.PID
		}
	}
	if pid == 0 {
		_ = cmd.Process.Kill()
		t.Fatalf("QEMU never started; stderr %s", errb.String())
	}
	time.Sleep(300 * time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 125 {
		t.Fatalf("exit %v, want 125; stderr %s", err, errb.String())
	}
	msg := strings.TrimSpace(errb.String())
	if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "boot") || !strings.Contains(msg, "QEMU exited early") {
		t.Errorf("stderr %q: want one line naming the boot step and QEMU's early exit", msg)
	}
	assertGone(t, pid, dir, sandbox.KeyOf(name))
}

// TestBadImage: an image whose kernel file is missing, or is not a kernel,
// fails the start with a clear message and exit 125.
func TestBadImage(t *testing.T) {
	setup(t)
	img := vmtest.Image(t)
	for _, c := range []struct {
		name, kernel string
		want         []string
	}{
		{"missing kernel", "", []string{"vmlinuz", "no such file"}},
		{"not a kernel", "this is not a kernel", []string{"boot", "QEMU exited early"}},
	} {
		dir := t.TempDir()
		for _, f := range []string{"initramfs.cpio", "rootfs.ext4"} {
			if err := os.Symlink(filepath.Join(img.Dir, f), filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
		if c.kernel != "" {
			if err := os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte(c.kernel), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		m, _ := json.Marshal(map[string]any{"hash": "test", "kernel": "vmlinuz", "initramfs": "initramfs.cpio", "rootfs": "rootfs.ext4"})
		if err := os.WriteFile(filepath.Join(dir, "image.json"), m, 0o644); err != nil {
			t.Fatal(err)
		}
		r := run(t, nil, "run", "--backend", "vm", "--image", dir, "--", "true")
		msg := strings.TrimSpace(r.stderr)
		t.Logf("%s: %s", c.name, msg)
		if r.code != 125 || strings.Contains(msg, "\n") {
			t.Errorf("%s: exit %d, stderr %q: want 125 and one line", c.name, r.code, msg)
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: stderr %q lacks %q", c.name, msg, w)
			}
		}
	}
}

// TestAutoAndDoctor: --backend auto picks a VM only when this host's KVM
// boot probe passes (on a host where KVM does not boot a stock kernel, it
// picks the jail and the command sees the host's kernel); doctor reports
// the same probe, the VMMs and the image.
func TestAutoAndDoctor(t *testing.T) {
	setup(t)
	vmtest.Image(t) // the default image exists: auto never builds one
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--root", root, "run", "--backend", "auto", "--", "uname", "-r")
	cmd.Env = append(env(), "IRONCLAW_VM_ACCEL=auto")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("run --backend auto: %v", err)
	}
	var probe struct {
		KVM    bool   `json:"kvm"`
		Detail string `json:"detail"`
	}
	if err := state.ReadJSON(vm.ProbeCacheFile(root), &probe); err != nil {
		t.Fatalf("auto left no probe verdict: %v", err)
	}
	got := strings.TrimSpace(string(out))
	t.Logf("KVM usable: %v (%s); auto ran on kernel %s", probe.KVM, probe.Detail, got)
	if probe.KVM == (got == hostRelease(t)) {
		t.Errorf("auto ran on %q with KVM usable=%v: want the guest kernel exactly when KVM is usable", got, probe.KVM)
	}
	d := exec.CommandContext(ctx, bin, "--root", root, "doctor", "--json")
	d.Env = env()
	dout, err := d.Output()
	if err != nil {
		t.Fatalf("doctor: %v", err)
	}
	var rep struct {
		Checks []struct{ Name, Status, Detail string } `json:"checks"`
	}
	if err := json.Unmarshal(dout, &rep); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, c := range rep.Checks {
		seen[c.Name] = c.Status + ": " + c.Detail
	}
	for name, want := range map[string]string{"vmm qemu": "ok: ", "nftables": "ok: ", "vm image": "ok: "} {
		if !strings.HasPrefix(seen[name], want) {
			t.Errorf("doctor %s = %q, want %q…", name, seen[name], want)
		}
	}
	if !strings.Contains(seen["vmm qemu"], "QEMU emulator version") {
		t.Errorf("doctor does not give QEMU's version: %q", seen["vmm qemu"])
	}
	if wantKVM := map[bool]string{true: "ok: ", false: "warn: "}[probe.KVM]; !strings.HasPrefix(seen["kvm"], wantKVM) {
		t.Errorf("doctor kvm = %q, disagrees with the probe (kvm=%v)", seen["kvm"], probe.KVM)
	}
}

// TestTimeoutAndMissingCommand: --timeout destroys the VM and exits 124,
// a command the guest does not have exits 127, like the jail; neither
// leaves anything.
func TestTimeoutAndMissingCommand(t *testing.T) {
	setup(t)
	start := time.Now()
	r := run(t, nil, "run", "--backend", "vm", "--name", "vm-timeout", "--timeout", "2s", "--", "sleep", "60")
	if r.code != 124 || !strings.Contains(r.stderr, "timed out") {
		t.Errorf("--timeout: exit %d, stderr %q; want 124", r.code, r.stderr)
	}
	if d := time.Since(start); d > 45*time.Second {
		t.Errorf("--timeout 2s took %s", d)
	}
	r = run(t, nil, "run", "--backend", "vm", "--name", "vm-nocmd", "--", "no-such-command")
	if r.code != 127 || !strings.Contains(r.stderr, "no-such-command") {
		t.Errorf("missing command: exit %d, stderr %q; want 127 naming it", r.code, r.stderr)
	}
	for _, name := range []string{"vm-timeout", "vm-nocmd"} {
		if _, err := os.Stat(filepath.Join(root, "sandboxes", string(sandbox.KeyOf(name)))); !os.IsNotExist(err) {
			t.Errorf("%s: state dir left: %v", name, err)
		}
	}
}
