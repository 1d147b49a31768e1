package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/api/apitest"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/jail/spawner"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// run execs argv over an exec stream and returns stdout, stderr, status.
func run(t *testing.T, c *client.Client, id string, stdin []byte, argv ...string) (string, string, api.ExitStatus) {
	t.Helper()
	var out, errb bytes.Buffer
	io := client.ExecIO{Stdout: &out, Stderr: &errb}
	if stdin != nil {
		io.Stdin = bytes.NewReader(stdin)
	}
	e, err := c.Exec(ctxT(t), id, api.ExecRequest{Argv: argv}, io)
	if err != nil {
		t.Fatalf("exec %v: %v", argv, err)
	}
	st, err := e.Wait()
	if err != nil {
		t.Fatalf("exec %v: %v", argv, err)
	}
	return out.String(), errb.String(), st
}

func TestDaemonLifecycle(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	c := d.c
	evs := d.follow("")

	sb, err := c.Create(ctx, api.CreateRequest{ID: "life", Env: []string{"FROM_SPEC=1"}, TTL: "10m",
		Labels: map[string]string{"team": "a"}, Resources: &api.Resources{MemoryBytes: ptr(int64(256 << 20))}})
	if err != nil {
		t.Fatal(err)
	}
	if sb.ID != "life" || sb.State != "running" || sb.Hostname != "life" || sb.FromPool || *sb.Limits.MemoryBytes != 256<<20 ||
		*sb.Limits.Pids != sandbox.DefaultResources.Pids || sb.ExpiresAt == nil || sb.Labels["team"] != "a" {
		t.Errorf("created: %+v", sb)
	}
	if _, err := c.Create(ctx, api.CreateRequest{ID: "life"}); !client.IsCode(err, api.CodeAlreadyExists) {
		t.Errorf("second create with the same ID: %v", err)
	}
	other, err := c.Create(ctx, api.CreateRequest{Labels: map[string]string{"team": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(other.ID, "ic-") {
		t.Errorf("generated ID %q", other.ID)
	}
	l, err := c.List(ctx, map[string]string{"team": "a"})
	if err != nil || len(l) != 1 || l[0].ID != "life" {
		t.Fatalf("list team=a: %+v %v", l, err)
	}
	if l, _ := c.List(ctx, nil); len(l) != 2 {
		t.Errorf("list: %d sandboxes, want 2", len(l))
	}

	// Exec: streams, exit code, environment, identity.
	out, errOut, st := run(t, c, "life", nil, "sh", "-c", "echo out; echo err >&2; echo $FROM_SPEC $HOME $(hostname) $(id -u) $(pwd); exit 7")
	if out != "out\n1 /workspace life 1000 /workspace\n" || errOut != "err\n" || st.ExitCode != 7 {
		t.Errorf("exec: stdout %q stderr %q status %+v", out, errOut, st)
	}
	if _, _, st := run(t, c, "life", nil, "sh", "-c", "kill -TERM $$"); st.ExitCode != 143 || st.Signal != 15 {
		t.Errorf("killed by TERM: %+v", st)
	}
	if out, _, _ := run(t, c, "life", []byte("round trip"), "cat"); out != "round trip" {
		t.Errorf("stdin: %q", out)
	}
	// Buffered exec.
	res, err := c.ExecBuffered(ctx, "life", api.ExecRequest{Argv: []string{"sh", "-c", "cat; echo e >&2; exit 4"}, Stdin: []byte("in")})
	if err != nil || res.ExitCode != 4 || string(res.Stdout) != "in" || string(res.Stderr) != "e\n" {
		t.Errorf("buffered exec: %+v %v", res, err)
	}
	if _, err := c.ExecBuffered(ctx, "life", api.ExecRequest{Argv: []string{"no-such-program"}}); !client.IsCode(err, api.CodeCommandNotFound) {
		t.Errorf("missing program: %v", err)
	}
	// A signal reaches a running exec.
	var sigOut bytes.Buffer
	pr, pw := io.Pipe()
	e, err := c.Exec(ctx, "life", api.ExecRequest{Argv: []string{"sh", "-c", "trap 'echo got; exit 42' USR1; echo ready; while :; do sleep 0.05; done"}},
		client.ExecIO{Stdout: io.MultiWriter(&sigOut, pw)})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(pr, buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("signal exec did not start: %q %v", buf, err)
	}
	go io.Copy(io.Discard, pr)
	if err := e.Signal(int(syscall.SIGUSR1)); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Wait(); err != nil || st.ExitCode != 42 || !strings.Contains(sigOut.String(), "got") {
		t.Errorf("signal: %+v %v %q", st, err, sigOut.String())
	}
	pw.Close()
	// A TTY follows resizes.
	ttyIn, ttyW := io.Pipe()
	var ttyOut syncBuffer
	e, err = c.Exec(ctx, "life", api.ExecRequest{Argv: []string{"sh", "-c", "test -t 0 && echo is-a-tty; stty size; read x; stty size"}, TTY: true, Rows: 20, Cols: 70},
		client.ExecIO{Stdin: ttyIn, Stdout: &ttyOut})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(ttyOut.String(), "20 70") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if err := e.Resize(33, 99); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	ttyW.Write([]byte("\n"))
	if st, err := e.Wait(); err != nil || st.ExitCode != 0 {
		t.Errorf("tty exec: %+v %v", st, err)
	}
	ttyW.Close()
	if s := ttyOut.String(); !strings.Contains(s, "is-a-tty") || !strings.Contains(s, "20 70") || !strings.Contains(s, "33 99") {
		t.Errorf("tty output %q: want a terminal of 20x70, then 33x99", s)
	}
	// Several execs at once in one sandbox.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var o bytes.Buffer
			e, err := c.Exec(ctx, "life", api.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("sleep 0.3; echo %d", i)}}, client.ExecIO{Stdout: &o})
			if err != nil {
				errs <- err
				return
			}
			if st, err := e.Wait(); err != nil || st.ExitCode != 0 || o.String() != fmt.Sprintf("%d\n", i) {
				errs <- fmt.Errorf("exec %d: %+v %v %q", i, st, err, o.String())
			}
		}()
	}
	t0 := time.Now()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("8 concurrent 0.3 s execs took %s: not concurrent", d)
	}

	// Files.
	data := make([]byte, 3<<20)
	rand.Read(data)
	if n, err := c.Upload(ctx, "life", "/workspace/data.bin", bytes.NewReader(data), 0o604); err != nil || n != int64(len(data)) {
		t.Fatalf("upload: %d %v", n, err)
	}
	var got bytes.Buffer
	if n, err := c.Download(ctx, "life", "/workspace/data.bin", &got); err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("download: %d %v equal=%v", n, err, bytes.Equal(got.Bytes(), data))
	}
	fi, err := c.Stat(ctx, "life", "/workspace/data.bin")
	if err != nil || fi.Type != "file" || fi.Size != int64(len(data)) || fi.Mode != 0o604 {
		t.Errorf("stat: %+v %v", fi, err)
	}
	// Uploads are owned by the sandbox's root (the agent's uid).
	if out, _, _ := run(t, c, "life", nil, "sha256sum", "/workspace/data.bin"); !strings.HasPrefix(out, hexSum(data)) {
		t.Errorf("the sandbox sees other bytes: %s", out)
	}
	if err := c.Mkdir(ctx, "life", "/workspace/a/b/c", 0o700, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Mkdir(ctx, "life", "/workspace/x/y", 0, false); !client.IsCode(err, api.CodeFileNotFound) {
		t.Errorf("mkdir without parents: %v", err)
	}
	ents, err := c.ListDir(ctx, "life", "/workspace")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, e := range ents {
		names[e.Name] = e.Type
	}
	if names["a"] != "dir" || names["data.bin"] != "file" {
		t.Errorf("list /workspace: %+v", ents)
	}
	if err := c.Remove(ctx, "life", "/workspace/a", false); err == nil {
		t.Error("removing a non-empty directory without recursive succeeded")
	}
	if err := c.Remove(ctx, "life", "/workspace/a", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, "life", "/workspace/a"); !client.IsCode(err, api.CodeFileNotFound) {
		t.Errorf("stat after remove: %v", err)
	}
	if _, err := c.Upload(ctx, "life", "/usr/evil", strings.NewReader("x"), 0); err == nil {
		t.Error("upload into read-only /usr succeeded")
	}

	// Inspect: usage and limits from the kernel.
	sb, err = c.Get(ctx, "life")
	if err != nil {
		t.Fatal(err)
	}
	if sb.Usage == nil || sb.Usage.Pids == 0 || sb.Usage.MemoryBytes == 0 || sb.InitPID == 0 || sb.UptimeSeconds <= 0 || sb.LastActiveAt == nil {
		t.Errorf("inspect: %+v", sb)
	}
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sb.InitPID)); err != nil || !bytes.HasPrefix(comm, []byte("ironclaw-init")) {
		t.Errorf("init_pid %d is not the sandbox's init: %q %v", sb.InitPID, comm, err)
	}
	// Logs: exec records.
	logs, err := c.Logs(ctx, "life", 0)
	if err != nil {
		t.Fatal(err)
	}
	var execs int
	for _, ev := range logs {
		if ev.Type == "exec_exited" && ev.ExitCode != nil && *ev.ExitCode == 7 {
			execs++
		}
	}
	if execs != 1 || logs[0].Type != "created" {
		t.Errorf("logs: %+v", logs)
	}
	// CLI with --json.
	if r := d.cli(nil, "sandbox", "create", "--name", "cli-made", "--memory", "300m", "--label", "via=cli", "--ttl", "1h",
		"--seccomp", "strict", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"id": "cli-made"`) || !strings.Contains(r.stdout, `"memory_bytes": 314572800`) ||
		!strings.Contains(r.stdout, `"profile": "strict"`) {
		t.Errorf("sandbox create --json: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := d.cli(nil, "sandbox", "rm", "cli-made"); r.code != 0 || r.stdout != "cli-made\n" {
		t.Errorf("sandbox rm: %d %q %s", r.code, r.stdout, r.stderr)
	}
	if r := d.cli(nil, "sandbox", "create", "--memory", "1"); r.code != 125 || !strings.Contains(r.stderr, "memory") {
		t.Errorf("sandbox create with a bad limit: %d %s", r.code, r.stderr)
	}
	if r := d.cli(nil, "sandbox", "ls", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"id": "life"`) {
		t.Errorf("sandbox ls --json: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := d.cli(nil, "sandbox", "exec", "life", "--", "sh", "-c", "exit 5"); r.code != 5 {
		t.Errorf("sandbox exec exit status: %d %s", r.code, r.stderr)
	}
	if r := d.cli([]byte("via cli"), "sandbox", "cp", "-", "life:/workspace/cli.txt"); r.code != 0 {
		t.Errorf("sandbox cp up: %d %s", r.code, r.stderr)
	}
	if r := d.cli(nil, "sandbox", "cp", "life:/workspace/cli.txt", "-"); r.code != 0 || r.stdout != "via cli" {
		t.Errorf("sandbox cp down: %d %q %s", r.code, r.stdout, r.stderr)
	}

	// Destroy.
	if err := c.Destroy(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "life"); !client.IsCode(err, api.CodeNotFound) {
		t.Errorf("get after destroy: %v", err)
	}
	if err := c.Destroy(ctx, "life"); !client.IsCode(err, api.CodeNotFound) {
		t.Errorf("second destroy: %v", err)
	}
	if p := sb.InitPID; syscall.Kill(p, 0) == nil {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); bytes.HasPrefix(b, []byte("ironclaw-init")) {
			t.Errorf("init %d survives the destroy", p)
		}
	}
	evs.wait(t, 10*time.Second, "destroyed", func(ev api.Event) bool { return ev.Sandbox == "life" && ev.Type == "destroyed" })
	ts := strings.Join(evs.types("life"), " ")
	if !strings.HasPrefix(ts, "created started exec_started") || !strings.HasSuffix(ts, "destroyed") {
		t.Errorf("event stream of life: %s", ts)
	}
	// Metrics are real measurements.
	if v := apitest.Metric(t, d.socket, `ironclaw_sandboxes{state="running"}`); v != "1" {
		t.Errorf("running sandboxes metric %q, want 1", v)
	}
	if v := apitest.Metric(t, d.socket, `ironclaw_sandbox_create_seconds_count{source="cold"}`); v != "3" {
		t.Errorf("cold creates metric %q, want 3", v)
	}
	if v, _ := strconv.Atoi(apitest.Metric(t, d.socket, "ironclaw_exec_start_seconds_count")); v < 10 {
		t.Errorf("exec start count %d", v)
	}
	if v := apitest.Metric(t, d.socket, `ironclaw_sandbox_create_failures_total`); v != "" {
		t.Errorf("create failures recorded without failures: %s", v)
	}
	if _, err := c.Create(ctx, api.CreateRequest{Mounts: []api.Mount{{Source: "/no/such/dir", Target: "/x"}}}); !client.IsCode(err, api.CodeStartFailed) {
		t.Errorf("create with a missing mount source: %v", err)
	}
	if v := apitest.Metric(t, d.socket, `ironclaw_sandbox_create_failures_total{step="mount /x"}`); v != "1" {
		t.Errorf("failure by step metric %q, want 1", v)
	}
	// What a micro-VM cannot honour is refused before anything starts
	// (e2e/daemonvm boots VMs through the daemon).
	if _, err := c.Create(ctx, api.CreateRequest{Backend: "vm", Mounts: []api.Mount{{Source: root, Target: "/x"}}}); !client.IsCode(err, api.CodeInvalidField) ||
		!strings.Contains(err.Error(), "micro-VM") {
		t.Errorf("backend vm with a mount: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestDaemonFileAPIRefusesEscapes tries traversal and symlink escapes
// through every file operation.
func TestDaemonFileAPIRefusesEscapes(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	c := d.c
	if _, err := c.Create(ctx, api.CreateRequest{ID: "esc"}); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(root, "host-secret")
	os.WriteFile(secret, []byte("host secret"), 0o644)
	// Links made inside the sandbox: absolute, relative past the root, and
	// a directory link to the host path of the secret (which is not in
	// the sandbox's view at all).
	_, _, st := run(t, c, "esc", nil, "sh", "-c", "ln -s / /workspace/abs && ln -s ../../../../../../ /workspace/rel && "+
		"ln -s /etc/passwd /workspace/passwd && ln -s "+root+" /workspace/hostdir && mkdir /workspace/d")
	if st.ExitCode != 0 {
		t.Fatalf("making links: %+v", st)
	}
	// Raw requests: a client library would clean these paths.
	raw := func(method, target string, body io.Reader) (int, api.ErrorBody) {
		req, _ := http.NewRequest(method, "http://ironclaw"+target, body)
		req.Header.Set("X-Test-Invalid", "1")
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.socket)
		}}}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return resp.StatusCode, eb
	}
	for _, p := range []string{"/workspace/../etc/passwd", "/workspace/%2e%2e/etc/shadow", "workspace/x", "/workspace//x", "/workspace/./x", "/workspace/d/"} {
		for _, op := range []struct{ method, path string }{{"GET", "/files"}, {"GET", "/files/stat"}, {"GET", "/files/list"}, {"DELETE", "/files"}, {"PUT", "/files"}} {
			code, eb := raw(op.method, "/v1/sandboxes/esc"+op.path+"?path="+p, strings.NewReader("x"))
			if code != 400 || eb.Error == nil || eb.Error.Code != api.CodeInvalidField || eb.Error.Field != "path" {
				t.Errorf("%s %s path=%s: %d %+v, want 400 invalid_field naming path", op.method, op.path, p, code, eb.Error)
			}
		}
	}
	// Symlinks that lead out of the sandbox's root are refused by the agent.
	for _, p := range []string{"/workspace/abs/etc/passwd", "/workspace/rel/etc/passwd", "/workspace/passwd",
		"/workspace/hostdir/host-secret"} {
		var b bytes.Buffer
		_, err := c.Download(ctx, "esc", p, &b)
		if !client.IsCode(err, api.CodePathEscape) && !client.IsCode(err, api.CodeInvalidField) && !client.IsCode(err, api.CodeFileNotFound) {
			t.Errorf("download %s: %v, want it refused", p, err)
		}
		if err == nil || strings.Contains(b.String(), "host secret") || strings.Contains(b.String(), "root:") {
			t.Errorf("download %s leaked %q", p, b.String())
		}
	}
	for _, p := range []string{"/workspace/abs/tmp/x", "/workspace/rel/tmp/x", "/workspace/hostdir/planted"} {
		if _, err := c.Upload(ctx, "esc", p, strings.NewReader("planted"), 0); !client.IsCode(err, api.CodePathEscape) {
			t.Errorf("upload %s: %v, want path_escape", p, err)
		}
		if err := c.Mkdir(ctx, "esc", p+"d", 0, true); !client.IsCode(err, api.CodePathEscape) {
			t.Errorf("mkdir %sd: %v, want path_escape", p, err)
		}
	}
	if _, err := c.ListDir(ctx, "esc", "/workspace/abs"); !client.IsCode(err, api.CodePathEscape) {
		t.Errorf("list through an absolute link: %v, want path_escape", err)
	}
	if err := c.Remove(ctx, "esc", "/workspace/hostdir/host-secret", false); !client.IsCode(err, api.CodePathEscape) {
		t.Errorf("remove through a link: %v, want path_escape", err)
	}
	if b, err := os.ReadFile(secret); err != nil || string(b) != "host secret" {
		t.Errorf("host file changed: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(root, "planted")); err == nil {
		t.Error("an upload through a symlink planted a file on the host")
	}
	// The link itself can be inspected and removed.
	if fi, err := c.Stat(ctx, "esc", "/workspace/abs"); err != nil || fi.Type != "symlink" || fi.Link != "/" {
		t.Errorf("stat of the link: %+v %v", fi, err)
	}
	if err := c.Remove(ctx, "esc", "/workspace/abs", false); err != nil {
		t.Errorf("remove the link itself: %v", err)
	}
}

