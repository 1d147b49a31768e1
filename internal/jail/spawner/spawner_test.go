package spawner

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

func TestMain(m *testing.M) {
	MaybeMain() // this test binary is its own spawner
	os.Exit(m.Run())
}

// newClient returns a client whose spawner is this test binary, and
// checks at the end that the spawner has exited.
func newClient(t *testing.T) *Client {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := New(exe, nil)
	t.Cleanup(func() {
		pid := spawnerPID(c)
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if pid != 0 {
			waitGone(t, pid)
		}
	})
	return c
}

func spawnerPID(c *Client) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.cmd.Process.Pid
}

// waitGone waits for process pid to be gone (reaped).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still there", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stdio returns /dev/null as stdin and stderr and a pipe as stdout.
func stdio(t *testing.T) (files []*os.File, out *os.File) {
	t.Helper()
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { null.Close(); r.Close(); w.Close() })
	return []*os.File{null, w, null}, r
}

func waitDone(t *testing.T, ch *Child) {
	t.Helper()
	select {
	case <-ch.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("child %d: no exit reported", ch.PID)
	}
}

func TestSpawnReportsOutputAndExit(t *testing.T) {
	c := newClient(t)
	files, out := stdio(t)
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inW.Close()
	files[0] = inR
	ch, err := c.Spawn(Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "read line; echo got $line; exit 3"}, Files: files})
	inR.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ch.PidFD)
	// It waits for its line, so it is there to be looked at.
	if ppid := testutil.ProcStatus(t, ch.PID, "PPid"); ppid != fmt.Sprint(spawnerPID(c)) {
		t.Errorf("parent of the child = %s, want the spawner %d", ppid, spawnerPID(c))
	}
	if _, err := inW.WriteString("it\n"); err != nil {
		t.Fatal(err)
	}
	files[1].Close()
	got, err := io.ReadAll(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "got it\n" {
		t.Errorf("output %q, want %q", got, "got it\n")
	}
	waitDone(t, ch)
	ws, known := ch.Status()
	if !known || !ws.Exited() || ws.ExitStatus() != 3 {
		t.Errorf("status = %v (known %t), want exit 3", ws, known)
	}
}

func TestSpawnUserNamespaceAndPidfd(t *testing.T) {
	testutil.RequireRoot(t)
	c := newClient(t)
	files, out := stdio(t)
	const base = 3_000_000
	ch, err := c.Spawn(Spec{
		Path: "/bin/sh", Args: []string{"sh", "-c", "id -u; exec sleep 60"}, Files: files,
		Sys: &syscall.SysProcAttr{
			Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS,
			UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}},
			GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}},
			GidMappingsEnableSetgroups: true,
			Credential:                 &syscall.Credential{Uid: 0, Gid: 0},
			Setsid:                     true,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ch.PidFD)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if line != "0\n" {
		t.Errorf("uid inside = %q, want 0", line)
	}
	// From the host: mapped to base, in its own session and namespaces.
	if uid := testutil.ProcStatus(t, ch.PID, "Uid"); !strings.HasPrefix(uid, fmt.Sprint(base)) {
		t.Errorf("host Uid = %q, want %d", uid, base)
	}
	if m, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", ch.PID)); err != nil || strings.Fields(string(m))[1] != fmt.Sprint(base) {
		t.Errorf("uid_map = %q, %v", m, err)
	}
	for _, ns := range []string{"user", "pid", "mnt"} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", ch.PID, ns))
		if err1 != nil || err2 != nil || mine == its {
			t.Errorf("%s namespace not new: %s vs %s (%v, %v)", ns, mine, its, err1, err2)
		}
	}
	if sid := testutil.ProcStatus(t, ch.PID, "NSsid"); !strings.HasPrefix(sid, fmt.Sprint(ch.PID)) {
		t.Errorf("NSsid = %q, want a session of its own", sid)
	}
	// The pidfd names it: a SIGKILL through it ends it, and the spawner
	// reports the signal.
	if err := unix.PidfdSendSignal(ch.PidFD, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	waitDone(t, ch)
	if ws, known := ch.Status(); !known || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("status = %v (known %t), want SIGKILL", ws, known)
	}
}

