package daemonvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/ironclaw/ironclaw/internal/api/apitest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
)

// bin is the ironclaw binary under test (ironclaw-agent next to it) and
// root the state root every test of the package uses, one daemon at a
// time; TestMain checks it for leaks after the tests.
var bin, root string

func TestMain(m *testing.M) {
	parents := testroot.Snapshot()
	testutil.HostNetNSMain(m, func() error {
		return errors.Join(testutil.SuiteLeaks(root, state.NameOf(root), network.IfPrefix), parents.Leaked())
	})
}

// setup gates the test, builds ironclaw and ironclaw-agent once, and
// builds (or finds) the default image they boot.
func setup(t *testing.T) {
	t.Helper()
	testutil.RequireHostNetNS(t)
	testutil.RequireCommand(t, "qemu-system-x86_64")
	testutil.RequireCommand(t, "mkfs.ext4")
	vmtest.Kernel(t)
	vmtest.Busybox(t)
	// The default image of this tree's agent, in the shared test cache:
	// the daemon finds it there (the agent below is built the same way,
	// so its content, the image's key, is the same).
	vmtest.Image(t)
	if bin != "" {
		return
	}
	var err error
	if bin, root, err = testutil.BuildSuite("ironclaw-daemonvm-"); err != nil {
		t.Fatal(err)
	}
}

// daemon is an `ironclaw serve` process under test.
type daemon struct {
	t      *testing.T
	args   []string
	env    []string
	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan struct{}
	c      *client.Client
	socket string
}

