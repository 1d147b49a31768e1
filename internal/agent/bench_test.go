package agent

import (
	"context"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// BenchmarkExecRoundTrip measures one exec of /bin/true through the agent
// over a Unix socket (the jail transport), and as its peer, in the same run,
// a plain local fork/exec of the same command. It reports both medians and
// their ratio.
func BenchmarkExecRoundTrip(b *testing.B) {
	f := start(b, nil)
	ctx := context.Background()
	spec := agentapi.ExecSpec{Argv: []string{"/bin/true"}}
	var agent, local []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := f.c.Exec(ctx, spec, agentapi.ExecIO{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		agent = append(agent, t1.Sub(t0))
		local = append(local, time.Since(t1))
	}
	ma, ml := median(agent), median(local)
	b.ReportMetric(float64(ma.Microseconds())/1000, "agent-p50-ms")
	b.ReportMetric(float64(ml.Microseconds())/1000, "local-p50-ms")
	b.ReportMetric(float64(ma)/float64(ml), "agent/local")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