// TestDaemonConcurrentCreatesAndExecs creates 50 sandboxes at once,
// execs in each, and destroys them at once.
func TestDaemonConcurrentCreatesAndExecs(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%02d", i)
			if _, err := d.c.Create(ctx, api.CreateRequest{ID: id}); err != nil {
				errs <- fmt.Errorf("create %s: %w", id, err)
				return
			}
			res, err := d.c.ExecBuffered(ctx, id, api.ExecRequest{Argv: []string{"sh", "-c", "echo $(hostname) $1", "-", strconv.Itoa(i)}})
			if err != nil || string(res.Stdout) != fmt.Sprintf("%s %d\n", id, i) {
				errs <- fmt.Errorf("exec in %s: %+v %v", id, res, err)
			}
		}()
	}
	wg.Wait()
	if l, err := d.c.List(ctx, nil); err != nil || len(l) != n {
		t.Fatalf("list: %d sandboxes, %v", len(l), err)
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.c.Destroy(ctx, fmt.Sprintf("c%02d", i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	r, _ := state.Open(root)
	if n := initProcesses(r.Name()); n != 0 {
		t.Errorf("%d init processes left after destroying all", n)
	}
}

// TestDaemonExecStreams100MB pushes 100 MB through an exec (stdin to
// stdout) and checks every byte.
func TestDaemonExecStreams100MB(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "big"}); err != nil {
		t.Fatal(err)
	}
	const size = 100 << 20
	in := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.Reader, size), in)
	out := sha256.New()
	var n countingWriter
	var errb bytes.Buffer
	e, err := d.c.Exec(ctx, "big", api.ExecRequest{Argv: []string{"sh", "-c", "cat; sha256sum < /dev/null >&2"}},
		client.ExecIO{Stdin: src, Stdout: io.MultiWriter(out, &n), Stderr: &errb})
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.Wait()
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("cat: %+v %v %s", st, err, errb.String())
	}
	if n.n != size || !bytes.Equal(in.Sum(nil), out.Sum(nil)) {
		t.Fatalf("100 MB through cat: %d bytes back, sums equal %v", n.n, bytes.Equal(in.Sum(nil), out.Sum(nil)))
	}
	// The other way: the sandbox makes 100 MB and reports its sum.
	var got countingWriter
	h := sha256.New()
	var sum bytes.Buffer
	e, err = d.c.Exec(ctx, "big", api.ExecRequest{Argv: []string{"sh", "-c",
		"head -c 104857600 /dev/urandom > /tmp/r && cat /tmp/r && sha256sum /tmp/r >&2 && rm /tmp/r"}},
		client.ExecIO{Stdout: io.MultiWriter(h, &got), Stderr: &sum})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := e.Wait(); err != nil || st.ExitCode != 0 {
		t.Fatalf("generate: %+v %v %s", st, err, sum.String())
	}
	if !strings.HasPrefix(sum.String(), hex.EncodeToString(h.Sum(nil))) {
		t.Fatalf("sandbox-made 100 MB: %d bytes, sum %x, sandbox says %s", got.n, h.Sum(nil), sum.String())
	}
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestDaemonTTLAndIdleTimeout lets a time-to-live and an idle timeout
// expire; a running exec keeps a sandbox from being idle.
func TestDaemonTTLAndIdleTimeout(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	evs := d.follow("")
	t0 := time.Now()
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "ttl", TTL: "1500ms"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "idle", IdleTimeout: "1s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "forever"}); err != nil {
		t.Fatal(err)
	}
	// A 2.5 s exec: the idle sandbox is busy throughout.
	if _, _, st := run(t, d.c, "idle", nil, "sleep", "2.5"); st.ExitCode != 0 {
		t.Fatalf("sleep: %+v", st)
	}
	busyUntil := time.Now()
	ev := evs.wait(t, 10*time.Second, "ttl timeout", func(ev api.Event) bool { return ev.Sandbox == "ttl" && ev.Type == "timeout" })
	if ev.Reason != "ttl" || ev.Time.Sub(t0) < 1500*time.Millisecond || ev.Time.Sub(t0) > 5*time.Second {
		t.Errorf("ttl timeout %+v at %s after create", ev, ev.Time.Sub(t0))
	}
	ev = evs.wait(t, 10*time.Second, "idle timeout", func(ev api.Event) bool { return ev.Sandbox == "idle" && ev.Type == "timeout" })
	if ev.Reason != "idle" || ev.Time.Before(busyUntil.Add(900*time.Millisecond)) {
		t.Errorf("idle timeout %+v came %s after the exec ended, want >= 1s", ev, ev.Time.Sub(busyUntil))
	}
	for _, id := range []string{"ttl", "idle"} {
		evs.wait(t, 10*time.Second, id+" destroyed", func(ev api.Event) bool { return ev.Sandbox == id && ev.Type == "destroyed" })
		if _, err := d.c.Get(ctx, id); !client.IsCode(err, api.CodeNotFound) {
			t.Errorf("%s still exists after its timeout: %v", id, err)
		}
	}
	if sb, err := d.c.Get(ctx, "forever"); err != nil || sb.State != "running" {
		t.Errorf("sandbox without limits: %+v %v", sb, err)
	}
	if v := apitest.Metric(t, d.socket, `ironclaw_sandbox_timeouts_total{reason="idle"}`); v != "1" {
		t.Errorf("idle timeouts metric %q", v)
	}
}

