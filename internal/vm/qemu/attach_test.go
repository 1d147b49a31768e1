package qemu

import (
	"context"
	"errors"
	"github.com/ironclaw/ironclaw/internal/seccomp"
	"github.com/ironclaw/ironclaw/internal/state"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAttachRefusesWhatIsNotTheRecordedQEMU: no record, a record without
// a process, a dead process and a reused PID are all ErrGone, and nothing
// is touched; a live process without a QMP socket is an error that is not
// ErrGone (the caller reclaims it); a process that exits while Attach
// waits for QMP is ErrGone.
func TestAttachRefusesWhatIsNotTheRecordedQEMU(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := Attach(ctx, Config{Dir: dir}); !errors.Is(err, ErrGone) {
		t.Errorf("no record: %v, want ErrGone", err)
	}
	if err := writeRecord(dir, Record{Binary: "/bin/true"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(ctx, Config{Dir: dir}); !errors.Is(err, ErrGone) {
		t.Errorf("record without a PID: %v, want ErrGone", err)
	}

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(dir, Record{PID: dead.Process.Pid, StartTime: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(ctx, Config{Dir: dir}); !errors.Is(err, ErrGone) {
		t.Errorf("dead process: %v, want ErrGone", err)
	}

	live := exec.Command("sleep", "30")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { live.Process.Kill(); live.Wait() }()
	st, err := state.ProcStart(live.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(dir, Record{PID: live.Process.Pid, StartTime: st + 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(ctx, Config{Dir: dir}); !errors.Is(err, ErrGone) {
		t.Errorf("reused PID: %v, want ErrGone", err)
	}
	if err := writeRecord(dir, Record{PID: live.Process.Pid, StartTime: st}); err != nil {
		t.Fatal(err)
	}
	_, err = Attach(ctx, Config{Dir: dir, BootTimeout: 300 * time.Millisecond})
	if err == nil || errors.Is(err, ErrGone) || !strings.Contains(err.Error(), "QMP") {
		t.Errorf("live process without QMP: %v, want a QMP error that is not ErrGone", err)
	}
	if live.ProcessState != nil || syscall.Kill(live.Process.Pid, 0) != nil {
		t.Error("a failed Attach touched the process")
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		live.Process.Kill()
	}()
	if _, err := Attach(ctx, Config{Dir: dir, BootTimeout: 10 * time.Second}); !errors.Is(err, ErrGone) {
		t.Errorf("process exiting during the QMP wait: %v, want ErrGone", err)
	}
}

// TestReclaimFindsAnUnrecordedVMM: an owner killed between starting QEMU
// and recording its PID leaves a record without one; Reclaim finds the
// process by the sandbox directory its command line names and kills it,
// and leaves other processes alone.
func TestReclaimFindsAnUnrecordedVMM(t *testing.T) {
	dir := t.TempDir()
	if err := writeRecord(dir, Record{Binary: "/bin/sh", Files: []string{RecordFile}}); err != nil {
		t.Fatal(err)
	}
	loop := "while :; do sleep 0.05; done"
	// QEMU's command line (argv[0] the recorded binary), and its
	// launcher's before the exec.
	vmm := exec.Command("/bin/sh", "-c", loop, "vmm", "-chardev", agentChardev(dir))
	launcher := exec.Command("/bin/sh", "-c", loop, "launcher", "--", "/bin/sh", "-chardev", agentChardev(dir))
	launcher.Args[0] = seccomp.LauncherArg0
	other := exec.Command("/bin/sh", "-c", loop, "other", "-chardev", agentChardev(t.TempDir()))
	for _, c := range []*exec.Cmd{vmm, launcher, other} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	if err := Reclaim(dir); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*exec.Cmd{vmm, launcher} {
		err := c.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("the unrecorded VMM %q: %v, want killed", c.Args[0], err)
		}
	}
	// A killed child stays a zombie until waited for: kill(pid, 0)
	// would still succeed; ProcStart tells.
	if _, err := state.ProcStart(other.Process.Pid); err != nil {
		t.Errorf("Reclaim killed another sandbox's process: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, RecordFile)); !os.IsNotExist(err) {
		t.Errorf("record left: %v", err)
	}
}

// TestReclaimSparesProcessesNamingTheSocket: an owner killed before it
// recorded QEMU's PID leaves Reclaim to find QEMU by its command line.
// Other processes may name the sandbox's agent socket too (an operator's
// socat or strace on it): Reclaim kills only a process whose command line
// is QEMU's (or its launcher's) with the exact chardev argument.
func TestReclaimSparesProcessesNamingTheSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, agentSocket)
	if err := writeRecord(dir, Record{Binary: "/usr/bin/qemu-system-x86_64", Files: []string{RecordFile}}); err != nil {
		t.Fatal(err)
	}
	loop := "while :; do sleep 0.05; done"
	bystanders := []*exec.Cmd{
		exec.Command("sh", "-c", loop, "socat", "-", "UNIX-CONNECT:"+sock),
		exec.Command("sh", "-c", loop, "strace", "-e", "connect", "nc", "-U", sock),
		// The chardev argument, but not QEMU's or the launcher's argv[0].
		exec.Command("sh", "-c", loop, "grep", agentChardev(dir)),
	}
	for _, c := range bystanders {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { c.Process.Kill(); c.Wait() }()
	}
	if err := Reclaim(dir); err != nil {
		t.Fatal(err)
	}
	for _, c := range bystanders {
		// A killed child stays a zombie until waited for: kill(pid, 0)
		// would still succeed; ProcStart tells.
		if _, err := state.ProcStart(c.Process.Pid); err != nil {
			t.Errorf("Reclaim killed %q, which only names the agent socket: %v", c.Args, err)
		}
	}
}
