package jail

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
)

// BenchmarkAgentExecInJail measures an exec round trip (request → exit
// status of /bin/true) through the agent of a long-lived jail, with every
// exec confined (capabilities, no_new_privs, Landlock, seccomp).
func BenchmarkAgentExecInJail(b *testing.B) {
	j, _ := newJail(b, nil)
	tok := []byte("0123456789abcdef0123456789abcdef")
	sb, err := j.Start(context.Background(), spec("bench-agent"), Options{Agent: &AgentOptions{Token: tok}})
	if err != nil {
		b.Fatal(err)
	}
	defer sb.Close()
	c := connect(b, sb, tok)
	var ds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t := time.Now()
		st, err := c.Exec(context.Background(), agentapi.ExecSpec{Argv: []string{"/bin/true"}}, agentapi.ExecIO{})
		if err != nil || st.Code != 0 {
			b.Fatalf("exec: %+v %v", st, err)
		}
		ds = append(ds, time.Since(t))
	}
	sort.Slice(ds, func(a, c int) bool { return ds[a] < ds[c] })
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), "p50-µs")
}
