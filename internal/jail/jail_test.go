package jail

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

func TestMain(m *testing.M) {
	MaybeInit() // this test binary is also the sandboxes' init
	os.Exit(m.Run())
}

func newJail(t testing.TB, cg *cgroup.Host) (*Jail, *state.Root) {
	t.Helper()
	testutil.RequireRoot(t)
	root, err := state.Open(testroot.New(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := testutil.Leaks(root.Dir(), root.Name()); err != nil {
			t.Error(err)
		}
	})
	j, err := New(Config{Root: root, Cgroups: cg})
	if err != nil {
		t.Fatal(err)
	}
	return j, root
}

func spec(id string, cmd ...string) sandbox.Spec {
	return sandbox.Spec{ID: id, Command: cmd, User: sandbox.SandboxUser, Resources: sandbox.DefaultResources}
}

func TestLimitsAreReadBackFromTheKernel(t *testing.T) {
	j, _ := newJail(t, nil)
	s := spec("limits", "sleep", "30")
	s.Resources.MemoryBytes = 64 << 20
	s.Resources.Pids = 50
	s.Resources.CPUs = 0.5
	sb, err := j.Start(context.Background(), s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	paths := sb.Group().Paths()
	if len(paths) != 3 {
		t.Fatalf("cgroup paths %v, want memory, pids and cpu", paths)
	}
	want := map[string]string{"memory.limit_in_bytes": "67108864", "pids.max": "50", "cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000"}
	if sb.Group().Version() == cgroup.V2 {
		want = map[string]string{"memory.max": "67108864", "memory.swap.max": "0", "pids.max": "50", "cpu.max": "50000 100000"}
	}
	for file, v := range want {
		var got string
		for _, p := range paths {
			if b, err := os.ReadFile(filepath.Join(p, file)); err == nil {
				got = strings.TrimSpace(string(b))
			}
		}
		if got != v {
			t.Errorf("%s = %q, want %q", file, got, v)
		}
	}
	procs, err := cgroup.Procs(paths[0])
	if err != nil || len(procs) != 2 {
		t.Errorf("cgroup holds %v (%v), want init and sleep", procs, err)
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s remains after Close", p)
		}
	}
}

func TestUnenforceableLimitIsRefused(t *testing.T) {
	testutil.RequireRoot(t)
	// The hybrid host's unified hierarchy has no controllers: a v2 host
	// without the memory controller must refuse --memory, not drop it.
	v2, err := cgroup.NewHost(cgroup.V2, "/sys/fs/cgroup/unified", "test")
	if err != nil {
		v2, err = cgroup.NewHost(cgroup.V2, "/sys/fs/cgroup", "test")
	}
	testutil.Require(t, err == nil, "no cgroup v2 mount")
	if v2.Available["memory"] {
		testutil.Require(t, false, "this host's v2 hierarchy has the memory controller; the refusal cannot be shown")
	}
	j, root := newJail(t, v2)
	s := spec("refused", "true")
	s.Resources = sandbox.Resources{MemoryBytes: 64 << 20}
	_, err = j.Start(context.Background(), s, Options{})
	var se *StartError
	if !errors.As(err, &se) || se.Step != "cgroup" || !errors.Is(err, sandbox.ErrUnsupported) || !strings.Contains(err.Error(), "--memory") {
		t.Fatalf("Start = %v, want a cgroup StartError wrapping ErrUnsupported that names --memory", err)
	}
	if _, err := os.Stat(root.SandboxDir(sandbox.KeyOf("refused"))); err == nil {
		t.Error("refused start left a state directory")
	}
}

