package cgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestPrimeMigrationIsANoOpMove proves the priming write succeeds on this
// host and moves nothing: the process's cgroup on every v1 hierarchy is
// the same before and after.
func TestPrimeMigrationIsANoOpMove(t *testing.T) {
	testutil.RequireRoot(t)
	h, err := Detect()
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	done := h.PrimeMigration(sandbox.DefaultResources)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("PrimeMigration: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("PrimeMigration did not return in 10 s")
	}
	after, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Errorf("priming moved the process:\nbefore %s\nafter  %s", before, after)
	}
}

func TestPrimeMigrationSkipsV2AndNoLimits(t *testing.T) {
	for name, tc := range map[string]struct {
		h *Host
		r sandbox.Resources
	}{
		"v2":        {&Host{Version: V2, Mount: "/nonexistent"}, sandbox.DefaultResources},
		"no limits": {&Host{Version: V1, Mount: "/nonexistent"}, sandbox.Resources{NoFile: 10}},
	} {
		// A write was attempted if the channel carries an error: the
		// mount does not exist.
		if err, ok := <-tc.h.PrimeMigration(tc.r); ok || err != nil {
			t.Errorf("%s: PrimeMigration wrote (%v); want nothing done", name, err)
		}
	}
}

func TestThreadCgroupNamesEveryV1Hierarchy(t *testing.T) {
	h, err := Detect()
	testutil.Require(t, err == nil, "no cgroup file system")
	testutil.Require(t, h.Version == V1, "needs cgroup v1 hierarchies")
	for c := range h.Available {
		rel, err := threadCgroup(c)
		if err != nil {
			t.Errorf("threadCgroup(%s): %v", c, err)
			continue
		}
		if _, err := os.Stat(filepath.Join(h.Mount, c, rel, "tasks")); err != nil {
			t.Errorf("threadCgroup(%s) = %s: %v", c, rel, err)
		}
	}
	if _, err := threadCgroup("no-such-controller"); err == nil {
		t.Error("threadCgroup of an unknown controller succeeded")
	}
}

// BenchmarkAddProc measures moving a fresh process into a fresh group (the
// AddProc call alone), cold and 3 ms after PrimeMigration (about when a sandbox's init is moved after
// the priming in jail.Start). On cgroup v1 the cold move waits a whole RCU
// grace period; the primed one only what is left of it. On v2 both are the
// same write.
func BenchmarkAddProc(b *testing.B) {
	testutil.RequireRoot(b)
	h, err := Detect()
	if err != nil {
		b.Fatal(err)
	}
	r := sandbox.Resources{Pids: 20}
	parent := "/ironclaw-cgbench-" + strconv.Itoa(os.Getpid())
	b.Cleanup(func() {
		for _, c := range []string{"memory", "pids", "cpu", ""} {
			os.Remove(filepath.Join(h.Mount, c, parent))
		}
	})
	for _, primed := range []bool{false, true} {
		b.Run("primed="+strconv.FormatBool(primed), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				g, err := h.Create(parent+"/g"+strconv.Itoa(i), r)
				if err != nil {
					b.Fatal(err)
				}
				cmd := exec.Command("sleep", "10")
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				// Let the previous iteration's grace periods end, so
				// that the cold case is cold.
				time.Sleep(50 * time.Millisecond)
				if primed {
					h.PrimeMigration(r)
					time.Sleep(3 * time.Millisecond)
				}
				b.StartTimer()
				if err := g.AddProc(cmd.Process.Pid); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cmd.Process.Kill()
				cmd.Wait()
				if err := g.Destroy(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
