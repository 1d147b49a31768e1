package e2e

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/ironclaw/ironclaw/internal/api"
	"github.com/ironclaw/ironclaw/internal/client"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/testutil"
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
// the test ends (after its daemons stopped).
func newRoot(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	dir := filepath.Join(testutil.SearchableTempDir(t), "state")
	t.Cleanup(func() {
		r, err := state.Open(dir)
		if err != nil {
			t.Error(err)
			return
		}
		if err := testutil.Leaks(dir, r.Name()); err != nil {
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
	d.log = &syncBuffer{}
	d.cmd = exec.Command(bin, append([]string{"--root", d.root, "serve", "--sweep-interval", "100ms"}, d.args...)...)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(30 * time.Second)
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
	c, err := client.New(client.Config{Socket: d.socket, Transport: validating(d.t)})
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
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("daemon did not stop on SIGTERM:\n%s", d.log.String())
	}
	d.cmd = nil
}

// kill SIGKILLs the daemon.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.exited
	d.c.Close()
	d.cmd = nil
}

// cli runs `ironclaw sandbox ...` against this daemon.
func (d *daemon) cli(stdin []byte, args ...string) result {
	d.t.Helper()
	return ironclaw(d.t, stdin, append([]string{"--root", d.root}, args...)...)
}

// validating returns a transport wrapper that checks every request the
// client sends and every JSON answer the daemon gives against the OpenAPI
// document: the document must describe what the daemon really does.
func validating(t *testing.T) func(http.RoundTripper) http.RoundTripper {
	doc, err := openapi3.NewLoader().LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	doc.Servers = openapi3.Servers{{URL: "http://ironclaw/"}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return func(next http.RoundTripper) http.RoundTripper {
		return rtFunc(func(req *http.Request) (*http.Response, error) {
			return validateRoundTrip(t, router, next, req)
		})
	}
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func validateRoundTrip(t *testing.T, router routers.Router, next http.RoundTripper, req *http.Request) (*http.Response, error) {
	var body []byte
	binary := req.Header.Get("Content-Type") == "application/octet-stream"
	if req.Body != nil && !binary {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body.Close()
		body = b
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	vreq := req.Clone(req.Context())
	vreq.Body = http.NoBody
	if body != nil {
		vreq.Body = io.NopCloser(bytes.NewReader(body))
	}
	route, params, err := router.FindRoute(vreq)
	if err != nil {
		t.Errorf("OpenAPI: %s %s: no route: %v", req.Method, req.URL.Path, err)
		return next.RoundTrip(req)
	}
	opts := &openapi3filter.Options{MultiError: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	if binary {
		opts.ExcludeRequestBody = true
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: opts}
	// Requests tests make bad on purpose are marked; all others must match.
	if req.Header.Get("X-Test-Invalid") == "" {
		if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
			t.Errorf("OpenAPI: request %s %s does not match the document: %v", req.Method, req.URL.Path, err)
		}
	}
	resp, err := next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	ct := resp.Header.Get("Content-Type")
	if resp.StatusCode == http.StatusSwitchingProtocols || !strings.HasPrefix(ct, "application/json") {
		if resp.StatusCode != http.StatusSwitchingProtocols {
			checkStatusDocumented(t, route, req, resp.StatusCode)
		}
		return resp, nil
	}
	rb, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(rb))
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{MultiError: true, IncludeResponseStatus: true}}
	rin.SetBodyBytes(rb)
	if err := openapi3filter.ValidateResponse(req.Context(), rin); err != nil {
		t.Errorf("OpenAPI: answer %d to %s %s does not match the document: %v\nbody: %s", resp.StatusCode, req.Method, req.URL.Path, err, rb)
	}
	return resp, nil
}

func checkStatusDocumented(t *testing.T, route *routers.Route, req *http.Request, status int) {
	if route.Operation.Responses.Status(status) == nil {
		t.Errorf("OpenAPI: %s %s answered %d, which the document does not list", req.Method, req.URL.Path, status)
	}
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

// metric returns the value of the first sample line that starts with prefix.
func metric(t *testing.T, socket, prefix string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	resp, err := hc.Get("http://ironclaw/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			return f[len(f)-1]
		}
	}
	return ""
}