func TestSpawnInNetworkNamespace(t *testing.T) {
	ns := testutil.NewNetNS(t)
	c := newClient(t)
	files, _ := stdio(t)
	ch, err := c.Spawn(Spec{Path: "/bin/sleep", Args: []string{"sleep", "60"}, Files: files, NetNS: ns.File()})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ch.PidFD)
	var want, got unix.Stat_t
	if err := unix.Fstat(ns.Fd(), &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", ch.PID), &got); err != nil {
		t.Fatal(err)
	}
	if got.Ino != want.Ino {
		t.Errorf("child's netns inode %d, want %d", got.Ino, want.Ino)
	}
	// None of the spawner's own threads is left in that namespace.
	sandboxNS := fmt.Sprintf("net:[%d]", want.Ino)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", spawnerPID(c)))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if its, err := os.Readlink(fmt.Sprintf("/proc/%d/task/%s/ns/net", spawnerPID(c), task.Name())); err == nil && its == sandboxNS {
			t.Errorf("spawner thread %s left in the sandbox's netns %s", task.Name(), its)
		}
	}
	_ = unix.PidfdSendSignal(ch.PidFD, unix.SIGKILL, nil, 0)
	waitDone(t, ch)
}

func TestSpawnFailures(t *testing.T) {
	c := newClient(t)
	files, _ := stdio(t)
	if _, err := c.Spawn(Spec{Path: "/nonexistent/binary", Args: []string{"x"}, Files: files}); err == nil ||
		!strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing binary: err = %v, want no such file", err)
	}
	if _, err := c.Spawn(Spec{Path: "/bin/true", Args: []string{"true"}, Files: files[:2]}); err == nil {
		t.Error("two files: no error")
	}
	if _, err := c.Spawn(Spec{Path: "/bin/true", Args: []string{"true"}, Files: files,
		Sys: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}}); err == nil {
		t.Error("Pdeathsig: no error")
	}
	if _, err := c.Spawn(Spec{Path: "/bin/true", Args: []string{"true"}, Files: files,
		Sys: &syscall.SysProcAttr{Setpgid: true}}); err == nil || !strings.Contains(err.Error(), "unsupported") {
		t.Errorf("Setpgid (not forwarded): err = %v, want unsupported", err)
	}
	// The spawner keeps serving after refusals.
	ch, err := c.Spawn(Spec{Path: "/bin/true", Args: []string{"true"}, Files: files})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ch.PidFD)
	waitDone(t, ch)
}

// A spawner that dies is replaced at the next Spawn; the children of the
// dead one are still seen to end, through their pidfds.
func TestSpawnerDeath(t *testing.T) {
	c := newClient(t)
	files, _ := stdio(t)
	ch, first := orphanSleeper(t, c, files)
	if err := unix.PidfdSendSignal(ch.PidFD, 0, nil, 0); err != nil {
		t.Fatalf("child died with its spawner: %v", err)
	}
	if err := unix.PidfdSendSignal(ch.PidFD, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	waitDone(t, ch)
	if _, known := ch.Status(); known {
		t.Error("status known though the spawner died first")
	}
	var ch2 *Child
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		// Until the client has seen the death, a Spawn may still go to
		// the dead spawner and fail.
		if ch2, err = c.Spawn(Spec{Path: "/bin/true", Args: []string{"true"}, Files: files}); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("spawn after the spawner died: %v", err)
	}
	defer unix.Close(ch2.PidFD)
	if second := spawnerPID(c); second == first || second == 0 {
		t.Errorf("spawner not replaced: %d, was %d", second, first)
	}
	waitDone(t, ch2)
}

// Close ends the spawner; what it started lives on.
func TestCloseLeavesChildren(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := New(exe, nil)
	files, _ := stdio(t)
	ch, err := c.Spawn(Spec{Path: "/bin/sleep", Args: []string{"sleep", "60"}, Files: files})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ch.PidFD)
	pid := spawnerPID(c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	if err := unix.PidfdSendSignal(ch.PidFD, 0, nil, 0); err != nil {
		t.Fatalf("child ended with the spawner: %v", err)
	}
	if _, err := c.Spawn(Spec{Path: "/bin/true", Args: []string{"true"}, Files: files}); err == nil {
		t.Error("Spawn after Close: no error")
	}
	_ = unix.PidfdSendSignal(ch.PidFD, unix.SIGKILL, nil, 0)
	waitDone(t, ch)
}

