// Package bench measures commands end to end for IronClaw's bench command:
// it runs each contestant in turn (interleaved, so drift on a shared
// machine hits all of them alike), and reports medians, percentiles and
// ratios against a named peer measured in the same run.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"
)

// Contestant is one thing to measure.
type Contestant struct {
	Name string
	// Run performs one measured operation.
	Run func(ctx context.Context) error
	// Prepare, when set, runs before each Run, untimed.
	Prepare func(ctx context.Context) error
}

// Result is the timing distribution of one contestant.
type Result struct {
	Name    string          `json:"name"`
	Runs    int             `json:"runs"`
	Median  time.Duration   `json:"median_ns"`
	P10     time.Duration   `json:"p10_ns"`
	P90     time.Duration   `json:"p90_ns"`
	Ratio   float64         `json:"ratio_to_peer"`
	Samples []time.Duration `json:"-"`
}

// Report is a whole run.
type Report struct {
	Title   string   `json:"title"`
	Peer    string   `json:"peer"`
	Results []Result `json:"results"`
}

// Run measures each contestant runs times after warmup untimed rounds,
// interleaving them (each round in the order of cs, rotated by one from
// the round before), and computes ratios against the contestant named
// peer.
func Run(ctx context.Context, title, peer string, runs, warmup int, cs []Contestant) (*Report, error) {
	samples := make([][]time.Duration, len(cs))
	for i := 0; i < warmup+runs; i++ {
		// Each round starts one contestant later than the one before,
		// so that none always follows the same neighbour.
		for k := range cs {
			j := (i + k) % len(cs)
			c := cs[j]
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if c.Prepare != nil {
				if err := c.Prepare(ctx); err != nil {
					return nil, fmt.Errorf("%s: prepare: %w", c.Name, err)
				}
			}
			start := time.Now()
			if err := c.Run(ctx); err != nil {
				return nil, fmt.Errorf("%s: %w", c.Name, err)
			}
			if i >= warmup {
				samples[j] = append(samples[j], time.Since(start))
			}
		}
	}
	rep := &Report{Title: title, Peer: peer}
	var peerMedian time.Duration
	for j, c := range cs {
		s := samples[j]
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
		r := Result{Name: c.Name, Runs: len(s), Median: Percentile(s, 50), P10: Percentile(s, 10), P90: Percentile(s, 90), Samples: s}
		if c.Name == peer {
			peerMedian = r.Median
		}
		rep.Results = append(rep.Results, r)
	}
	if peerMedian == 0 {
		return nil, fmt.Errorf("peer %q is not one of the contestants", peer)
	}
	for i := range rep.Results {
		rep.Results[i].Ratio = float64(rep.Results[i].Median) / float64(peerMedian)
	}
	return rep, nil
}

// Percentile returns the p-th percentile of sorted samples (nearest rank).
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) error {
	fmt.Fprintf(w, "%s\n", r.Title)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "contestant\truns\tmedian\tp10\tp90\tvs %s\t\n", r.Peer)
	for _, x := range r.Results {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%.2fx\t\n", x.Name, x.Runs, round(x.Median), round(x.P10), round(x.P90), x.Ratio)
	}
	return tw.Flush()
}

// JSON writes the report as JSON.
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func round(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}