// startDaemon starts `ironclaw serve` on root with TCG guests (unless env
// says otherwise) and waits until it answers. The test's cleanup destroys
// every sandbox left and stops it.
func startDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, args: args, socket: filepath.Join(root, "ironclaw.sock"),
		env: append([]string{"IRONCLAW_CACHE=" + vmtest.CacheDir(), "IRONCLAW_VM_ACCEL=tcg"}, env...)}
	d.start()
	t.Cleanup(func() {
		if d.cmd == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if l, err := d.c.List(ctx, nil); err == nil {
			for _, s := range l {
				if err := d.c.Destroy(ctx, s.ID); err != nil && !client.IsCode(err, api.CodeNotFound) {
					t.Errorf("cleanup: destroy %s: %v", s.ID, err)
				}
			}
		}
		d.stop()
	})
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.log = &syncBuffer{}
	d.cmd = exec.Command(bin, append([]string{"--root", root, "serve", "--sweep-interval", "100ms"}, d.args...)...)
	d.cmd.Env = append(os.Environ(), d.env...)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(time.Minute)
	for !client.Reachable(context.Background(), d.socket, time.Second) {
		select {
		case <-d.exited:
			d.t.Fatalf("daemon exited at start: %s", d.log.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not answer: %s", d.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := client.New(client.Config{Socket: d.socket, Transport: apitest.Validating(d.t)})
	if err != nil {
		d.t.Fatal(err)
	}
	d.c = c
}

// stop ends the daemon with SIGTERM (persistent sandboxes stay alive).
func (d *daemon) stop() {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	d.c.Close()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("daemon did not stop on SIGTERM:\n%s", d.log.String())
	}
	d.cmd = nil
}

// kill SIGKILLs the daemon.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.exited
	d.c.Close()
	d.cmd = nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// execOut runs argv over an exec stream and returns stdout, stderr and
// the exit status.
func execOut(t *testing.T, c *client.Client, id string, stdin []byte, argv ...string) (string, string, api.ExitStatus) {
	t.Helper()
	var out, errb bytes.Buffer
	eio := client.ExecIO{Stdout: &out, Stderr: &errb}
	if stdin != nil {
		eio.Stdin = bytes.NewReader(stdin)
	}
	e, err := c.Exec(ctxT(t), id, api.ExecRequest{Argv: argv}, eio)
	if err != nil {
		t.Fatalf("exec %v in %s: %v", argv, id, err)
	}
	st, err := e.Wait()
	if err != nil {
		t.Fatalf("exec %v in %s: %v", argv, id, err)
	}
	return out.String(), errb.String(), st
}

// mustSh runs a shell script in the sandbox and requires exit status 0.
func mustSh(t *testing.T, c *client.Client, id, script string) string {
	t.Helper()
	out, errOut, st := execOut(t, c, id, nil, "sh", "-c", script)
	if st.ExitCode != 0 {
		t.Fatalf("%s: %q exited %+v; stdout %q stderr %q", id, script, st, out, errOut)
	}
	return out
}

// eventLog collects a daemon's event stream (stored events first, then
// live ones) in the background.
type eventLog struct {
	mu   sync.Mutex
	evs  []api.Event
	stop func()
}

func (d *daemon) follow() *eventLog {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	el := &eventLog{stop: func() { cancel(); <-done }}
	c := d.c
	go func() {
		defer close(done)
		c.Events(ctx, client.EventFilter{Since: 0}, func(ev api.Event) error {
			el.mu.Lock()
			el.evs = append(el.evs, ev)
			el.mu.Unlock()
			return nil
		})
	}()
	d.t.Cleanup(el.stop)
	return el
}

// wait waits until an event of sandbox id has type typ (and reason, when
// not empty).
func (el *eventLog) wait(t *testing.T, timeout time.Duration, id, typ, reason string) api.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		el.mu.Lock()
		for _, ev := range el.evs {
			if ev.Sandbox == id && ev.Type == typ && (reason == "" || ev.Reason == reason) {
				el.mu.Unlock()
				return ev
			}
		}
		if time.Now().After(deadline) {
			defer el.mu.Unlock()
			t.Fatalf("no %s event (reason %q) of %s within %s; got %+v", typ, reason, id, timeout, el.evs)
		}
		el.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

// hostRelease is the host kernel's release (uname -r).
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

// checkGuestKernel checks that uname -r in the sandbox names the guest's
// Debian cloud kernel, not the host's.
func checkGuestKernel(t *testing.T, c *client.Client, id string) {
	t.Helper()
	rel := strings.TrimSpace(mustSh(t, c, id, "uname -r"))
	if !strings.HasSuffix(rel, "-cloud-amd64") || rel == hostRelease(t) {
		t.Errorf("%s: uname -r = %q, want the guest's cloud kernel (host %s)", id, rel, hostRelease(t))
	}
}

func sandboxDir(backendID string) string {
	return filepath.Join(root, "sandboxes", string(sandbox.KeyOf(backendID)))
}

// qemuAlive reports whether pid is a live (not zombie) QEMU.
func qemuAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && strings.Contains(s[:i], "qemu") && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// checkVMM checks the running QEMU of a sandbox from the kernel's side:
// it is the sandbox's QEMU, filtered by seccomp (IronClaw's outer filter
// and QEMU's own) with no_new_privs, in the sandbox's cgroup with guest
// memory plus QEMU's overhead as its memory limit.
func checkVMM(t *testing.T, pid int, backendID string, guestMem int64) {
	t.Helper()
	if !qemuAlive(pid) {
		t.Fatalf("%s: pid %d is not a live QEMU", backendID, pid)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if !bytes.Contains(cmdline, []byte(sandboxDir(backendID)+"/")) {
		t.Errorf("QEMU %d does not run the sandbox %s: %q", pid, backendID, cmdline)
	}
	st, err := seccomp.ReadStatus(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Seccomp != 2 || !st.NoNewPrivs || st.SeccompFilters < 2 {
		t.Errorf("QEMU %d: %+v, want Seccomp 2, NoNewPrivs, at least 2 filters (IronClaw's outer filter + QEMU's -sandbox)", pid, st)
	}
	// It runs as an unprivileged uid of its own (-runas), without
	// capabilities.
	id := strconv.Itoa(seccomp.VMMUID(pid))
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !strings.Contains(string(status), "\nUid:\t"+id+"\t"+id+"\t"+id+"\t"+id+"\n") || st.CapEff != 0 {
		t.Errorf("QEMU %d does not run as uid %s without capabilities:\n%s", pid, id, status)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	key := string(sandbox.KeyOf(backendID))
	if err != nil || !strings.Contains(string(cg), key) {
		t.Errorf("QEMU's cgroups %q (%v) do not name the sandbox %s", cg, err, key)
	}
	if lim, ok := memoryLimit(string(cg)); !ok || lim != guestMem+qemu.Overhead {
		t.Errorf("QEMU's memory limit %d (found %v), want guest %d + overhead %d", lim, ok, guestMem, int64(qemu.Overhead))
	}
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

// assertGone checks that a sandbox left nothing: no QEMU, netns, links,
// cgroups or state directory.
func assertGone(t *testing.T, pid int, backendID string) {
	t.Helper()
	key := sandbox.KeyOf(backendID)
	deadline := time.Now().Add(10 * time.Second)
	for qemuAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if qemuAlive(pid) {
		t.Errorf("%s: QEMU %d still runs", backendID, pid)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", network.NamesOf(key).Netns)); !os.IsNotExist(err) {
		t.Errorf("%s: netns left: %v", backendID, err)
	}
	names := network.NamesOf(key)
	links, _ := testutil.LeakedLinks(network.IfPrefix)
	for _, l := range links {
		if strings.Contains(l, names.HostIf) {
			t.Errorf("%s: link left: %s", backendID, l)
		}
	}
	if _, err := os.Stat(sandboxDir(backendID)); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(sandboxDir(backendID))
		t.Errorf("%s: state dir left (%v): %v", backendID, err, ents)
	}
	r, err := state.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(m, r.Name(), string(key))); err == nil {
			t.Errorf("%s: cgroup left in %s", backendID, m)
		}
	}
}

func ptr[T any](v T) *T { return &v }