func TestRequestValidate(t *testing.T) {
	ok := request{Path: "/bin/true", Args: []string{"true"}, Files: 3}
	for _, tc := range []struct {
		name string
		mod  func(*request)
		fds  int
		want string
	}{
		{"ok", func(*request) {}, 3, ""},
		{"netns and cgroup", func(r *request) { r.NetNS, r.CgroupFD = true, true }, 5, ""},
		{"no path", func(r *request) { r.Path = "" }, 3, "empty path"},
		{"no args", func(r *request) { r.Args = nil }, 3, "empty args"},
		{"too few files", func(r *request) { r.Files = 2 }, 2, "out of range"},
		{"too many files", func(r *request) { r.Files = maxFiles + 1 }, maxFiles + 1, "out of range"},
		{"descriptor count", func(r *request) { r.NetNS = true }, 3, "came with 3"},
	} {
		r := ok
		tc.mod(&r)
		err := r.validate(tc.fds)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func FuzzRequest(f *testing.F) {
	f.Add([]byte(`{"seq":1,"path":"/bin/true","args":["true"],"files":3}`), 3)
	f.Add([]byte(`{"seq":1,"path":"x","args":["x"],"files":3,"netns":true,"cgroup_fd":true}`), 5)
	f.Add([]byte(`{"files":-1}`), 0)
	f.Fuzz(func(t *testing.T, b []byte, nfds int) {
		var r request
		if decode(b, &r) != nil {
			return
		}
		if r.validate(nfds) == nil && (r.Path == "" || len(r.Args) == 0 || r.Files < 3 || r.fds() != nfds) {
			t.Errorf("validate accepted %+v with %d descriptors", r, nfds)
		}
	})
}

// When this process is the children's subreaper, the orphans of a dead
// spawner are reparented to it: it must reap them, and so it learns how
// they ended.
func TestSpawnerDeathReapsOrphansAsSubreaper(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	c := newClient(t)
	files, _ := stdio(t)
	ch, _ := orphanSleeper(t, c, files)
	if ppid := testutil.ProcStatus(t, ch.PID, "PPid"); ppid != fmt.Sprint(os.Getpid()) {
		t.Fatalf("orphan's parent is %s, want this process %d", ppid, os.Getpid())
	}
	if err := unix.PidfdSendSignal(ch.PidFD, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	waitDone(t, ch)
	if ws, known := ch.Status(); !known || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("status = %v (known %t), want SIGKILL", ws, known)
	}
	waitGone(t, ch.PID) // reaped, not a zombie
}

// orphanSleeper starts a sleep through c's spawner, then SIGKILLs the
// spawner and waits for it to be gone. It returns the orphaned child
// (its pidfd closed at the end of the test) and the dead spawner's PID.
func orphanSleeper(t *testing.T, c *Client, files []*os.File) (*Child, int) {
	t.Helper()
	ch, err := c.Spawn(Spec{Path: "/bin/sleep", Args: []string{"sleep", "60"}, Files: files})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(ch.PidFD) })
	first := spawnerPID(c)
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, first)
	return ch, first
}

// The orphans of a dead spawner are watched without an OS thread each.
func TestOrphansHoldNoThread(t *testing.T) {
	c := newClient(t)
	files, _ := stdio(t)
	const n = 24
	var kids []*Child
	for range n {
		ch, err := c.Spawn(Spec{Path: "/bin/sleep", Args: []string{"sleep", "60"}, Files: files})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(ch.PidFD) })
		kids = append(kids, ch)
	}
	before := threads(t)
	first := spawnerPID(c)
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, first)
	time.Sleep(200 * time.Millisecond) // the client has seen the death and watches the orphans
	if grew := threads(t) - before; grew >= n/2 {
		t.Errorf("watching %d orphans grew %d threads", n, grew)
	}
	for _, ch := range kids {
		if err := unix.PidfdSendSignal(ch.PidFD, unix.SIGKILL, nil, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range kids {
		waitDone(t, ch)
	}
}

// threads returns the number of threads of this process.
func threads(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(testutil.ProcStatus(t, os.Getpid(), "Threads"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
