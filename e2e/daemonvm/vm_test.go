package daemonvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"github.com/ironclaw/ironclaw/internal/api/apitest"
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
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/vm"
	"golang.org/x/sys/unix"
)

// TestDaemonVMLifecycle creates a micro-VM sandbox through the daemon and
// uses it like a jail sandbox: the VMM is confined (seccomp, cgroup with
// the guest's memory), execs run in the guest kernel as the sandbox's
// user with streams, exit codes and signals, files make round trips and
// belong to that user, paths stay inside the guest, logs and metrics
// record it, and destroy leaves nothing.
func TestDaemonVMLifecycle(t *testing.T) {
	setup(t)
	d := startDaemon(t, nil)
	ctx := ctxT(t)
	c := d.c
	evs := d.follow()
	const mem = 256 << 20
	sb, err := c.Create(ctx, api.CreateRequest{ID: "vm1", Backend: "vm", Env: []string{"FROM_SPEC=1"}, Labels: map[string]string{"kind": "vm"},
		Resources: &api.Resources{MemoryBytes: ptr(int64(mem))}})
	if err != nil {
		t.Fatalf("create: %v\n%s", err, d.log.String())
	}
	if sb.Backend != "vm" || sb.State != "running" || sb.Hostname != "vm1" || sb.InitPID <= 0 || sb.Usage == nil || sb.Labels["kind"] != "vm" {
		t.Errorf("created: %+v", sb)
	}
	pid := sb.InitPID
	checkVMM(t, pid, "vm1", mem)

	// Execs: the guest's kernel, the sandbox's identity and environment.
	checkGuestKernel(t, c, "vm1")
	out := mustSh(t, c, "vm1", "id -u; id -g; hostname; pwd; echo $FROM_SPEC $HOME $USER")
	if out != "1000\n1000\nvm1\n/workspace\n1 /workspace sandbox\n" {
		t.Errorf("identity: %q", out)
	}
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if out, _, st := execOut(t, c, "vm1", data, "sh", "-c", "sha256sum | cut -c1-64; echo err >&2; exit 3"); out != hex.EncodeToString(sum[:])+"\n" || st.ExitCode != 3 {
		t.Errorf("stdin through the guest: %q %+v", out, st)
	}
	if _, _, st := execOut(t, c, "vm1", nil, "sh", "-c", "kill -TERM $$"); st.ExitCode != 143 || st.Signal != 15 {
		t.Errorf("killed by TERM: %+v", st)
	}
	if _, err := c.ExecBuffered(ctx, "vm1", api.ExecRequest{Argv: []string{"no-such-program"}}); !client.IsCode(err, api.CodeCommandNotFound) {
		t.Errorf("missing program: %v", err)
	}
	if res, err := c.ExecBuffered(ctx, "vm1", api.ExecRequest{Argv: []string{"id", "-u"}, User: "root"}); err != nil || string(res.Stdout) != "0\n" {
		t.Errorf("exec as root: %+v %v", res, err)
	}

	// Files: a round trip, owned by the sandbox's user as in a jail.
	if n, err := c.Upload(ctx, "vm1", "/workspace/data.bin", bytes.NewReader(data), 0o640); err != nil || n != int64(len(data)) {
		t.Fatalf("upload: %d %v", n, err)
	}
	if fi, err := c.Stat(ctx, "vm1", "/workspace/data.bin"); err != nil || fi.Size != int64(len(data)) || fi.Mode != 0o640 || fi.Type != "file" {
		t.Errorf("stat: %+v %v", fi, err)
	}
	if out := mustSh(t, c, "vm1", "stat -c '%u:%g %a' /workspace/data.bin; sha256sum /workspace/data.bin | cut -c1-64; echo more >> /workspace/data.bin"); out != "1000:1000 640\n"+hex.EncodeToString(sum[:])+"\n" {
		t.Errorf("the guest's view of the upload: %q", out)
	}
	var back bytes.Buffer
	if _, err := c.Download(ctx, "vm1", "/workspace/data.bin", &back); err != nil || !bytes.Equal(back.Bytes(), append(data, "more\n"...)) {
		t.Errorf("download: %d bytes, %v", back.Len(), err)
	}
	if err := c.Mkdir(ctx, "vm1", "/workspace/d/e", 0o750, true); err != nil {
		t.Fatal(err)
	}
	if l, err := c.ListDir(ctx, "vm1", "/workspace"); err != nil || len(l) != 2 {
		t.Errorf("list: %+v %v", l, err)
	}
	if err := c.Remove(ctx, "vm1", "/workspace/d", true); err != nil {
		t.Error(err)
	}

	// Paths stay inside the guest. The file root is the guest's / (its
	// /etc/hostname, not the host's); traversal is refused; links that
	// lead out are refused like in a jail; a host file is not there.
	back.Reset()
	if _, err := c.Download(ctx, "vm1", "/etc/hostname", &back); err != nil || back.String() != "vm1\n" {
		t.Errorf("/etc/hostname of the guest: %q %v", back.String(), err)
	}
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "host-secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustSh(t, c, "vm1", "ln -s / /workspace/abs && ln -s ../../../../../ /workspace/rel && ln -s "+secretDir+" /workspace/hostdir")
	for _, p := range []string{"/workspace/abs/etc/passwd", "/workspace/rel/etc/passwd", "/workspace/hostdir/host-secret", secret} {
		var b bytes.Buffer
		_, err := c.Download(ctx, "vm1", p, &b)
		if !client.IsCode(err, api.CodePathEscape) && !client.IsCode(err, api.CodeFileNotFound) {
			t.Errorf("download %s: %v, want path_escape or file_not_found", p, err)
		}
		if strings.Contains(b.String(), "host secret") {
			t.Errorf("download %s leaked the host's file", p)
		}
	}
	if _, err := c.Upload(ctx, "vm1", "/workspace/abs/tmp/planted", strings.NewReader("x"), 0); !client.IsCode(err, api.CodePathEscape) {
		t.Errorf("upload through an absolute link: %v, want path_escape", err)
	}
	if _, err := c.Stat(ctx, "vm1", "/workspace/../etc/passwd"); !client.IsCode(err, api.CodeInvalidField) {
		t.Errorf("traversal: %v, want invalid_field", err)
	}

	// Logs, metrics, inspect.
	logs, err := c.Logs(ctx, "vm1", 0)
	if err != nil {
		t.Fatal(err)
	}
	var execs int
	for _, ev := range logs {
		if ev.Type == "exec_exited" {
			execs++
		}
	}
	if execs < 7 {
		t.Errorf("logs: %d exec_exited events, want the execs above: %+v", execs, logs)
	}
	if v := apitest.Metric(t, d.socket, `ironclaw_vm_create_seconds_count{source="cold"}`); v != "1" {
		t.Errorf("vm create metric %q, want 1", v)
	}
	if got, err := c.Get(ctx, "vm1"); err != nil || got.InitPID != pid || got.Usage == nil || got.Usage.MemoryBytes == 0 {
		t.Errorf("inspect: %+v %v", got, err)
	}

	// Destroy leaves nothing.
	if err := c.Destroy(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	evs.wait(t, 10*time.Second, "vm1", "destroyed", "destroyed by request")
	assertGone(t, pid, "vm1")
	if _, err := c.Get(ctx, "vm1"); !client.IsCode(err, api.CodeNotFound) {
		t.Errorf("get after destroy: %v", err)
	}
}

// TestDaemonVMRestart decides what a daemon restart does to micro-VMs:
// a loopback-only VM survives a SIGKILLed daemon (QEMU is detached and
// holds its state directory's lock) and the next daemon re-attaches it,
// state and all; a networked VM — its allow rules proved through the tap
// with real traffic and replaced while it runs — dies with the daemon
// (its egress servers lived there) and the next daemon reclaims its QEMU,
// tap, netns, cgroup and files. The survivor's idle timeout then ends it.
func TestDaemonVMRestart(t *testing.T) {
	setup(t)
	inet := testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:8080"))
	testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:9090"))
	d := startDaemon(t, nil)
	ctx := ctxT(t)
	mem := &api.Resources{MemoryBytes: ptr(int64(256 << 20))}

	netSB, err := d.c.Create(ctx, api.CreateRequest{ID: "vmnet", Backend: "vm", Resources: mem,
		Network: &api.Network{Allow: []string{"203.0.113.10/32:8080/tcp"}}})
	if err != nil {
		t.Fatalf("create networked: %v\n%s", err, d.log.String())
	}
	if len(netSB.Addresses) != 2 {
		t.Errorf("networked VM addresses %v", netSB.Addresses)
	}
	probe := func() map[string]bool {
		out := mustSh(t, d.c, "vmnet", `for p in 8080 9090; do (o=$(nc -w 2 203.0.113.10 $p </dev/null 2>&1); echo "$p ${o:-nothing}") & done; wait`)
		got := map[string]bool{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			port, rest, _ := strings.Cut(l, " ")
			got[port] = strings.Contains(rest, "tcp 203.0.113.10:"+port)
		}
		return got
	}
	if got := probe(); !got["8080"] || got["9090"] {
		t.Errorf("allow 8080: %v, want 8080 reached and 9090 dropped", got)
	}
	if _, err := d.c.UpdateNetwork(ctx, "vmnet", []string{"203.0.113.10/32:9090/tcp"}); err != nil {
		t.Fatal(err)
	}
	if got := probe(); got["8080"] || !got["9090"] {
		t.Errorf("after the update to 9090: %v, want 9090 reached and 8080 dropped", got)
	}

	keep, err := d.c.Create(ctx, api.CreateRequest{ID: "vmkeep", Backend: "vm", Resources: mem, IdleTimeout: "8s"})
	if err != nil {
		t.Fatalf("create loopback: %v\n%s", err, d.log.String())
	}
	mustSh(t, d.c, "vmkeep", "echo kept > /workspace/state; ls /sys/class/net")
	keepPID, netPID := keep.InitPID, netSB.InitPID
	// QEMU runs as a uid of its own, which clears a parent-death signal:
	// the networked (non-detached) VM has a root watchdog for that, the
	// detached one none.
	netWatchdog, err := seccomp.FindWatchdog(netPID)
	if err != nil || netWatchdog == 0 {
		t.Fatalf("the networked VM's QEMU %d has no watchdog (%v)", netPID, err)
	}
	if w, err := seccomp.FindWatchdog(keepPID); err != nil || w != 0 {
		t.Errorf("the detached VM's QEMU %d has a watchdog %d (%v)", keepPID, w, err)
	}
	wfd, err := unix.PidfdOpen(netWatchdog, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(wfd)

	d.kill()
	// The networked VM's QEMU dies with the daemon; the other one runs on
	// and keeps its directory claimed.
	deadline := time.Now().Add(10 * time.Second)
	for qemuAlive(netPID) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if qemuAlive(netPID) {
		t.Errorf("the networked VM's QEMU %d outlived the daemon", netPID)
	}
	if !qemuAlive(keepPID) {
		t.Fatalf("the loopback VM's QEMU %d died with the daemon", keepPID)
	}
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(wfd), Events: unix.POLLIN}}, 5000); err != nil || n != 1 {
		t.Errorf("the networked VM's watchdog %d outlived its QEMU (%v)", netWatchdog, err)
	}

	d.start()
	evs := d.follow()
	l, err := d.c.List(ctx, nil)
	if err != nil || len(l) != 1 || l[0].ID != "vmkeep" || l[0].State != "running" || l[0].InitPID != keepPID || l[0].Backend != "vm" {
		t.Fatalf("after the restart: %+v %v", l, err)
	}
	evs.wait(t, 5*time.Second, "vmkeep", "reattached", "")
	evs.wait(t, 5*time.Second, "vmnet", "destroyed", "ended while the daemon was down")
	assertGone(t, netPID, "vmnet")
	if out := mustSh(t, d.c, "vmkeep", "cat /workspace/state"); out != "kept\n" {
		t.Errorf("the re-attached VM lost its state: %q", out)
	}
	checkGuestKernel(t, d.c, "vmkeep")
	checkVMM(t, keepPID, "vmkeep", 256<<20)
	if _, err := d.c.UpdateNetwork(ctx, "vmkeep", []string{"203.0.113.10/32:8080/tcp"}); !client.IsCode(err, api.CodeUnsupported) {
		t.Errorf("network rules for a loopback-only VM: %v, want unsupported", err)
	}

	// Idle timeout (counted from the re-attach and the last exec).
	evs.wait(t, 30*time.Second, "vmkeep", "timeout", "idle")
	evs.wait(t, 10*time.Second, "vmkeep", "destroyed", "timeout: idle")
	assertGone(t, keepPID, "vmkeep")
}