// TestDaemonKilledMidCreateRecovers SIGKILLs the daemon while creates are
// in flight, restarts it, and requires the survivors re-attached and
// nothing else left.
func TestDaemonKilledMidCreateRecovers(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	for _, id := range []string{"s1", "s2", "s3"} {
		if _, err := d.c.Create(ctx, api.CreateRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.Upload(ctx, id, "/workspace/mark", strings.NewReader("mark-"+id), 0); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := state.Open(root)
	c := d.c
	var wg sync.WaitGroup
	var done sync.Map
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("m%02d", i)
			if _, err := c.Create(ctx, api.CreateRequest{ID: id}); err == nil { // fails when the daemon dies
				done.Store(id, true)
			}
		}()
	}
	// Kill it while creates are running: once a dozen state directories
	// exist (some creates answered, some half-way).
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if ents, _ := os.ReadDir(filepath.Join(root, "sandboxes")); len(ents) > 14 {
			break
		}
	}
	// Its sandboxes were forked by its one spawner, which dies with it
	// (kill checks that).
	if n := len(testutil.ChildrenRunning(d.cmd.Process.Pid, spawner.Arg0)); n != 1 {
		t.Errorf("the daemon has %d spawners, want 1", n)
	}
	d.kill()
	wg.Wait()
	completed := 0
	done.Range(func(_, _ any) bool { completed++; return true })
	t.Logf("killed the daemon with %d of 40 creates answered", completed)
	if completed == 40 {
		t.Error("every create finished before the kill: nothing was in flight")
	}
	// The sandboxes live on without their daemon.
	if n := initProcesses(r.Name()); n < 3 {
		t.Fatalf("%d init processes after the daemon died, want the 3 survivors at least", n)
	}
	d.start()
	l, err := d.c.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, s := range l {
		ids[s.ID] = true
		if s.State != "running" {
			t.Errorf("%s is %s after the restart", s.ID, s.State)
		}
	}
	done.Range(func(id, _ any) bool {
		if !ids[id.(string)] {
			t.Errorf("%s was created before the kill but is not re-attached", id)
		}
		return true
	})
	for _, id := range []string{"s1", "s2", "s3"} {
		if !ids[id] {
			t.Errorf("survivor %s not re-attached; have %v", id, ids)
			continue
		}
		if out, _, st := run(t, d.c, id, nil, "cat", "/workspace/mark"); out != "mark-"+id || st.ExitCode != 0 {
			t.Errorf("survivor %s: %q %+v", id, out, st)
		}
	}
	// Every init alive belongs to a listed sandbox, and every state
	// directory to a live one.
	if n := initProcesses(r.Name()); n != len(l) {
		t.Errorf("%d init processes, %d sandboxes listed", n, len(l))
	}
	live, _ := r.Live()
	ents, _ := os.ReadDir(filepath.Join(root, "sandboxes"))
	if len(live) != len(l) || len(ents) != len(l) {
		t.Errorf("%d live state dirs, %d dirs, %d sandboxes listed", len(live), len(ents), len(l))
	}
	logs, err := d.c.Logs(ctx, "s1", 0)
	if err != nil || logs[len(logs)-1].Type == "" {
		t.Fatal(err)
	}
	var reattached bool
	for _, ev := range logs {
		reattached = reattached || ev.Type == "reattached"
	}
	if !reattached {
		t.Errorf("no reattached event in s1's log: %+v", logs)
	}
	// A second daemon on the same root is refused.
	if r := ironclaw(t, nil, "--root", root, "serve", "--socket", filepath.Join(root, "other.sock")); r.code == 0 || !strings.Contains(r.stderr, "another ironclaw daemon") {
		t.Errorf("second daemon: %d %s", r.code, r.stderr)
	}
}

