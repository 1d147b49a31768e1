package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/state"
)

// parentDirs returns the parent cgroups of the state root dir on this host
// and whether each exists.
func parentDirs(t *testing.T, dir string) map[string]bool {
	t.Helper()
	h, err := cgroup.Detect()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, d := range h.ParentDirs(state.NameOf(dir)) {
		_, err := os.Stat(d)
		out[d] = err == nil
	}
	return out
}

// TestGCRemovesEmptyParents: gc keeps a root's parent cgroups while a
// sandbox of the root lives, and while a group it did not make is in them;
// it removes them, saying so, once they are empty and no sandbox is left.
func TestGCRemovesEmptyParents(t *testing.T) {
	root := newRoot(t)
	cmd := exec.Command(bin, "--root", root, "run", "--name", "live", "--memory", "64m", "--pids", "50", "--", "sh", "-c", "echo ready; sleep 30")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("sandbox did not start: %q %v", l, err)
	}
	// The first parent that exists: memory's on v1, the only one on v2.
	memParent := ""
	for d, ok := range parentDirs(t, root) {
		if ok && (memParent == "" || strings.Contains(d, "/memory/")) {
			memParent = d
		}
	}
	if memParent == "" {
		t.Fatalf("no parent cgroup exists while a sandbox with --memory runs: %v", parentDirs(t, root))
	}
	if gc := ironclaw(t, nil, "--root", root, "gc"); gc.code != 0 || strings.Contains(gc.stdout, "cgroup parent") {
		t.Errorf("gc beside a live sandbox: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
	if _, err := os.Stat(memParent); err != nil {
		t.Errorf("gc removed the parent of a live sandbox: %v", err)
	}
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()

	// A group in the parent that is not a sandbox's: the kernel refuses,
	// gc keeps it and says so.
	foreign := filepath.Join(memParent, "not-a-sandbox")
	if err := os.Mkdir(foreign, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(foreign)
	gc := ironclaw(t, nil, "--root", root, "gc")
	if gc.code != 0 || !strings.Contains(gc.stdout, "kept 1 cgroup parent(s) "+state.NameOf(root)) {
		t.Errorf("gc with a foreign group in a parent: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("gc removed a group it did not make: %v", err)
	}
	if err := os.Remove(foreign); err != nil {
		t.Fatal(err)
	}
	if r := ironclaw(t, nil, "--root", root, "run", "--memory", "64m", "--pids", "50", "--", "true"); r.code != 0 {
		t.Fatalf("run: %d %s", r.code, r.stderr)
	}
	n := 0
	for _, ok := range parentDirs(t, root) {
		if ok {
			n++
		}
	}
	gc = ironclaw(t, nil, "--root", root, "gc")
	if gc.code != 0 || n == 0 || !strings.Contains(gc.stdout, fmt.Sprintf("removed %d empty cgroup parent(s) %s", n, state.NameOf(root))) {
		t.Errorf("gc of an idle root: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
	for d, ok := range parentDirs(t, root) {
		if ok {
			t.Errorf("%s remains after gc", d)
		}
	}
	if gc := ironclaw(t, nil, "--root", root, "gc"); gc.code != 0 || strings.Contains(gc.stdout, "cgroup parent") {
		t.Errorf("second gc: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
}

// TestGCRacesStarts: gc in a loop removes a root's empty parent cgroups
// while sandboxes with limits start one after another on the same root:
// every start and every gc succeeds, and the parents did go between
// starts.
func TestGCRacesStarts(t *testing.T) {
	root := newRoot(t)
	stop := make(chan struct{})
	type gcResult struct {
		removed int
		err     error
	}
	done := make(chan gcResult)
	go func() {
		var res gcResult
		for {
			select {
			case <-stop:
				done <- res
				return
			default:
			}
			out, err := exec.Command(bin, "--root", root, "gc").CombinedOutput()
			if err != nil {
				res.err = errors.Join(res.err, errors.New(string(out)+err.Error()))
			}
			if strings.Contains(string(out), "removed") && strings.Contains(string(out), "cgroup parent") {
				res.removed++
			}
		}
	}()
	starts := 0
	for deadline := time.Now().Add(8 * time.Second); starts < 10 || time.Now().Before(deadline); starts++ {
		r := ironclaw(t, nil, "--root", root, "run", "--memory", "64m", "--pids", "50", "--cpus", "0.5", "--", "true")
		if r.code != 0 {
			close(stop)
			<-done
			t.Fatalf("start %d racing gc: %d %s", starts, r.code, r.stderr)
		}
		if starts >= 60 {
			break
		}
	}
	close(stop)
	res := <-done
	if res.err != nil {
		t.Errorf("gc racing starts: %v", res.err)
	}
	t.Logf("%d starts, %d gc runs removed parents", starts, res.removed)
	if res.removed == 0 {
		t.Errorf("no gc removed the parents in %d starts: the race did not happen", starts)
	}
}