func TestNearIdenticalIDsGetDistinctObjects(t *testing.T) {
	j, _ := newJail(t, nil)
	ids := []string{"vm-1", "vm_1", strings.Repeat("ü", 300), strings.Repeat("ü", 299) + "u"}
	seen := map[string]string{}
	var sbs []*Sandbox
	for _, id := range ids {
		sb, err := j.Start(context.Background(), spec(id, "sleep", "30"), Options{})
		if err != nil {
			t.Fatalf("Start(%q): %v", id, err)
		}
		sbs = append(sbs, sb)
		for _, p := range append(sb.Group().Paths(), sb.Dir) {
			if prev, ok := seen[p]; ok {
				t.Errorf("%q and %q share %s", id, prev, p)
			}
			seen[p] = id
			if len(filepath.Base(p)) > 255 {
				t.Errorf("%s: name longer than NAME_MAX", p)
			}
		}
	}
	for _, sb := range sbs {
		if err := sb.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestCloseKillsAndWaitReports(t *testing.T) {
	j, _ := newJail(t, nil)
	s := spec("closed", "sleep", "60")
	s.Timeout = 300 * time.Millisecond
	sb, err := j.Start(context.Background(), s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := sb.Wait()
	if err != nil || !res.TimedOut || res.ExitCode != 137 {
		t.Fatalf("Wait = %+v, %v; want a timed-out SIGKILL", res, err)
	}
	if err := sb.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestReclaimActsOnlyOnTheSandboxsCgroups(t *testing.T) {
	_, root := newJail(t, nil)
	h, err := cgroup.Detect()
	testutil.Require(t, err == nil && h.Available["pids"], "needs the pids controller")
	res := sandbox.Resources{Pids: 10}

	// Someone else's group, with a process in it.
	foreign, err := h.Create("/ironclaw-foreign-"+strconv.Itoa(os.Getpid()), res)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Destroy()
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	if err := foreign.AddProc(sleeper.Process.Pid); err != nil {
		t.Fatal(err)
	}

	dir := root.SandboxDir(sandbox.KeyOf("leftover"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// A directory that is named like the sandbox's group but is not one.
	plain := filepath.Join(t.TempDir(), cgroup.SandboxRelOf(dir))
	if err := os.MkdirAll(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	// A group named like the sandbox's, but below someone else's group
	// rather than at the top of the hierarchy, with a process in it.
	nested := filepath.Join(foreign.Paths()[0], cgroup.SandboxRelOf(dir))
	if err := os.MkdirAll(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	var cleanup []string // deepest first, before foreign.Destroy
	for p := nested; p != foreign.Paths()[0]; p = filepath.Dir(p) {
		cleanup = append(cleanup, p)
	}
	defer func() {
		if err := cgroup.Remove(cleanup); err != nil {
			t.Error(err)
		}
	}()
	nestedSleeper := exec.Command("sleep", "60")
	if err := nestedSleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer nestedSleeper.Wait()
	defer nestedSleeper.Process.Kill()
	if err := os.WriteFile(filepath.Join(nested, "cgroup.procs"), []byte(strconv.Itoa(nestedSleeper.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	for _, paths := range [][]string{
		foreign.Paths(),
		{filepath.Join(foreign.Paths()[0], "..", filepath.Base(dir))},
		{plain},
		{nested},
	} {
		if err := state.WriteJSON(filepath.Join(dir, recordName), record{Cgroups: paths}); err != nil {
			t.Fatal(err)
		}
		if err := Reclaim(dir); err == nil || !strings.Contains(err.Error(), "recorded cgroup") {
			t.Errorf("Reclaim of a record naming %v = %v, want a refusal", paths, err)
		}
	}
	if _, err := os.Stat(plain); err != nil {
		t.Errorf("the plain directory is gone after the refusal: %v", err)
	}
	if procs, err := cgroup.Procs(foreign.Paths()[0]); err != nil || len(procs) != 1 {
		t.Errorf("the foreign group holds %v (%v) after the refusals, want the sleep", procs, err)
	}
	if procs, err := cgroup.Procs(nested); err != nil || len(procs) != 1 {
		t.Errorf("the nested group %s holds %v (%v) after the refusals, want the sleep", nested, procs, err)
	}

	// The sandbox's own group goes.
	own, err := h.Create(cgroup.SandboxRelOf(dir), res)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Destroy()
	if err := state.WriteJSON(filepath.Join(dir, recordName), record{Cgroups: own.Paths(), CgroupRel: cgroup.SandboxRelOf(dir)}); err != nil {
		t.Fatal(err)
	}
	if err := Reclaim(dir); err != nil {
		t.Fatalf("Reclaim of the sandbox's own group = %v", err)
	}
	for _, p := range own.Paths() {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s remains after Reclaim", p)
		}
	}
}

// TestAttachRefusesAForeignCgroupRel: a persistent sandbox's record whose
// cgroup is not the sandbox's is refused on Attach even when it lists no
// group directories: the handle Attach rebuilds from it reads usage and
// OOM kills from that group, and would report another group's as the
// sandbox's.
func TestAttachRefusesAForeignCgroupRel(t *testing.T) {
	j, root := newJail(t, nil)
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Wait()
	defer sleeper.Process.Kill()
	start, err := state.ProcStart(sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	dir := root.SandboxDir(sandbox.KeyOf("foreign-rel"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, rel := range []string{"/", "/system.slice", cgroup.SandboxRelOf(dir) + "/.."} {
		rec := record{CgroupRel: rel, Resources: sandbox.Resources{Pids: 10, MemoryBytes: 64 << 20},
			InitPID: sleeper.Process.Pid, InitStart: start, Persistent: true}
		if err := state.WriteJSON(filepath.Join(dir, recordName), rec); err != nil {
			t.Fatal(err)
		}
		if sb, err := j.Attach("foreign-rel"); err == nil || !strings.Contains(err.Error(), "cgroup") {
			if err == nil {
				u, uerr := sb.Group().Usage()
				t.Errorf("Attach of a record naming cgroup %q succeeded (usage read back: %+v, %v), want a refusal", rel, u, uerr)
			} else {
				t.Errorf("Attach of a record naming cgroup %q = %v, want a refusal naming the cgroup", rel, err)
			}
		}
	}
}
