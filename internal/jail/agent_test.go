package jail

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/jail/spawner"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func token(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func connect(t testing.TB, sb *Sandbox, tok []byte) *agentapi.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := agentapi.DialUnix(ctx, sb.AgentSocket())
	if err != nil {
		t.Fatal(err)
	}
	c, err := agentapi.Connect(ctx, conn, tok)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func execOut(t *testing.T, c *agentapi.Client, spec agentapi.ExecSpec) (string, agentapi.ExitStatus) {
	t.Helper()
	var out, errb bytes.Buffer
	st, err := c.Exec(context.Background(), spec, agentapi.ExecIO{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("exec %v: %v (stderr %q)", spec.Argv, err, errb.String())
	}
	return out.String(), st
}

func TestAgentExecsAreConfined(t *testing.T) {
	j, _ := newJail(t, nil)
	tok := token(t)
	sb, err := j.Start(context.Background(), spec("agent"), Options{Agent: &AgentOptions{Token: tok}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	c := connect(t, sb, tok)
	out, st := execOut(t, c, agentapi.ExecSpec{Argv: []string{"sh", "-c", "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; hostname"}})
	if st.Code != 0 {
		t.Fatalf("exec failed: %+v %q", st, out)
	}
	for _, want := range []string{"1000\n", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1", "agent\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("exec output lacks %q:\n%s", want, out)
		}
	}
	// Root inside still has no capabilities; Landlock still applies.
	out, _ = execOut(t, c, agentapi.ExecSpec{User: "0", Argv: []string{"sh", "-c", "grep CapEff /proc/self/status; echo x > /proc/self/comm || echo denied"}})
	if !strings.Contains(out, "0000000000000000") || !strings.Contains(out, "denied") {
		t.Errorf("root exec: %q", out)
	}
	// Concurrent execs share the sandbox.
	errc := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			_, err := c.Exec(context.Background(), agentapi.ExecSpec{Argv: []string{"sleep", "0.2"}}, agentapi.ExecIO{})
			errc <- err
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	// Init runs with one P: an idle agent then keeps fewer threads and
	// less memory; its commands do not inherit the setting.
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", sb.PID())); err != nil || !strings.Contains(string(env), "GOMAXPROCS=1\x00") {
		t.Errorf("init's environment %q (%v) lacks GOMAXPROCS=1", env, err)
	}
	if out, _ := execOut(t, c, agentapi.ExecSpec{Argv: []string{"env"}}); strings.Contains(out, "GOMAXPROCS") {
		t.Errorf("a command inherited init's GOMAXPROCS:\n%s", out)
	}
	// Files land in the workspace.
	if _, err := c.WriteFile(context.Background(), "/workspace/hello.txt", strings.NewReader("hi"), 0o644, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteFile(context.Background(), "/workspace/private.txt", strings.NewReader("mine"), 0o600, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir(context.Background(), "/workspace/d", 0o700, false); err != nil {
		t.Fatal(err)
	}
	// Uploads belong to the sandbox's user, who can read a 0600 file and
	// write in a 0700 directory the host made.
	out, _ = execOut(t, c, agentapi.ExecSpec{Argv: []string{"sh", "-c", "cat /workspace/hello.txt /workspace/private.txt && touch /workspace/d/x && stat -c %u:%g /workspace/private.txt"}})
	if out != "himine1000:1000\n" {
		t.Errorf("uploaded files as the sandbox user: %q", out)
	}
	if _, err := c.WriteFile(context.Background(), "/usr/evil", strings.NewReader("x"), 0o644, 0); err == nil {
		t.Error("upload into read-only /usr succeeded")
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sb.AgentSocket()); !errors.Is(err, os.ErrNotExist) {
		t.Error("agent socket remains after Close")
	}
}

// TestPersistentSandboxOutlivesItsOwner starts a persistent sandbox from a
// child process that then exits (a daemon that is SIGKILLed), re-attaches,
// execs, and destroys it.
func TestPersistentSandboxOutlivesItsOwner(t *testing.T) {
	if dir := os.Getenv("JAIL_TEST_OWNER"); dir != "" {
		root, err := state.Open(dir)
		if err != nil {
			os.Exit(2)
		}
		j, err := New(Config{Root: root})
		if err != nil {
			os.Exit(3)
		}
		s := spec("persistent")
		s.Resources.MemoryBytes = 64 << 20
		_, err = j.Start(context.Background(), s, Options{Agent: &AgentOptions{Token: []byte(os.Getenv("JAIL_TEST_TOKEN"))}, Persistent: true})
		if err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			os.Exit(4)
		}
		os.Stdout.WriteString("started\n")
		select {} // SIGKILLed by the test
	}
	j, root := newJail(t, nil)
	tok := []byte("0123456789abcdef0123456789abcdef")
	owner := exec.Command(os.Args[0], "-test.run=^TestPersistentSandboxOutlivesItsOwner$")
	owner.Env = append(os.Environ(), "JAIL_TEST_OWNER="+root.Dir(), "JAIL_TEST_TOKEN="+string(tok))
	out, _ := owner.StdoutPipe()
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "started\n" {
		owner.Process.Kill()
		owner.Wait()
		t.Fatalf("owner: %q", line)
	}
	owner.Process.Kill()
	owner.Wait()

	// GC must not take a live persistent sandbox for leaked.
	if n, err := root.Collect(Reclaim); n != 0 || err != nil {
		t.Fatalf("Collect reclaimed %d (%v) live sandboxes", n, err)
	}
	sb, err := j.Attach("persistent")
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, sb, tok)
	out2, st := execOut(t, c, agentapi.ExecSpec{Argv: []string{"echo", "still here"}})
	if out2 != "still here\n" || st.Code != 0 {
		t.Fatalf("exec after re-attach: %q %+v", out2, st)
	}
	t.Logf("re-attached to init %d, exec said %q", sb.PID(), out2)
	cg := sb.Group().Paths()
	if len(cg) == 0 {
		t.Fatal("re-attached sandbox lost its cgroup")
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(cg, sb.Dir) {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s remains after Close", p)
		}
	}
	if _, err := j.Attach("persistent"); !errors.Is(err, sandbox.ErrNotFound) {
		t.Errorf("Attach after Close = %v, want ErrNotFound", err)
	}
}

// TestForkBombLeavesTheAgentAlive runs a fork bomb through the agent of a
// long-lived sandbox: it fills the workloads' own pids group, and the
// agent (init), whose threads live outside it, keeps serving.
func TestForkBombLeavesTheAgentAlive(t *testing.T) {
	j, _ := newJail(t, nil)
	tok := token(t)
	s := spec("bomb")
	s.Resources.Pids = 64
	sb, err := j.Start(context.Background(), s, Options{Agent: &AgentOptions{Token: tok}})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	// The workloads' group (threaded on cgroup v2) comes first.
	work := sb.Group().Paths()[0]
	if filepath.Base(work) != "work" {
		t.Fatalf("no workload group: paths %v", sb.Group().Paths())
	}
	for file, want := range map[string]string{
		filepath.Join(work, "pids.max"):               "64",
		filepath.Join(filepath.Dir(work), "pids.max"): strconv.Itoa(64 + cgroup.WorkloadHeadroom),
	} {
		if b, err := os.ReadFile(file); err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q (%v), want %s", file, b, err, want)
		}
	}
	c := connect(t, sb, tok)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bomb, err := c.Start(ctx, agentapi.ExecSpec{Argv: []string{"sh", "-c", "b() { b | b & }; b; sleep 3"}}, agentapi.ExecIO{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the bomb is at its limit now
	// Make the agent's Go runtime want more threads while the bomb holds
	// every slot of the workloads: concurrent blocking file operations.
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 20; k++ {
				c.List(context.Background(), "/usr/lib")
				c.Stat(context.Background(), "/etc/passwd")
			}
		}()
	}
	wg.Wait()
	select {
	case <-sb.Done():
		t.Fatal("the fork bomb took the sandbox's init down")
	default:
	}
	bomb.Wait()
	// Once the bomb's processes are gone the sandbox serves again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out bytes.Buffer
		st, err := c.Exec(context.Background(), agentapi.ExecSpec{Argv: []string{"echo", "alive"}}, agentapi.ExecIO{Stdout: &out})
		if err == nil && st.Code == 0 && out.String() == "alive\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no exec after the fork bomb: %v %+v %q", err, st, out.String())
		}
		// Orphans of the bomb may still hold the group's slots: kill them.
		c.Exec(context.Background(), agentapi.ExecSpec{User: "0", Argv: []string{"sh", "-c", "kill -9 -1"}}, agentapi.ExecIO{})
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatalf("agent health after the fork bomb: %v", err)
	}
}

