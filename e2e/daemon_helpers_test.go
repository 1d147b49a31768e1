package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/api/apitest"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/jail/spawner"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
)

// daemon is an `ironclaw serve` process under test.
type daemon struct {
	t      *testing.T
	root   string
	socket string
	args   []string
	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan struct{}
	c      *client.Client
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newRoot returns a fresh state root for one test, checked for leaks when
// the test ends (after its daemons stopped), its parent cgroups then
// removed (testroot).
func newRoot(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	dir := testroot.New(t)
	t.Cleanup(func() {
		if err := testutil.Leaks(dir, state.NameOf(dir)); err != nil {
			t.Errorf("state root %s: %v", dir, err)
		}
	})
	return dir
}

// startDaemon starts `ironclaw serve` on root and waits until it answers.
// The test's cleanup destroys every sandbox left and stops it.
func startDaemon(t *testing.T, root string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, root: root, socket: filepath.Join(root, "ironclaw.sock"), args: args}
	d.start()
	t.Cleanup(func() {
		if d.cmd == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if l, err := d.c.List(ctx, nil); err == nil {
			for _, s := range l {
				if err := d.c.Destroy(ctx, s.ID); err != nil && !client.IsCode(err, api.CodeNotFound) {
					t.Errorf("cleanup: destroy %s: %v", s.ID, err)
				}
			}
		}
		d.stop()
	})
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.startWithin(30 * time.Second)
}

// startWithin starts the daemon and waits up to timeout until it answers.
func (d *daemon) startWithin(timeout time.Duration) {
	d.t.Helper()
	d.log = &syncBuffer{}
	d.cmd = exec.Command(bin, append([]string{"--root", d.root, "serve", "--sweep-interval", "100ms"}, d.args...)...)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(timeout)
	for !client.Reachable(context.Background(), d.socket, time.Second) {
		select {
		case <-d.exited:
			d.t.Fatalf("daemon exited at start: %s", d.log.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("daemon did not answer: %s", d.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := client.New(client.Config{Socket: d.socket, Transport: apitest.Validating(d.t)})
	if err != nil {
		d.t.Fatal(err)
	}
	d.c = c
}

// stop ends the daemon with SIGTERM (sandboxes stay alive).
func (d *daemon) stop() {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	d.c.Close()
	spawners := testutil.ChildrenRunning(d.cmd.Process.Pid, spawner.Arg0)
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("daemon did not stop on SIGTERM:\n%s", d.log.String())
	}
	testutil.RequireGone(d.t, spawners, 10*time.Second)
	d.cmd = nil
}

// kill SIGKILLs the daemon. Its spawner must end with it.
func (d *daemon) kill() {
	spawners := testutil.ChildrenRunning(d.cmd.Process.Pid, spawner.Arg0)
	d.cmd.Process.Kill()
	<-d.exited
	d.c.Close()
	testutil.RequireGone(d.t, spawners, 10*time.Second)
	d.cmd = nil
}

// cli runs `ironclaw sandbox ...` against this daemon.
func (d *daemon) cli(stdin []byte, args ...string) result {
	d.t.Helper()
	return ironclaw(d.t, stdin, append([]string{"--root", d.root}, args...)...)
}

// events collects the daemon's event stream in the background.
type eventLog struct {
	mu     sync.Mutex
	evs    []api.Event
	cancel context.CancelFunc
	done   chan struct{}
}

// follow collects the events of sandbox (all when empty) from the start of
// the daemon's log (since=0: stored ones first, then live), so no event is
// missed whenever the stream connects.
func (d *daemon) follow(sandbox string) *eventLog {
	ctx, cancel := context.WithCancel(context.Background())
	el := &eventLog{cancel: cancel, done: make(chan struct{})}
	c := d.c
	go func() {
		defer close(el.done)
		c.Events(ctx, client.EventFilter{Sandbox: sandbox, Since: 0}, func(ev api.Event) error {
			el.mu.Lock()
			el.evs = append(el.evs, ev)
			el.mu.Unlock()
			return nil
		})
	}()
	d.t.Cleanup(func() { cancel(); <-el.done })
	return el
}

// wait waits until an event satisfies ok.
func (el *eventLog) wait(t *testing.T, timeout time.Duration, what string, ok func(api.Event) bool) api.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		el.mu.Lock()
		for _, ev := range el.evs {
			if ok(ev) {
				el.mu.Unlock()
				return ev
			}
		}
		el.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	el.mu.Lock()
	defer el.mu.Unlock()
	t.Fatalf("no %s event within %s; got %+v", what, timeout, el.evs)
	return api.Event{}
}

func (el *eventLog) types(sandbox string) []string {
	el.mu.Lock()
	defer el.mu.Unlock()
	var out []string
	for _, ev := range el.evs {
		if ev.Sandbox == sandbox {
			out = append(out, ev.Type)
		}
	}
	return out
}

// initProcesses counts ironclaw-init processes of the state root named name.
func initProcesses(name string) int {
	n := 0
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
		if len(args) >= 2 && string(args[0]) == "ironclaw-init" && string(args[1]) == name {
			n++
		}
	}
	return n
}