// TestGCForgetsDaemonRecords: with the daemon SIGKILLed and one of its
// sandboxes dead too, `ironclaw gc` reclaims that sandbox and removes its
// record from the daemon's store; the record of the sandbox still alive
// stays, and a restarted daemon re-attaches it. The store is the root's
// (a custom root is its own data directory) or in a --data-dir.
func TestGCForgetsDaemonRecords(t *testing.T) {
	t.Run("root", func(t *testing.T) { testGCForgetsDaemonRecords(t, "") })
	t.Run("data-dir", func(t *testing.T) { testGCForgetsDaemonRecords(t, filepath.Join(t.TempDir(), "data")) })
}

func testGCForgetsDaemonRecords(t *testing.T, data string) {
	root := newRoot(t)
	var dataArgs []string
	storeDir := root
	if data != "" {
		dataArgs, storeDir = []string{"--data-dir", data}, data
	}
	d := startDaemon(t, root, dataArgs...)
	ctx := ctxT(t)
	var victim api.Sandbox
	for _, id := range []string{"victim", "survivor"} {
		sb, err := d.c.Create(ctx, api.CreateRequest{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if id == "victim" {
			victim = *sb
		}
	}
	d.kill()
	pidfd, err := unix.PidfdOpen(victim.InitPID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	// The pidfd polls readable once the process has exited.
	if n, err := unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, 10_000); n != 1 || err != nil {
		t.Fatalf("init of victim did not exit: %d %v", n, err)
	}
	gc := ironclaw(t, nil, append([]string{"--root", root, "gc"}, dataArgs...)...)
	if gc.code != 0 || !strings.Contains(gc.stdout, "reclaimed 1 sandbox") || !strings.Contains(gc.stdout, "removed 1 daemon record") {
		t.Fatalf("gc: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
	st, err := store.Open(ctx, datadir.Path(storeDir))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := st.Sandboxes(ctx)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].ID != "survivor" {
		t.Errorf("store rows after gc: %+v, want survivor's only", rows)
	}
	if _, err := os.Stat(datadir.Path(root)); data != "" && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a store in the root although --data-dir is %s: %v", data, err)
	}
	// A second gc finds nothing more to do.
	if gc := ironclaw(t, nil, append([]string{"--root", root, "gc"}, dataArgs...)...); gc.code != 0 || strings.Contains(gc.stdout, "daemon record") {
		t.Errorf("second gc: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
	d.start()
	l, err := d.c.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 1 || l[0].ID != "survivor" || l[0].State != "running" {
		t.Errorf("after the restart: %+v", l)
	}
	// While a daemon serves the root, gc leaves its records alone.
	if gc := ironclaw(t, nil, append([]string{"--root", root, "gc"}, dataArgs...)...); gc.code != 0 || strings.Contains(gc.stdout, "daemon record") {
		t.Errorf("gc beside a daemon: %d\n%s%s", gc.code, gc.stdout, gc.stderr)
	}
	if _, err := d.c.Get(ctx, "survivor"); err != nil {
		t.Error(err)
	}
}

// TestDaemonBadInput sends malformed, oversized and unknown input and
// requires 4xx answers with a code, and a daemon that keeps serving.
func TestDaemonBadInput(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	send := func(method, path, ctype string, body []byte) (int, *api.Error) {
		t.Helper()
		conn, err := net.Dial("unix", d.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		req, _ := http.NewRequest(method, "http://ironclaw"+path, bytes.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if err := req.Write(conn); err != nil {
			return 0, nil // the daemon may stop reading a huge body early
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		return resp.StatusCode, eb.Error
	}
	cases := []struct {
		method, path, ctype string
		body                []byte
		status              int
		code, field         string
	}{
		{"POST", "/v1/sandboxes", "application/json", []byte(`{"id": "x"`), 400, api.CodeMalformedJSON, ""},
		{"POST", "/v1/sandboxes", "application/json", []byte(`not json`), 400, api.CodeMalformedJSON, ""},
		{"POST", "/v1/sandboxes", "application/json", []byte(`{"id": "x", "privileged": true}`), 400, api.CodeUnknownField, "privileged"},
		{"POST", "/v1/sandboxes", "application/json", []byte(`{"resources": {"memory_bytes": "lots"}}`), 400, api.CodeInvalidField, "resources.memory_bytes"},
		{"POST", "/v1/sandboxes", "application/json", []byte(`{"ttl": "forever"}`), 400, api.CodeInvalidField, "ttl"},
		{"POST", "/v1/sandboxes", "text/plain", []byte(`{}`), 415, api.CodeUnsupportedMedia, ""},
		{"POST", "/v1/sandboxes", "application/json", bytes.Repeat([]byte(" "), 2<<20), 413, api.CodeBodyTooLarge, ""},
		{"POST", "/v1/sandboxes/nope/exec", "application/json", []byte(`{"argv": []}`), 400, api.CodeInvalidField, "argv"},
		{"POST", "/v1/sandboxes/nope/exec", "application/json", []byte(`{"argv": ["x"]}`), 404, api.CodeNotFound, ""},
		{"GET", "/v1/sandboxes/nope", "", nil, 404, api.CodeNotFound, ""},
		{"GET", "/v1/sandboxes?label=novalue", "", nil, 400, api.CodeInvalidField, "label"},
		{"GET", "/v1/sandboxes/nope/logs?limit=-1", "", nil, 400, api.CodeInvalidField, "limit"},
		{"PUT", "/v1/sandboxes/nope/network", "application/json", []byte(`{}`), 400, api.CodeInvalidField, "allow"},
		{"POST", "/v1/sandboxes/nope/files/mkdir", "application/json", []byte(`{"path": "/a/../b"}`), 400, api.CodeInvalidField, "path"},
	}
	for _, c := range cases {
		status, e := send(c.method, c.path, c.ctype, c.body)
		if status == 0 {
			continue
		}
		if status != c.status || e == nil || e.Code != c.code || e.Field != c.field || e.Message == "" {
			t.Errorf("%s %s %.40q: %d %+v, want %d %s field %q", c.method, c.path, c.body, status, e, c.status, c.code, c.field)
		}
	}
	// Garbage that is not HTTP at all, and a connection that hangs up
	// mid-request.
	if conn, err := net.Dial("unix", d.socket); err == nil {
		conn.Write([]byte("\x00\xff garbage \r\n\r\n"))
		io.Copy(io.Discard, conn)
		conn.Close()
	}
	if conn, err := net.Dial("unix", d.socket); err == nil {
		conn.Write([]byte("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"id\":"))
		conn.Close()
	}
	// Still serving.
	if _, err := d.c.Health(ctxT(t)); err != nil {
		t.Fatalf("daemon stopped serving after bad input: %v\n%s", err, d.log.String())
	}
	if _, err := d.c.Create(ctxT(t), api.CreateRequest{ID: "after"}); err != nil {
		t.Fatalf("create after bad input: %v", err)
	}
}

// TestDaemonListenersAndPermissions: TCP needs a token, a wrong one gets
// 401, and the socket's mode and group are as configured.
func TestDaemonListenersAndPermissions(t *testing.T) {
	root := newRoot(t)
	os.MkdirAll(root, 0o711)
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	r := ironclaw(t, nil, "--root", root, "serve", "--listen", addr)
	if r.code == 0 || !strings.Contains(r.stderr, "refusing to serve TCP without a bearer token") {
		t.Fatalf("serve --listen without a token: %d %s", r.code, r.stderr)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte("short\n"), 0o600)
	if r := ironclaw(t, nil, "--root", root, "serve", "--listen", addr, "--token-file", tokFile); r.code == 0 {
		t.Fatalf("serve with a 5-byte token: %d %s", r.code, r.stderr)
	}
	token := "0123456789abcdef0123456789abcdef"
	os.WriteFile(tokFile, []byte(token+"\n"), 0o600)
	d := startDaemon(t, root, "--listen", addr, "--token-file", tokFile, "--group", "daemon")
	fi, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 || st.Uid != 0 || st.Gid != 1 {
		t.Errorf("socket %v uid %d gid %d, want a 0660 socket of root:daemon(1)", fi.Mode(), st.Uid, st.Gid)
	}
	for _, tc := range []struct {
		auth string
		want int
	}{{"", 401}, {"Bearer wrong-token-wrong-token", 401}, {"Basic " + token, 401}, {"Bearer " + token, 200}} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/v1/sandboxes", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb api.ErrorBody
		json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != tc.want || (tc.want == 401 && (eb.Error == nil || eb.Error.Code != api.CodeUnauthorized)) {
			t.Errorf("Authorization %q: %d %+v, want %d", tc.auth, resp.StatusCode, eb.Error, tc.want)
		}
	}
	tc, err := client.New(client.Config{URL: "http://" + addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if _, err := tc.Create(ctxT(t), api.CreateRequest{ID: "tcp"}); err != nil {
		t.Fatal(err)
	}
	if res, err := tc.ExecBuffered(ctxT(t), "tcp", api.ExecRequest{Argv: []string{"echo", "over tcp"}}); err != nil || string(res.Stdout) != "over tcp\n" {
		t.Errorf("exec over TCP: %+v %v", res, err)
	}
	// The request log names the socket peer.
	if !strings.Contains(d.log.String(), `"peer_uid":0`) || !strings.Contains(d.log.String(), `"peer_pid":`) {
		t.Errorf("request log without peer credentials:\n%s", d.log.String())
	}
	// The daemon's default socket mode is 0600.
	d.stop()
	d2 := startDaemon(t, root)
	if fi, err := os.Stat(d2.socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("default socket mode: %v %v", fi.Mode(), err)
	}
	// An unprivileged user cannot connect.
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "--root", root, "sandbox", "ls")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("nobody listing sandboxes: %v %s", err, out)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestDaemonWarmPool: creates take prepared members, the pool refills, and
// a member is never handed out twice.
func TestDaemonWarmPool(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root, "--pool", "2")
	ctx := ctxT(t)
	waitPool := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for apitest.Metric(t, d.socket, `ironclaw_pool_size{class="default"}`) != want {
			if time.Now().After(deadline) {
				t.Fatalf("pool size %s, want %s\n%s", apitest.Metric(t, d.socket, `ironclaw_pool_size{class="default"}`), want, d.log.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitPool("2")
	seen := map[string]bool{}
	for round := 0; round < 3; round++ {
		sb, err := d.c.Create(ctx, api.CreateRequest{ID: "user-" + strconv.Itoa(round), Labels: map[string]string{"round": strconv.Itoa(round)}})
		if err != nil {
			t.Fatal(err)
		}
		if !sb.FromPool || !strings.HasPrefix(sb.BackendID, "pool-") || sb.Key != string(sandbox.KeyOf(sb.BackendID)) {
			t.Fatalf("round %d: not from the pool: %+v", round, sb)
		}
		if seen[sb.BackendID] {
			t.Fatalf("pool member %s handed out twice", sb.BackendID)
		}
		seen[sb.BackendID] = true
		// The sandbox is fresh: nothing of an earlier user.
		if out, _, _ := run(t, d.c, sb.ID, nil, "sh", "-c", "ls -A /workspace /tmp | grep -v :; echo $HOSTNAME"); strings.TrimSpace(out) != sb.Hostname {
			t.Errorf("round %d: a used sandbox? %q", round, out)
		}
		run(t, d.c, sb.ID, nil, "sh", "-c", "echo used > /workspace/trace; echo used > /tmp/trace")
		// The user's labels and the mapping are in the store-backed list.
		if l, _ := d.c.List(ctx, map[string]string{"round": strconv.Itoa(round)}); len(l) != 1 || l[0].BackendID != sb.BackendID {
			t.Errorf("round %d: list by label: %+v", round, l)
		}
		if err := d.c.Destroy(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		waitPool("2")
	}
	// A create of another shape, or one that asks, starts cold.
	for _, req := range []api.CreateRequest{{ID: "cold1", Resources: &api.Resources{Pids: ptr(int64(99))}}, {ID: "cold2", Pool: ptr(false)}} {
		sb, err := d.c.Create(ctx, req)
		if err != nil || sb.FromPool || sb.BackendID != req.ID {
			t.Errorf("%s: %+v %v", req.ID, sb, err)
		}
	}
	if v := apitest.Metric(t, d.socket, `ironclaw_sandbox_create_seconds_count{source="pool"}`); v != "3" {
		t.Errorf("pool creates metric %q, want 3", v)
	}
	// Pool members survive a daemon restart and are still used once.
	d.kill()
	d.start()
	waitPool("2")
	sb, err := d.c.Create(ctx, api.CreateRequest{})
	if err != nil || !sb.FromPool || seen[sb.BackendID] {
		t.Errorf("after restart: %+v %v", sb, err)
	}
	d.stop()
	// Pool members outlive the daemon; destroy them for the leak check.
	d.args = nil
	d.start()
	waitZeroPool := apitest.Metric(t, d.socket, `ironclaw_pool_size{class="default"}`)
	if waitZeroPool != "" {
		t.Errorf("a daemon without pools reports pool size %s", waitZeroPool)
	}
}

// TestDaemonSandboxExitIsReported kills a sandbox's init from outside: the
// daemon reports it exited and reclaims its kernel objects.
func TestDaemonSandboxExitIsReported(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	evs := d.follow("victim")
	sb, err := d.c.Create(ctx, api.CreateRequest{ID: "victim"})
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(sb.InitPID, syscall.SIGKILL)
	evs.wait(t, 10*time.Second, "exited", func(ev api.Event) bool { return ev.Type == "exited" })
	got, err := d.c.Get(ctx, "victim")
	if err != nil || got.State != "exited" || got.Exit == nil {
		t.Fatalf("after init died: %+v %v", got, err)
	}
	if _, err := d.c.ExecBuffered(ctx, "victim", api.ExecRequest{Argv: []string{"true"}}); !client.IsCode(err, api.CodeNotRunning) {
		t.Errorf("exec in an exited sandbox: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "sandboxes", string(sandbox.KeyOf("victim")))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir of the exited sandbox remains: %v", err)
	}
	if err := d.c.Destroy(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonNetworkUpdate checks the errors of a policy update (the
// update itself is proven with traffic in e2e/daemonnet): a missing
// sandbox, a bad rule naming the field, and a loopback-only sandbox, which
// has no link to give rules to.
func TestDaemonNetworkUpdate(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root)
	ctx := ctxT(t)
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "net"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.UpdateNetwork(ctx, "nope", []string{"203.0.113.1/32:80"}); !client.IsCode(err, api.CodeNotFound) {
		t.Errorf("update of a missing sandbox: %v", err)
	}
	var ae *api.Error
	if _, err := d.c.UpdateNetwork(ctx, "net", []string{"no such rule"}); !errors.As(err, &ae) || ae.Code != api.CodeInvalidField || ae.Field != "allow" {
		t.Errorf("bad rule: %v", err)
	}
	if _, err := d.c.UpdateNetwork(ctx, "net", []string{"203.0.113.1/32:80"}); !client.IsCode(err, api.CodeUnsupported) {
		t.Errorf("update of a loopback-only sandbox: %v, want unsupported", err)
	}
	if _, err := d.c.Create(ctx, api.CreateRequest{Network: &api.Network{Allow: []string{"nonsense rule"}}}); !errors.As(err, &ae) || ae.Field != "network.allow" {
		t.Errorf("create with a bad rule: %v", err)
	}
}

// TestDaemonLimits: the sandbox limit answers 429 with a code, and the
// daemon keeps serving.
func TestDaemonLimits(t *testing.T) {
	root := newRoot(t)
	d := startDaemon(t, root, "--max-sandboxes", "2", "--max-creates", "1")
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.c.Create(ctx, api.CreateRequest{ID: fmt.Sprintf("lim%d", i)})
		}()
	}
	wg.Wait()
	ok, limited := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case client.IsCode(err, api.CodeLimitReached):
			var ae *api.Error
			errors.As(err, &ae)
			if ae.Status != http.StatusTooManyRequests {
				t.Errorf("limit answered %d", ae.Status)
			}
			limited++
		default:
			t.Errorf("create: %v", err)
		}
	}
	if ok != 2 || limited != 1 {
		t.Errorf("%d created, %d refused by the limit; want 2 and 1", ok, limited)
	}
	if err := d.c.Destroy(ctx, "lim0"); err != nil && !client.IsCode(err, api.CodeNotFound) {
		t.Fatal(err)
	}
	l, _ := d.c.List(ctx, nil)
	if len(l) >= 2 {
		d.c.Destroy(ctx, l[0].ID)
	}
	if _, err := d.c.Create(ctx, api.CreateRequest{ID: "after-limit"}); err != nil {
		t.Errorf("create below the limit again: %v", err)
	}
}
