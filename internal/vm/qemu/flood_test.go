package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
)

// TestConsoleFloodIsBounded: root in the guest (where any exec may run)
// writes to the serial console without end. QEMU appends it to
// console.log in the sandbox directory on the host, about 0.4 MB/s here
// under TCG, 1.4 GB an hour of host disk per VM. QEMU runs with
// RLIMIT_FSIZE at Config.MaxFileBytes: the file stops there. The thread
// that writes the console blocks SIGXFSZ (QEMU 7.2 here), so its writes
// fail with EFBIG and the VM runs on; were the signal delivered, QEMU
// would die of it, ending only that VM. Either way the host's disk holds
// no more than the cap.
func TestConsoleFloodIsBounded(t *testing.T) {
	testutil.RequireCommand(t, "qemu-system-x86_64")
	img := vmtest.Image(t)
	dir := t.TempDir()
	ctx := context.Background()
	const max = 1 << 20
	v, err := Start(ctx, Config{Image: img, Dir: dir, Token: NewToken(), MaxFileBytes: max, BootTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	flood, err := v.Agent.Start(ctx, agentapi.ExecSpec{Argv: []string{"sh", "-c", "while :; do cat /bin/busybox > /dev/ttyS0; done"}}, agentapi.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(dir, ConsoleLog)
	size := func() int64 {
		fi, err := os.Stat(console)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	// At 0.4 MB/s the cap is reached in a few seconds; then the flood
	// goes on for as long again, and the file must not grow.
	deadline := time.Now().Add(40 * time.Second)
	for size() < max && time.Now().Before(deadline) {
		select {
		case <-v.Exited():
			deadline = time.Now()
		case <-time.After(200 * time.Millisecond):
		}
	}
	select {
	case <-v.Exited():
	case <-time.After(5 * time.Second):
	}
	if n := size(); n > max || n < max/2 {
		t.Fatalf("console.log is %d bytes after the flood, want at most the limit of %d (and near it: the flood ran)", n, max)
	}
	select {
	case <-v.Exited():
		var ee *exec.ExitError
		if err := v.ExitErr(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGXFSZ {
			t.Errorf("QEMU ended with %v, want SIGXFSZ or running on", err)
		}
		t.Logf("QEMU died of SIGXFSZ; console.log stopped at %d bytes", size())
	default:
		_ = flood.Signal(ctx, syscall.SIGKILL)
		if _, err := v.Agent.Exec(ctx, agentapi.ExecSpec{Argv: []string{"true"}}, agentapi.ExecIO{}); err != nil {
			t.Errorf("the VM's agent after the flood: %v", err)
		}
		t.Logf("QEMU runs on; console.log stopped at %d bytes", size())
	}
}