// TestDaemonVMKilledMidCreate SIGKILLs the daemon while a VM boots: QEMU,
// started detached, runs on holding the directory's lock, so GC alone
// would never take it; the next daemon finds the unfinished create in its
// store and reclaims QEMU, cgroup and files.
func TestDaemonVMKilledMidCreate(t *testing.T) {
	setup(t)
	d := startDaemon(t, nil)
	errc := make(chan error, 1)
	go func() {
		_, err := d.c.Create(context.Background(), api.CreateRequest{ID: "vmhalf", Backend: "vm", Resources: &api.Resources{MemoryBytes: ptr(int64(256 << 20))}})
		errc <- err
	}()
	var rec struct {
		PID int `json:"pid"`
	}
	deadline := time.Now().Add(time.Minute)
	for rec.PID == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU did not start\n%s", d.log.String())
		}
		if b, err := os.ReadFile(filepath.Join(sandboxDir("vmhalf"), "qemu.json")); err == nil {
			_ = json.Unmarshal(b, &rec)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.kill()
	if err := <-errc; err == nil {
		t.Fatal("the create succeeded although the daemon was killed")
	}
	if !qemuAlive(rec.PID) {
		t.Fatalf("QEMU %d did not outlive the daemon", rec.PID)
	}
	// QEMU holds the directory's lock: GC sees a live owner and leaves it.
	gc := exec.Command(bin, "--root", root, "gc")
	if out, err := gc.CombinedOutput(); err != nil || !strings.Contains(string(out), "reclaimed 0") || !qemuAlive(rec.PID) {
		t.Fatalf("gc with the VM's QEMU alive: %v %s (QEMU alive: %v)", err, out, qemuAlive(rec.PID))
	}
	d.start()
	if l, err := d.c.List(context.Background(), nil); err != nil || len(l) != 0 {
		t.Errorf("after the restart: %+v %v", l, err)
	}
	d.follow().wait(t, 5*time.Second, "vmhalf", "destroyed", "the daemon stopped during the create")
	assertGone(t, rec.PID, "vmhalf")
}

