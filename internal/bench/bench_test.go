package bench

import (
	"context"
	"errors"
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
