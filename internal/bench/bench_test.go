package bench

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	s := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for p, want := range map[int]time.Duration{50: 5, 10: 1, 90: 9, 100: 10, 0: 1} {
		if got := Percentile(s, p); got != want {
			t.Errorf("Percentile(%d) = %d, want %d", p, got, want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("Percentile(nil) != 0")
	}
}

func TestRunRatiosAndErrors(t *testing.T) {
	slow := Contestant{Name: "slow", Run: func(context.Context) error { time.Sleep(2 * time.Millisecond); return nil }}
	fast := Contestant{Name: "fast", Run: func(context.Context) error { time.Sleep(time.Millisecond); return nil }}
	rep, err := Run(context.Background(), "t", "fast", 5, 1, []Contestant{slow, fast})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Results[1].Ratio != 1 || rep.Results[0].Ratio <= 1.2 || rep.Results[0].Runs != 5 {
		t.Errorf("ratios: %+v", rep.Results)
	}
	var b strings.Builder
	rep.Print(&b)
	if !strings.Contains(b.String(), "vs fast") {
		t.Errorf("table: %s", b.String())
	}
	boom := Contestant{Name: "boom", Run: func(context.Context) error { return errors.New("x") }}
	if _, err := Run(context.Background(), "t", "boom", 1, 0, []Contestant{boom}); err == nil {
		t.Error("a failing contestant did not fail the run")
	}
}

func TestRunRejectsUnknownPeer(t *testing.T) {
	c := Contestant{Name: "a", Run: func(context.Context) error { return nil }}
	if _, err := Run(context.Background(), "t", "nobody", 1, 0, []Contestant{c}); err == nil {
		t.Fatal("an unknown peer gave a report (with 0x ratios)")
	}
}

func TestParseStat(t *testing.T) {
	// A name with a space and a parenthesis, as a process may choose.
	line := "4242 (a b) c) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 100 0 0"
	got, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if got.MinFlt != 1234 || got.CPU != 3250*time.Millisecond {
		t.Errorf("parseStat = %+v, want 1234 faults and 3.25s", got)
	}
	if _, err := parseStat("4242 (x) S 1 2"); err == nil {
		t.Error("parseStat accepted a short line")
	}
	if got, err := ProcStat(os.Getpid()); err != nil || got.CPU < 0 {
		t.Errorf("ProcStat(self) = %+v, %v", got, err)
	}
}
