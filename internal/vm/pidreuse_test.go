package vm

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
)

// recyclePID starts a process that gets pid, which must be free: through
// ns_last_pid, retried while other processes of the host take it first.
func recyclePID(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	for try := 0; try < 200; try++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Fatalf("set ns_last_pid: %v", err)
		}
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		if c.Process.Pid == pid {
			return c
		}
		c.Process.Kill()
		c.Wait()
	}
	t.Fatalf("could not start a process with pid %d", pid)
	return nil
}

// TestTimeoutKillSparesARecycledPID: a run's --timeout kills the VM. If
// QEMU ended first (the guest powered itself off just before the timeout:
// a guest may), its PID is free and the kernel may hand it to any other
// process of the host before the sandbox is closed. The timeout's kill
// must reach QEMU or nothing, never the process that now has its PID.
func TestTimeoutKillSparesARecycledPID(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCommand(t, "qemu-system-x86_64")
	root, err := state.Open(testroot.New(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Root: root, Image: vmtest.Image(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := sandbox.Spec{ID: "pid-reuse", Command: []string{"sleep", "1000"}, User: sandbox.SandboxUser,
		Resources: sandbox.Resources{MemoryBytes: 256 << 20}, Timeout: time.Hour}
	s, err := b.Start(ctx, spec, IO{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pid := s.vm.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.vm.Exited(): // reaped: the PID is free
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU did not exit")
	}
	decoy := recyclePID(t, pid)
	defer func() { decoy.Process.Kill(); decoy.Wait() }()
	s.kill() // what the timeout does
	time.Sleep(100 * time.Millisecond)
	if _, err := state.ProcStart(pid); err != nil {
		t.Fatalf("the timeout's kill hit process %d, which only reused QEMU's PID: %v", pid, err)
	}
}