// TestPersistentSandboxesHoldNoThread: a persistent sandbox without a
// network to join keeps no OS thread of its host busy while it runs (the
// wait for its init is in the netpoller), so a daemon with many sandboxes
// does not grow a thread per sandbox; its exit is still noticed.
func TestPersistentSandboxesHoldNoThread(t *testing.T) {
	j, _ := newJail(t, nil)
	tok := token(t)
	const n = 12
	before := threads(t)
	var sbs []*Sandbox
	for i := range n {
		s := spec(fmt.Sprintf("threads-%d", i))
		s.Resources = sandbox.Resources{}
		sb, err := j.Start(context.Background(), s, Options{Agent: &AgentOptions{Token: tok}, Persistent: true})
		if err != nil {
			t.Fatal(err)
		}
		sbs = append(sbs, sb)
	}
	defer func() {
		for _, sb := range sbs {
			sb.Close()
		}
	}()
	if grew := threads(t) - before; grew >= n/2 {
		t.Errorf("the process grew %d threads for %d running sandboxes", grew, n)
	}
	if err := sbs[0].kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sbs[0].exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the exit of a killed init went unnoticed")
	}
}

// threads returns the number of threads of this process.
func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads in /proc/self/status")
	return 0
}

// TestSpawnerStartsPersistentSandboxes: with Config.Spawner, a persistent
// sandbox's init is a child of the spawner, not of this process, and is
// confined, supervised and torn down exactly as one forked here.
func TestSpawnerStartsPersistentSandboxes(t *testing.T) {
	base, root := newJail(t, nil)
	j, err := New(Config{Root: root, Exe: base.cfg.Exe, Spawner: true})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	tok := token(t)
	var sbs []*Sandbox
	for _, id := range []string{"spawned-1", "spawned-2"} {
		sb, err := j.Start(context.Background(), spec(id), Options{Agent: &AgentOptions{Token: tok}, Persistent: true})
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		sbs = append(sbs, sb)
	}
	sb := sbs[0]
	ppid := testutil.ProcStatus(t, sb.PID(), "PPid")
	if ppid == strconv.Itoa(os.Getpid()) {
		t.Fatal("init is a child of this process, not of the spawner")
	}
	if cmdline, err := os.ReadFile("/proc/" + ppid + "/cmdline"); err != nil || !strings.HasPrefix(string(cmdline), spawner.Arg0+"\x00") {
		t.Errorf("init's parent %s runs %q (%v), want the spawner", ppid, cmdline, err)
	}
	if p2 := testutil.ProcStatus(t, sbs[1].PID(), "PPid"); p2 != ppid {
		t.Errorf("second sandbox's parent %s, want the same spawner %s", p2, ppid)
	}
	// Its cgroup holds it, and its commands are confined.
	if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", sb.PID())); err != nil || !strings.Contains(string(cg), "/"+root.Name()+"/"+string(sb.Key)) {
		t.Errorf("init's cgroups %q (%v) are not its sandbox's", cg, err)
	}
	c := connect(t, sb, tok)
	out, st := execOut(t, c, agentapi.ExecSpec{Argv: []string{"sh", "-c", "id -u; grep CapEff /proc/self/status; hostname"}})
	if st.Code != 0 || out != "1000\nCapEff:\t0000000000000000\nspawned-1\n" {
		t.Errorf("exec: %+v %q", st, out)
	}
	// An init killed from outside is seen to end, with the signal.
	if err := sb.kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sb.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the exit of a killed init went unnoticed")
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if r := sb.result; r.Signal != syscall.SIGKILL {
		t.Errorf("result %+v, want SIGKILL", r)
	}
	if err := sbs[1].Close(); err != nil {
		t.Fatal(err)
	}
}
