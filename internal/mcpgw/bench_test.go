package mcpgw

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/testutil/testroot"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// BenchmarkMCPGateway measures, in one run:
//
//   - tools/call latency of server-everything's echo tool through the
//     gateway (`ironclaw mcp serve` as its own process, on stdio, with
//     classification and an audit record per call) against a direct stdio
//     connection to the same server, calls interleaved;
//   - the cold start (spawn + initialize) of that server unsandboxed and
//     in the jail (`ironclaw run`, when it works here).
//
// It prints medians and ratios:
//
//	go test -run '^$' -bench BenchmarkMCPGateway -benchtime 1x ./internal/mcpgw/
func BenchmarkMCPGateway(b *testing.B) {
	nm := nodeModules(b)
	bin := ironclawBinary(b)
	entry := everythingEntry(nm)
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		direct := connectCmd(b, exec.Command("node", entry))
		root := benchRoot(b)
		cfg := filepath.Join(root, "mcp.json")
		os.WriteFile(cfg, []byte(fmt.Sprintf(`{"mcpServers":{"ev":{"command":"node","args":[%q],"ironclaw":{"backend":"none","trust_hints":true}}}}`, entry)), 0o600)
		gw := connectCmd(b, exec.Command(bin, "--root", root, "mcp", "serve", "--config", cfg, "--name", "bench"))

		const warm, n = 200, 2000
		call := func(cs *mcp.ClientSession, name string) time.Duration {
			t0 := time.Now()
			r, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: map[string]any{"message": "ping"}})
			d := time.Since(t0)
			if err != nil || r.IsError {
				b.Fatalf("%s: %v", name, err)
			}
			return d
		}
		for j := 0; j < warm; j++ {
			call(direct, "echo")
			call(gw, "ev__echo")
		}
		var ds, gs []time.Duration
		for j := 0; j < n; j++ {
			ds = append(ds, call(direct, "echo"))
			gs = append(gs, call(gw, "ev__echo"))
		}
		direct.Close()
		gw.Close()
		md, mg := median(ds), median(gs)
		b.ReportMetric(float64(md.Microseconds()), "direct-p50-µs")
		b.ReportMetric(float64(mg.Microseconds()), "gateway-p50-µs")
		b.ReportMetric(float64((mg - md).Microseconds()), "added-p50-µs")
		b.ReportMetric(float64(mg)/float64(md), "gateway/direct")
		fmt.Printf("tools/call echo, %d calls each, interleaved:\n  direct stdio  p50 %8s  p90 %8s\n  via gateway   p50 %8s  p90 %8s\n  added at p50  %s  (ratio %.2fx)\n",
			n, md, pct(ds, 90), mg, pct(gs, 90), mg-md, float64(mg)/float64(md))

		// Cold start: spawn and initialize, 10 times each.
		const starts = 10
		var cold, coldJail []time.Duration
		jail := jailWorks(b, bin)
		for j := 0; j < starts; j++ {
			cold = append(cold, coldStart(b, exec.Command("node", entry)))
			if jail {
				coldJail = append(coldJail, coldStart(b, exec.Command(bin, "--root", benchRoot(b), "run",
					"--mount", nm+":"+guestModules+":ro", "--",
					"node", guestModules+"/@modelcontextprotocol/server-everything/dist/index.js")))
			}
		}
		fmt.Printf("cold start (spawn + initialize), %d each:\n  unsandboxed   p50 %8s\n", starts, median(cold))
		b.ReportMetric(float64(median(cold).Milliseconds()), "cold-none-p50-ms")
		if jail {
			mj := median(coldJail)
			fmt.Printf("  jail          p50 %8s  (ratio %.2fx)\n", mj, float64(mj)/float64(median(cold)))
			b.ReportMetric(float64(mj.Milliseconds()), "cold-jail-p50-ms")
			b.ReportMetric(float64(mj)/float64(median(cold)), "jail/none")
		} else {
			fmt.Printf("  jail          not measured: `ironclaw run -- /bin/true` does not work in this build\n")
		}
	}
}

func benchRoot(b *testing.B) string {
	return testroot.New(b) // `mcp serve` refuses a root sandboxes cannot search
}

func connectCmd(b *testing.B, cmd *exec.Cmd) *mcp.ClientSession {
	c := mcp.NewClient(&mcp.Implementation{Name: "bench", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		b.Fatalf("connect %s: %v", cmd.Path, err)
	}
	return cs
}

func coldStart(b *testing.B, cmd *exec.Cmd) time.Duration {
	t0 := time.Now()
	cs := connectCmd(b, cmd)
	d := time.Since(t0)
	cs.Close()
	return d
}

func jailWorks(b *testing.B, bin string) bool {
	root := benchRoot(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, bin, "--root", root, "run", "--", "/bin/true").Run() == nil
}

func median(d []time.Duration) time.Duration { return pct(d, 50) }

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100]
}
