package qemu

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/vm/image"
	"github.com/ironclaw/ironclaw/internal/vm/vmtest"
)

func TestBadKernelPath(t *testing.T) {
	img := &image.Image{Kernel: "/nonexistent/vmlinuz", Initramfs: "/nonexistent/i", Rootfs: "/nonexistent/r"}
	_, err := Start(context.Background(), Config{Image: img, Dir: t.TempDir(), Token: NewToken()})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/vmlinuz") || !strings.Contains(err.Error(), "image file") {
		t.Fatalf("err = %v, want a clear error naming the kernel path", err)
	}
}

// TestCrashMidBoot kills the real QEMU while the guest boots: Start must
// report the early exit and leave no process and no files but the logs.
func TestCrashMidBoot(t *testing.T) {
	testutil.RequireCommand(t, "qemu-system-x86_64")
	img := vmtest.Image(t)
	dir := t.TempDir()
	var pid int
	killer := func(ctx context.Context, argv []string, stdout, stderr *os.File) (*exec.Cmd, error) {
		cmd, err := SeccompStarter(Launch{})(ctx, argv, stdout, stderr)
		if err != nil {
			return nil, err
		}
		pid = cmd.Process.Pid
		time.AfterFunc(400*time.Millisecond, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
		return cmd, nil
	}
	_, err := Start(context.Background(), Config{Image: img, Dir: dir, Token: NewToken(), Starter: killer, BootTimeout: 60 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "exited early") || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("err = %v, want an early-exit error", err)
	}
	if pid == 0 {
		t.Fatal("qemu never started")
	}
	if _, err := os.Stat(filepath.Join("/proc", itoa(pid))); err == nil {
		t.Fatalf("qemu %d still exists", pid)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n := e.Name(); n != ConsoleLog && n != StdoutLog && n != StderrLog {
			t.Errorf("left behind: %s", n)
		}
	}
}

// BenchmarkCreateExecDestroy measures, under whatever accelerator the
// config uses (TCG here), boot to agent ready and the whole create → exec
// `uname -a` → destroy cycle; its peer in the same run is a local fork/exec
// of `uname -a`. Medians and ratios are reported.
func BenchmarkCreateExecDestroy(b *testing.B) {
	testutil.RequireCommand(b, "qemu-system-x86_64")
	img := vmtest.Image(b)
	ctx := context.Background()
	var boot, cycle, local []time.Duration
	for b.Loop() {
		dir := b.TempDir()
		t0 := time.Now()
		v, err := Start(ctx, Config{Image: img, Dir: dir, Token: NewToken()})
		if err != nil {
			b.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := v.Agent.Exec(ctx, agentapi.ExecSpec{Argv: []string{"uname", "-a"}}, agentapi.ExecIO{Stdout: &out}); err != nil {
			b.Fatal(err)
		}
		if err := v.Close(); err != nil {
			b.Fatal(err)
		}
		cycle = append(cycle, time.Since(t0))
		boot = append(boot, v.BootTime)
		t1 := time.Now()
		if err := exec.Command("uname", "-a").Run(); err != nil {
			b.Fatal(err)
		}
		local = append(local, time.Since(t1))
	}
	mb, mc, ml := med(boot), med(cycle), med(local)
	b.ReportMetric(mb.Seconds()*1000, "boot-p50-ms")
	b.ReportMetric(mc.Seconds()*1000, "cycle-p50-ms")
	b.ReportMetric(ml.Seconds()*1000, "local-exec-p50-ms")
	b.ReportMetric(float64(mc)/float64(ml), "cycle/local")
}

func med(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
