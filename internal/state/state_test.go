package state

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func tempRoot(t *testing.T) *Root {
	t.Helper()
	r, err := Open(filepath.Join(testutil.SearchableTempDir(t), "state"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestOpenRefusesUnsearchableParents(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Open(filepath.Join(dir, "state"))
	if err == nil || !strings.Contains(err.Error(), "not searchable") {
		t.Fatalf("Open under a 0700 dir = %v, want a 'not searchable' error", err)
	}
	if _, err := Open("relative"); err == nil {
		t.Fatal("Open(relative) succeeded")
	}
}

func TestClaimExclusive(t *testing.T) {
	r := tempRoot(t)
	c, left, err := r.Claim("vm-1")
	if err != nil || left != nil {
		t.Fatalf("Claim = %v, %v", left, err)
	}
	if _, _, err := r.Claim("vm-1"); !errors.Is(err, sandbox.ErrExists) {
		t.Fatalf("second Claim = %v, want ErrExists", err)
	}
	// A near-identical ID is a different sandbox.
	c2, _, err := r.Claim("vm_1")
	if err != nil {
		t.Fatalf("Claim(vm_1) = %v", err)
	}
	if c.Dir == c2.Dir {
		t.Fatal("vm-1 and vm_1 share a directory")
	}
	live, err := r.Live()
	if err != nil || len(live) != 2 {
		t.Fatalf("Live = %v, %v; want 2 records", live, err)
	}
	for _, cl := range []*Claim{c, c2} {
		if err := cl.Release(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(cl.Dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Release left %s: %v", cl.Dir, err)
		}
	}
	c3, _, err := r.Claim("vm-1")
	if err != nil {
		t.Fatalf("Claim after Release = %v", err)
	}
	c3.Release()
}

// TestDeadOwnerIsLeaked claims a sandbox in a child process that is then
// SIGKILLed, and checks the directory is found leaked, reclaimed once and
// then claimable again.
func TestDeadOwnerIsLeaked(t *testing.T) {
	if os.Getenv("STATE_TEST_CHILD") != "" {
		r, err := Open(os.Getenv("STATE_TEST_CHILD"))
		if err != nil {
			os.Exit(2)
		}
		if _, _, err := r.Claim("orphan"); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("claimed\n")
		select {}
	}
	r := tempRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDeadOwnerIsLeaked$")
	cmd.Env = append(os.Environ(), "STATE_TEST_CHILD="+r.Dir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if _, err := out.Read(buf); err != nil || string(buf[:7]) != "claimed" {
		t.Fatalf("child did not claim: %q %v", buf, err)
	}
	if _, _, err := r.Claim("orphan"); !errors.Is(err, sandbox.ErrExists) {
		t.Fatalf("Claim while the owner lives = %v, want ErrExists", err)
	}
	cmd.Process.Kill()
	cmd.Wait()

	var reclaimed []string
	n, err := r.Collect(func(dir string) error { reclaimed = append(reclaimed, dir); return nil })
	if err != nil || n != 1 || len(reclaimed) != 1 {
		t.Fatalf("Collect = %d, %v (%v); want 1 reclaimed", n, err, reclaimed)
	}
	if n, err := r.Collect(func(string) error { return nil }); n != 0 || err != nil {
		t.Fatalf("second Collect = %d, %v", n, err)
	}
	c, left, err := r.Claim("orphan")
	if err != nil || left != nil {
		t.Fatalf("Claim after Collect = %v, %v", left, err)
	}
	c.Release()
}

func TestCollectKeepsFailedAndIgnoresForeign(t *testing.T) {
	r := tempRoot(t)
	c, _, err := r.Claim("x")
	if err != nil {
		t.Fatal(err)
	}
	c.lock.Close() // simulate the owner's death
	c.lock = nil
	foreign := filepath.Join(r.Dir(), "sandboxes", "not-a-key")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if _, err := r.Collect(func(string) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Collect = %v, want boom", err)
	}
	if _, err := os.Stat(c.Dir); err != nil {
		t.Fatalf("failed reclaim removed the dir: %v", err)
	}
	if n, err := r.Collect(func(string) error { return nil }); n != 1 || err != nil {
		t.Fatalf("retry Collect = %d, %v", n, err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Fatalf("Collect touched a foreign entry: %v", err)
	}
}

func TestLeftoverReturnedByClaim(t *testing.T) {
	r := tempRoot(t)
	c, _, err := r.Claim("again")
	if err != nil {
		t.Fatal(err)
	}
	c.lock.Close()
	c.lock = nil
	_, left, err := r.Claim("again")
	if err != nil || left == nil || left.Record.ID != "again" {
		t.Fatalf("Claim over a dead owner = %+v, %v; want the leftover", left, err)
	}
	left.Release()
}

func TestRootName(t *testing.T) {
	if n := (&Root{dir: DefaultRoot}).Name(); n != "ironclaw" {
		t.Errorf("default root name = %q", n)
	}
	a, b := (&Root{dir: "/a"}).Name(), (&Root{dir: "/b"}).Name()
	if a == b || !strings.HasPrefix(a, "ironclaw-") {
		t.Errorf("root names %q, %q", a, b)
	}
}

func TestAbandonKeepsRecordsForGC(t *testing.T) {
	r := tempRoot(t)
	c, _, err := r.Claim("abandoned")
	if err != nil {
		t.Fatal(err)
	}
	c.Abandon()
	c.Abandon() // idempotent
	if _, err := os.Stat(filepath.Join(c.Dir, recordFile)); err != nil {
		t.Fatalf("Abandon removed the record: %v", err)
	}
	leaked, err := r.Leaked()
	if err != nil || len(leaked) != 1 || leaked[0].Record.ID != "abandoned" {
		t.Fatalf("Leaked = %v, %v; want the abandoned sandbox", leaked, err)
	}
	leaked[0].Release()
}

func TestProcStart(t *testing.T) {
	a, err := ProcStart(os.Getpid())
	if err != nil || a == 0 {
		t.Fatalf("ProcStart(self) = %d, %v", a, err)
	}
	if b, _ := ProcStart(os.Getpid()); b != a {
		t.Errorf("ProcStart(self) changed: %d then %d", a, b)
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cmd.Wait()
	if _, err := ProcStart(pid); !errors.Is(err, ErrProcessGone) {
		t.Errorf("ProcStart of a reaped process = %v, want ErrProcessGone", err)
	}
}

// TestOpenPurgesAnEarlierBoot plays a state directory that outlived its
// kernel (a /run on disk): Open removes its sandbox directories and network
// records unread, keeps everything else, and records the running boot.
func TestOpenPurgesAnEarlierBoot(t *testing.T) {
	dir := filepath.Join(testutil.SearchableTempDir(t), "state")
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := r.Claim("old-sandbox")
	if err != nil {
		t.Fatal(err)
	}
	// A torn record, as a crash without fsync may leave.
	if err := os.WriteFile(filepath.Join(c.Dir, "jail.json"), []byte(`{"cgr`), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Abandon()
	net := filepath.Join(dir, "net")
	if err := os.MkdirAll(filepath.Join(net, "slots"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(net, "forwarding.json"), []byte(`{"uplinks":{"eth0":"0"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(dir, "ironclaw.db")
	if err := os.WriteFile(keep, []byte("store"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Same boot: nothing is touched.
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); err != nil {
		t.Fatalf("same boot: sandbox directory removed: %v", err)
	}

	if err := os.WriteFile(filepath.Join(dir, bootFile), []byte("00000000-0000-0000-0000-000000000000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{c.Dir, net} {
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived an earlier boot's purge (%v)", gone, err)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("the store was removed: %v", err)
	}
	cur, _ := os.ReadFile(bootIDPath)
	got, _ := os.ReadFile(filepath.Join(dir, bootFile))
	if string(got) != string(cur) {
		t.Errorf("boot_id = %q, want the running boot %q", got, cur)
	}
}

// TestOpenKeepsLiveOwnersOnABootMismatch: a held lock means the boot ID was
// wrong, not the directory; nothing of a live owner is removed.
func TestOpenKeepsLiveOwnersOnABootMismatch(t *testing.T) {
	dir := filepath.Join(testutil.SearchableTempDir(t), "state")
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := r.Claim("live")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	net := filepath.Join(dir, "net")
	if err := os.MkdirAll(net, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, bootFile), []byte("wrong\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	for _, kept := range []string{c.Dir, net} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("%s of a live owner removed: %v", kept, err)
		}
	}
}

// TestSandboxes counts the sandbox directories of a root, live or not, and
// nothing else in its sandboxes directory.
func TestSandboxes(t *testing.T) {
	r := tempRoot(t)
	if n, err := r.Sandboxes(); n != 0 || err != nil {
		t.Fatalf("empty root: %d %v", n, err)
	}
	c, _, err := r.Claim("counted")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(r.Dir(), "sandboxes", "not-a-key"), 0o700); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Sandboxes(); n != 1 || err != nil {
		t.Errorf("one claimed sandbox: %d %v", n, err)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Sandboxes(); n != 0 || err != nil {
		t.Errorf("after release: %d %v", n, err)
	}
}

// TestKillStarted: a process is killed only when its start time is the
// recorded one, and KillStarted returns once it has exited.
func TestKillStarted(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	start, err := ProcStart(pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := KillStarted(pid, start+1, time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := ProcStart(pid); err != nil || got != start {
		t.Fatalf("another start time: the process was killed (%d, %v)", got, err)
	}
	if err := KillStarted(pid, start, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("KillStarted returned but the process did not exit")
	}
	if err := KillStarted(pid, start, time.Second); err != nil {
		t.Errorf("a process that is gone: %v", err)
	}
}
