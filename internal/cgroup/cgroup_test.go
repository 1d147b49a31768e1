package cgroup

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func TestDetect(t *testing.T) {
	h, err := Detect()
	testutil.Require(t, err == nil, "no cgroup file system")
	if h.Version != V1 && h.Version != V2 {
		t.Fatalf("Detect = %+v", h)
	}
	if h.Mode == "hybrid" && h.Version != V1 {
		t.Errorf("hybrid host must apply limits in v1, got v%d", h.Version)
	}
}

func TestNoLimitsNoCgroup(t *testing.T) {
	h := &Host{Version: V1, Mount: "/nonexistent", Available: map[string]bool{}}
	g, err := h.Create("/ironclaw-test/none", sandbox.Resources{NoFile: 10})
	if err != nil || len(g.Paths()) != 0 {
		t.Fatalf("Create without limits = %v, %v; want no cgroup", g.Paths(), err)
	}
	if err := g.AddProc(os.Getpid()); err != nil {
		t.Errorf("AddProc on an empty group = %v", err)
	}
	if err := g.Destroy(); err != nil {
		t.Errorf("Destroy on an empty group = %v", err)
	}
}

func TestCheckNamesTheFlag(t *testing.T) {
	h := &Host{Version: V2, Available: map[string]bool{"pids": true}}
	for flag, r := range map[string]sandbox.Resources{
		"--memory": {MemoryBytes: 1 << 30},
		"--cpus":   {CPUs: 1},
	} {
		err := h.Check(r)
		if !errors.Is(err, sandbox.ErrUnsupported) || !strings.Contains(err.Error(), flag) {
			t.Errorf("Check(%s) = %v", flag, err)
		}
	}
	if err := h.Check(sandbox.Resources{Pids: 10}); err != nil {
		t.Errorf("Check(pids) = %v", err)
	}
}

func TestCreateLimitsOOMAndRemove(t *testing.T) {
	testutil.RequireRoot(t)
	h, err := Detect()
	if err != nil {
		t.Fatal(err)
	}
	testutil.Require(t, h.Available["memory"] && h.Available["pids"], "needs memory and pids controllers")
	rel := "/ironclaw-cgtest-" + strconv.Itoa(os.Getpid()) + "/g"
	defer func() {
		for _, c := range []string{"memory", "pids", "cpu", ""} {
			os.Remove(filepath.Join(h.Mount, c, filepath.Dir(rel)))
		}
	}()
	r := sandbox.Resources{MemoryBytes: 32 << 20, Pids: 20, CPUs: 0.25}
	g, err := h.Create(rel, r)
	if err != nil {
		t.Fatal(err)
	}
	// A process that allocates past the limit is OOM-killed in the group.
	cmd := exec.Command("python3", "-c", "import sys; sys.stdin.read(1); x = bytearray(200 << 20)")
	in, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.AddProc(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	u, err := g.Usage()
	if err != nil || u.Pids != 1 {
		t.Errorf("Usage = %+v, %v; want 1 process", u, err)
	}
	in.Write([]byte("x"))
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
		t.Errorf("memory hog exited with %v, want death by signal", err)
	}
	if n, err := g.OOMKills(); err != nil || n != 1 {
		t.Errorf("OOMKills = %d, %v; want 1", n, err)
	}
	// Remove kills what is left and is idempotent.
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.AddProc(sleeper.Process.Pid); err != nil {
		t.Fatal(err)
	}
	go sleeper.Wait()
	if err := g.Destroy(); err != nil {
		t.Fatalf("Destroy with a live process = %v", err)
	}
	for _, p := range g.Paths() {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s remains", p)
		}
	}
	if err := Remove(g.Paths()); err != nil {
		t.Errorf("second Remove = %v", err)
	}
}
