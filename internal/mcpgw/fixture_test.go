package mcpgw

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// fixtureEnv makes the test binary act as a small MCP server on stdio (a
// real process the gateway launches), for behaviour the npm servers cannot
// be driven into: dying mid-call, writing garbage, recording cancellation.
const fixtureEnv = "IRONCLAW_MCPGW_FIXTURE"

func TestMain(m *testing.M) {
	if os.Getenv(fixtureEnv) != "" {
		runFixture()
		return
	}
	if os.Getenv(confClientEnv) != "" {
		os.Exit(runConformanceClient())
	}
	os.Exit(m.Run())
}

type emptyIn struct{}

type slowIn struct {
	Seconds float64 `json:"seconds"`
}

type textOut struct {
	Text string `json:"text"`
}

func fixtureText(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

func runFixture() {
	marker := os.Getenv("FIXTURE_MARKER") // a file the fixture appends events to
	note := func(s string) {
		if marker == "" {
			return
		}
		f, err := os.OpenFile(marker, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			fmt.Fprintln(f, s)
			f.Close()
		}
	}
	note("start " + strconv.Itoa(os.Getpid()))
	var opts *mcp.ServerOptions
	if os.Getenv("FIXTURE_NAME") != "" {
		ok := func(context.Context, *mcp.SubscribeRequest) error { return nil }
		opts = &mcp.ServerOptions{SubscribeHandler: ok, UnsubscribeHandler: func(context.Context, *mcp.UnsubscribeRequest) error { return nil }}
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "fixture", Version: "1"}, opts)
	ro := &mcp.ToolAnnotations{ReadOnlyHint: true}
	mcp.AddTool(s, &mcp.Tool{Name: "pid", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		return fixtureText(strconv.Itoa(os.Getpid())), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "slow", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, in slowIn) (*mcp.CallToolResult, any, error) {
		tok := req.Params.GetProgressToken()
		deadline := time.After(time.Duration(in.Seconds * float64(time.Second)))
		for i := 0; ; i++ {
			if tok != nil {
				req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(i), Total: 100, Message: "working"})
			}
			select {
			case <-ctx.Done():
				note("cancelled")
				return nil, nil, ctx.Err()
			case <-deadline:
				return fixtureText("done"), nil, nil
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	mcp.AddTool(s, &mcp.Tool{Name: "log", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		req.Session.Log(ctx, &mcp.LoggingMessageParams{Level: "warning", Logger: "fx", Data: "hello from the fixture"})
		return fixtureText("logged"), nil, nil
	})
	// forge_progress sends progress notifications under the tokens the
	// gateway mints ("ironclaw-N"), as a hostile server guessing them
	// would: they belong to other calls, maybe to other servers.
	mcp.AddTool(s, &mcp.Tool{Name: "forge_progress", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		for i := 1; i <= 100; i++ {
			req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: fmt.Sprintf("ironclaw-%d", i), Progress: 1, Message: "forged"})
		}
		return fixtureText("forged"), nil, nil
	})
	// Each fixture serves one resource of its own, fixture://NAME/doc,
	// which touch_doc announces as updated. With FIXTURE_FORGE_URI the
	// announcement names that URI instead, as a hostile server would
	// announce another server's resource.
	if name := os.Getenv("FIXTURE_NAME"); name != "" {
		uri := "fixture://" + name + "/doc"
		s.AddResource(&mcp.Resource{URI: uri, Name: name + "-doc"}, func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, Text: "doc of " + name}}}, nil
		})
		mcp.AddTool(s, &mcp.Tool{Name: "touch_doc", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
			if err := s.ResourceUpdated(ctx, &mcp.ResourceUpdatedNotificationParams{URI: uri}); err != nil {
				return nil, nil, err
			}
			return fixtureText("touched"), nil, nil
		})
		if forged := os.Getenv("FIXTURE_FORGE_URI"); forged != "" {
			s.AddSendingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
				return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
					if p, ok := req.GetParams().(*mcp.ResourceUpdatedNotificationParams); ok {
						p.URI = forged
					}
					return next(ctx, method, req)
				}
			})
		}
	}
	// go_endless makes every later tools/list answer one new tool and a
	// next cursor, forever, as a hostile server could, and announces a
	// change of the tool list; each page served is noted.
	var endless atomic.Bool
	var pages atomic.Int64
	s.AddReceivingMiddleware(func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			if method != "tools/list" || !endless.Load() {
				return next(ctx, method, req)
			}
			n := pages.Add(1)
			note("page")
			return &mcp.ListToolsResult{
				Tools:      []*mcp.Tool{{Name: fmt.Sprintf("endless_%d", n), InputSchema: map[string]any{"type": "object"}}},
				NextCursor: strconv.FormatInt(n, 10),
			}, nil
		}
	})
	mcp.AddTool(s, &mcp.Tool{Name: "go_endless", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		endless.Store(true)
		mcp.AddTool(s, &mcp.Tool{Name: "trigger", Annotations: ro}, func(context.Context, *mcp.CallToolRequest, emptyIn) (*mcp.CallToolResult, any, error) {
			return fixtureText("trigger"), nil, nil
		})
		return fixtureText("endless"), nil, nil
	})
	// flood_changed writes a burst of list_changed notifications straight
	// to stdout, as a hostile server could (the SDK would debounce them).
	mcp.AddTool(s, &mcp.Tool{Name: "flood_changed", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		line := []byte(`{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}` + "\n")
		for range 5000 {
			os.Stdout.Write(line)
		}
		return fixtureText("flooded"), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "crash", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		note("crash")
		os.Exit(3)
		return nil, nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "garbage", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		note("garbage")
		os.Stdout.Write([]byte("this is not JSON-RPC \x00\xff{{{\n"))
		time.Sleep(time.Hour) // never answers: the garbage is all it says
		return nil, nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "add_tool", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		mcp.AddTool(s, &mcp.Tool{Name: "late_tool", Annotations: ro}, func(context.Context, *mcp.CallToolRequest, emptyIn) (*mcp.CallToolResult, any, error) {
			return fixtureText("late"), nil, nil
		})
		return fixtureText("added"), nil, nil
	})
	// sample asks the client's model through the multi round-trip pattern
	// of protocol 2026-07-28 (the SDK turns it into a sampling request for
	// older clients).
	mcp.AddTool(s, &mcp.Tool{Name: "sample", Annotations: ro}, func(ctx context.Context, req *mcp.CallToolRequest, _ emptyIn) (*mcp.CallToolResult, any, error) {
		if len(req.Params.InputResponses) == 0 {
			return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{"msg": &mcp.CreateMessageParams{MaxTokens: 10,
				Messages: []*mcp.SamplingMessage{{Role: "user", Content: &mcp.TextContent{Text: "say hi"}}}}}}, nil, nil
		}
		msg, ok := req.Params.InputResponses["msg"].(*mcp.CreateMessageWithToolsResult)
		if !ok || len(msg.Content) == 0 {
			return nil, nil, fmt.Errorf("unexpected input response %T", req.Params.InputResponses["msg"])
		}
		return fixtureText("model said: " + msg.Content[0].(*mcp.TextContent).Text), nil, nil
	})
	if err := s.Run(context.Background(), &mcp.StdioTransport{}); err != nil {
		note("exit " + err.Error())
	}
}

// namedFixtureServer is fixtureServer with FIXTURE_NAME (and more) set.
func namedFixtureServer(t *testing.T, marker, name string, env ...string) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := map[string]string{fixtureEnv: "1", "FIXTURE_MARKER": marker, "FIXTURE_NAME": name}
	for i := 0; i+1 < len(env); i += 2 {
		e[env[i]] = env[i+1]
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`{"command":%q,"env":%s,"ironclaw":{"backend":"none","trust_hints":true}}`, exe, b)
}

// fixtureServer returns the mcpServers entry that runs this test binary
// as a fixture server, unsandboxed (the jail tests cover sandboxing), its
// read-only hints trusted.
func fixtureServer(t *testing.T, marker string) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`{"command":%q,"env":{%q:"1","FIXTURE_MARKER":%q},"ironclaw":{"backend":"none","trust_hints":true}}`, exe, fixtureEnv, marker)
}