// TestDaemonVMPool keeps one prepared micro-VM in a warm pool: a create of
// its class takes it (agent up, no boot), it runs the guest kernel, and
// the pool refills with a fresh VM. Its QEMU killed from outside makes the
// sandbox exited, with nothing left of the VM.
func TestDaemonVMPool(t *testing.T) {
	setup(t)
	cfg := filepath.Join(t.TempDir(), "pools.json")
	tmpl := `[{"name": "vm", "size": 1, "template": {"backend": "vm", "resources": {"memory_bytes": 268435456}}}]`
	if err := os.WriteFile(cfg, []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, nil, "--pool-config", cfg)
	ctx := ctxT(t)
	waitPool := func(want string) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for apitest.Metric(t, d.socket, `ironclaw_pool_size{class="vm"}`) != want {
			if time.Now().After(deadline) {
				t.Fatalf("vm pool size %s, want %s\n%s", apitest.Metric(t, d.socket, `ironclaw_pool_size{class="vm"}`), want, d.log.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitPool("1")
	t0 := time.Now()
	sb, err := d.c.Create(ctx, api.CreateRequest{ID: "pooled", Backend: "vm", Resources: &api.Resources{MemoryBytes: ptr(int64(256 << 20))}})
	took := time.Since(t0)
	if err != nil {
		t.Fatal(err)
	}
	if !sb.FromPool || !strings.HasPrefix(sb.BackendID, "pool-") || sb.Backend != "vm" {
		t.Fatalf("not from the vm pool: %+v", sb)
	}
	t.Logf("create from the vm pool took %s", took)
	checkGuestKernel(t, d.c, "pooled")
	if out := mustSh(t, d.c, "pooled", "ls -A /workspace; id -u"); out != "1000\n" {
		t.Errorf("a used pool member? %q", out)
	}
	if v := apitest.Metric(t, d.socket, `ironclaw_vm_create_seconds_count{source="pool"}`); v != "1" {
		t.Errorf("vm pool create metric %q, want 1", v)
	}
	first := sb.BackendID
	pid := sb.InitPID
	// A VMM killed from outside: the sandbox is reported exited and its
	// kernel objects are removed at once; destroy drops the record.
	evs := d.follow()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	evs.wait(t, 10*time.Second, "pooled", "exited", "init exited")
	if got, err := d.c.Get(ctx, "pooled"); err != nil || got.State != "exited" || got.Exit == nil {
		t.Errorf("after QEMU was killed: %+v %v", got, err)
	}
	assertGone(t, pid, first)
	if err := d.c.Destroy(ctx, "pooled"); err != nil {
		t.Fatal(err)
	}
	waitPool("1")
	// Members outlive the daemon (they are loopback-only); a daemon
	// without the pool destroys the surplus one at its start.
	evs.stop() // an open event stream holds up the daemon's graceful stop
	d.stop()
	d.args = nil
	d.start()
	entries, _ := os.ReadDir(filepath.Join(root, "sandboxes"))
	if len(entries) != 0 {
		t.Errorf("surplus pool member left: %v", entries)
	}
}

// TestDaemonVMNetworkPool: a warm micro-VM whose template has address
// rules serves a create with other address rules. It is given them before
// its first command (network_updated before exec_started in its log):
// the guest reaches the asked port through its tap and not the
// template's. Networked members die with their daemon; the next one
// reclaims them.
func TestDaemonVMNetworkPool(t *testing.T) {
	setup(t)
	inet := testutil.NewInternet(t, netip.MustParseAddr("203.0.113.10"))
	testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:8080"))
	testutil.Serve(t, inet.NS, netip.MustParseAddrPort("203.0.113.10:9090"))
	cfg := filepath.Join(t.TempDir(), "pools.json")
	tmpl := `[{"name": "vmnet", "size": 1, "template": {"backend": "vm", "resources": {"memory_bytes": 268435456},
		"network": {"allow": ["203.0.113.10/32:8080/tcp"]}}}]`
	if err := os.WriteFile(cfg, []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, nil, "--pool-config", cfg)
	ctx := ctxT(t)
	for deadline := time.Now().Add(2 * time.Minute); apitest.Metric(t, d.socket, `ironclaw_pool_size{class="vmnet"}`) != "1"; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the networked vm pool did not fill\n%s", d.log.String())
		}
	}
	sb, err := d.c.Create(ctx, api.CreateRequest{ID: "vmpoolnet", Backend: "vm", Resources: &api.Resources{MemoryBytes: ptr(int64(256 << 20))},
		Network: &api.Network{Allow: []string{"203.0.113.10/32:9090/tcp"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !sb.FromPool || sb.Backend != "vm" || len(sb.Addresses) != 2 {
		t.Fatalf("not a networked member of the vm pool: %+v", sb)
	}
	out := mustSh(t, d.c, "vmpoolnet", `for p in 8080 9090; do (o=$(nc -w 2 203.0.113.10 $p </dev/null 2>&1); echo "$p ${o:-nothing}") & done; wait`)
	got := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		port, rest, _ := strings.Cut(l, " ")
		got[port] = strings.Contains(rest, "tcp 203.0.113.10:"+port)
	}
	if got["8080"] || !got["9090"] {
		t.Errorf("a member given 9090: %v, want 9090 reached and 8080 (its template's) dropped", got)
	}
	evs, err := d.c.Logs(ctx, "vmpoolnet", 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
	}
	if u, e := slices.Index(types, "network_updated"), slices.Index(types, "exec_started"); u < 0 || e < 0 || u > e {
		t.Errorf("log %v, want network_updated before exec_started", types)
	}
	pid := sb.InitPID
	if err := d.c.Destroy(ctx, "vmpoolnet"); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pid, sb.BackendID)
	// The refilled member is networked: it dies with the daemon, and a
	// daemon without the pool reclaims it.
	d.stop()
	d.args = nil
	d.start()
	entries, _ := os.ReadDir(filepath.Join(root, "sandboxes"))
	if len(entries) != 0 {
		t.Errorf("left after the restart: %v", entries)
	}
}

// TestDaemonBackendAuto: backend auto is a micro-VM only where this boot's
// KVM probe passed (TCG is never picked by auto) and the spec fits a VM;
// the sandbox reports the backend it got. On a host where KVM does not
// boot a guest (this one) auto is the jail. A VM with host paths or jail
// seccomp settings is refused before anything starts.
func TestDaemonBackendAuto(t *testing.T) {
	setup(t)
	d := startDaemon(t, []string{"IRONCLAW_VM_ACCEL=auto"})
	ctx := ctxT(t)
	sb, err := d.c.Create(ctx, api.CreateRequest{ID: "auto1", Backend: "auto"})
	if err != nil {
		t.Fatalf("create auto: %v\n%s", err, d.log.String())
	}
	// What the daemon's probe found, from its per-boot cache.
	want := "jail"
	var cache struct {
		KVM    bool   `json:"kvm"`
		Detail string `json:"detail"`
	}
	if b, err := os.ReadFile(vm.ProbeCacheFile(root)); err == nil {
		if err := json.Unmarshal(b, &cache); err != nil {
			t.Fatal(err)
		}
		if cache.KVM {
			want = "vm"
		}
	}
	t.Logf("KVM probe: %+v → auto is %s", cache, want)
	if sb.Backend != want {
		t.Errorf("auto gave %s, want %s", sb.Backend, want)
	}
	rel := strings.TrimSpace(mustSh(t, d.c, "auto1", "uname -r"))
	if (rel == hostRelease(t)) != (want == "jail") {
		t.Errorf("auto sandbox runs kernel %s (host %s), backend %s", rel, hostRelease(t), sb.Backend)
	}
	// A spec a VM cannot honour goes to the jail under auto ...
	dir := t.TempDir()
	sb2, err := d.c.Create(ctx, api.CreateRequest{ID: "auto2", Backend: "auto", Mounts: []api.Mount{{Source: dir, Target: "/data"}}})
	if err != nil || sb2.Backend != "jail" {
		t.Errorf("auto with a mount: %+v %v, want the jail", sb2, err)
	}
	// ... and is refused for backend vm, naming the field and why.
	for field, req := range map[string]api.CreateRequest{
		"mounts":                 {Backend: "vm", Mounts: []api.Mount{{Source: dir, Target: "/data"}}},
		"workdir":                {Backend: "vm", Workdir: dir},
		"seccomp":                {Backend: "vm", Seccomp: &api.Seccomp{Profile: "strict"}},
		"resources.memory_bytes": {Backend: "vm", Resources: &api.Resources{MemoryBytes: ptr(int64(64 << 20))}},
	} {
		_, err := d.c.Create(ctx, req)
		var e *api.Error
		if !errors.As(err, &e) || e.Code != api.CodeInvalidField || e.Field != field || !strings.Contains(e.Message, "micro-VM") {
			t.Errorf("backend vm with %s: %v, want invalid_field naming it", field, err)
		}
	}
	if n, _ := strconv.Atoi(apitest.Metric(t, d.socket, `ironclaw_sandbox_create_failures_total`)); n != 0 {
		t.Errorf("refused creates counted as failed starts: %d", n)
	}
}
