package firecracker

import (
	"context"
	"github.com/ironclaw/ironclaw/internal/state"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

const jailerStandinEnv = "IRONCLAW_FC_JAILER_STANDIN"

// TestJailerStandinProcess is not a test: it is the body of the jailer
// stand-in. Like the real jailer with --new-pid-ns, it starts Firecracker
// (the stand-in, with paths inside the chroot) as a separate process,
// writes that process's PID to <chroot>/firecracker.pid and exits.
func TestJailerStandinProcess(t *testing.T) {
	if os.Getenv(jailerStandinEnv) == "" {
		return
	}
	args := flagArgs()
	root := filepath.Join(args["--chroot-base-dir"], "firecracker", args["--id"], "root")
	var fcArgs []string
	for i, a := range os.Args {
		if a == "--" && i > 0 && os.Args[i-1] != "-test.run=^TestJailerStandinProcess$" {
			fcArgs = os.Args[i+1:]
			break
		}
	}
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestStandinProcess$", "--"}, fcArgs...)...)
	cmd.Env = append(os.Environ(), standinEnv+"=1", standinEnv+"_ROOT="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "firecracker.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Exit(0)
}

// jailerLaunch runs this test binary as the jailer stand-in.
func jailerLaunch(_ context.Context, argv []string) (*exec.Cmd, error) {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestJailerStandinProcess$", "--"}, argv[1:]...)...)
	cmd.Env = append(os.Environ(), jailerStandinEnv+"=1")
	return cmd, nil
}

func alive(pid int) bool {
	st, err := state.ProcStart(pid)
	return err == nil && st > 0
}

// TestJailerLifecycle starts a VM through the jailer stand-in: the driver
// follows Firecracker's PID from the jailer's pid file (the jailer itself
// exits), notices when that process dies after the boot, and Close removes
// the chroot.
func TestJailerLifecycle(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "mkfs.ext4")
	base := t.TempDir()
	dir := t.TempDir()
	j := &Jailer{ChrootBase: base, UID: 10001, GID: 10001, CgroupVersion: 2}
	v, err := Start(context.Background(), Config{ID: "vm-jailed", Image: fakeImage(t), Dir: dir, Token: []byte("jailed-token"), RWSizeMiB: 8,
		Jailer: j, Launch: jailerLaunch})
	if err != nil {
		t.Fatal(err)
	}
	pid := v.PID()
	if pid == 0 || pid == v.cmd.Process.Pid || !alive(pid) {
		t.Fatalf("VMM pid %d (jailer %d): not Firecracker's", pid, v.cmd.Process.Pid)
	}
	if _, err := v.Agent.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, RecordFile)); err != nil || !strings.Contains(string(b), strconv.Itoa(pid)) {
		t.Fatalf("record %s (%v) does not name pid %d", b, err, pid)
	}
	// Firecracker dies after the boot: the driver sees it.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("the driver did not notice Firecracker's death")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker", "vm-jailed")); !os.IsNotExist(err) {
		t.Errorf("chroot left after Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, RecordFile)); !os.IsNotExist(err) {
		t.Errorf("record left after Close: %v", err)
	}
}

// TestReclaim plays GC after the owner died: Reclaim, working from the
// record alone, kills the running VMM (plain and jailed) and removes its
// files, the chroot and the record; a second Reclaim is a no-op; a record
// aimed elsewhere is refused.
func TestReclaim(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "mkfs.ext4")
	for _, jailed := range []bool{false, true} {
		base, dir := t.TempDir(), t.TempDir()
		cfg := Config{ID: "vm-gc", Image: fakeImage(t), Dir: dir, Token: []byte("gc-token"), RWSizeMiB: 8, Launch: standinLaunch("")}
		if jailed {
			cfg.Jailer, cfg.Launch = &Jailer{ChrootBase: base, UID: 10001, GID: 10001, CgroupVersion: 2}, jailerLaunch
		}
		v, err := Start(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		pid := v.PID()
		if err := Reclaim(dir); err != nil {
			t.Fatal(err)
		}
		select {
		case <-v.Exited():
		case <-time.After(5 * time.Second):
			t.Fatalf("jailed=%v: Firecracker %d survived Reclaim", jailed, pid)
		}
		if alive(pid) {
			t.Errorf("jailed=%v: pid %d alive after Reclaim", jailed, pid)
		}
		for _, p := range []string{filepath.Join(v.dir(), APISocket), filepath.Join(v.dir(), rwFile), filepath.Join(dir, RecordFile)} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("jailed=%v: %s left after Reclaim", jailed, p)
			}
		}
		if jailed {
			if _, err := os.Stat(filepath.Join(base, "firecracker", "vm-gc")); !os.IsNotExist(err) {
				t.Errorf("chroot left after Reclaim: %v", err)
			}
		}
		if err := Reclaim(dir); err != nil {
			t.Errorf("second Reclaim: %v", err)
		}
		_ = v.Close()
	}
	dir := t.TempDir()
	if err := writeRecord(dir, record{ID: "x", Dir: dir, Chroot: "/etc"}); err != nil {
		t.Fatal(err)
	}
	if err := Reclaim(dir); err == nil || !strings.Contains(err.Error(), "not a jailer's") {
		t.Fatalf("a record aimed at /etc: %v", err)
	}
}
