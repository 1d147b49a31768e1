package approval

import (
	"fmt"
	"strings"
)

// maxDiffEdits bounds the work of Unified: past this many changed lines the
// diff is replaced by a summary (the card still says what changes).
const maxDiffEdits = 4000

// Unified returns a unified diff (3 lines of context) turning old into new,
// with "--- a/NAME" and "+++ b/NAME" headers, or "" when they are equal.
// It uses Myers' O(ND) algorithm on lines.
func Unified(name, old, new string) string {
	if old == new {
		return ""
	}
	a, b := splitLines(old), splitLines(new)
	ops, ok := myers(a, b, maxDiffEdits)
	var sb strings.Builder
	fmt.Fprintf(&sb, "--- a/%s\n+++ b/%s\n", name, name)
	if !ok {
		fmt.Fprintf(&sb, "@@ too many changes to show: %d lines become %d lines @@\n", len(a), len(b))
		return sb.String()
	}
	writeHunks(&sb, ops, a, b, 3)
	return sb.String()
}

type editKind byte

const (
	keep editKind = iota
	del
	ins
)

type edit struct {
	kind editKind
	ai   int // index in a (keep, del)
	bi   int // index in b (keep, ins)
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// myers returns the edit script from a to b, or false if it needs more than
// max edits.
func myers(a, b []string, max int) ([]edit, bool) {
	n, m := len(a), len(b)
	if max > n+m {
		max = n + m
	}
	off := max + 1
	v := make([]int, 2*max+3)
	var trace [][]int
	found := false
	for d := 0; d <= max && !found; d++ {
		snap := make([]int, len(v))
		copy(snap, v)
		trace = append(trace, snap)
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = v[off+k+1]
			} else {
				x = v[off+k-1] + 1
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x++
				y++
			}
			v[off+k] = x
			if x >= n && y >= m {
				found = true
				break
			}
		}
	}
	if !found {
		return nil, false
	}
	// Backtrack through the snapshots (trace[d] is v before step d).
	x, y := n, m
	var rev []edit
	for d := len(trace) - 1; d >= 0; d-- {
		vd := trace[d]
		k := x - y
		var pk int
		if d == 0 {
			pk = 0
		} else if k == -d || (k != d && vd[off+k-1] < vd[off+k+1]) {
			pk = k + 1
		} else {
			pk = k - 1
		}
		px := 0
		if d > 0 {
			px = vd[off+pk]
		}
		py := px - pk
		for x > px && y > py {
			x--
			y--
			rev = append(rev, edit{keep, x, y})
		}
		if d == 0 {
			break
		}
		if x == px {
			y--
			rev = append(rev, edit{ins, x, y})
		} else {
			x--
			rev = append(rev, edit{del, x, y})
		}
	}
	for x > 0 && y > 0 {
		x--
		y--
		rev = append(rev, edit{keep, x, y})
	}
	ops := make([]edit, len(rev))
	for i := range rev {
		ops[i] = rev[len(rev)-1-i]
	}
	return ops, true
}

func writeHunks(sb *strings.Builder, ops []edit, a, b []string, ctx int) {
	i := 0
	for i < len(ops) {
		// Find the next change.
		for i < len(ops) && ops[i].kind == keep {
			i++
		}
		if i == len(ops) {
			return
		}
		start := i - ctx
		if start < 0 {
			start = 0
		}
		// Extend while changes are within 2*ctx of each other.
		end := i
		for {
			for end < len(ops) && ops[end].kind != keep {
				end++
			}
			run := end
			for run < len(ops) && ops[run].kind == keep {
				run++
			}
			if run < len(ops) && run-end <= 2*ctx {
				end = run
				continue
			}
			end += ctx
			if end > len(ops) {
				end = len(ops)
			}
			break
		}
		hunk := ops[start:end]
		aStart, bStart, aLen, bLen := -1, -1, 0, 0
		for _, e := range hunk {
			if e.kind != ins {
				if aStart < 0 {
					aStart = e.ai
				}
				aLen++
			}
			if e.kind != del {
				if bStart < 0 {
					bStart = e.bi
				}
				bLen++
			}
		}
		fmt.Fprintf(sb, "@@ -%s +%s @@\n", hunkRange(aStart, aLen, hunk, true), hunkRange(bStart, bLen, hunk, false))
		for _, e := range hunk {
			var line, prefix string
			switch e.kind {
			case keep:
				line, prefix = a[e.ai], " "
			case del:
				line, prefix = a[e.ai], "-"
			case ins:
				line, prefix = b[e.bi], "+"
			}
			sb.WriteString(prefix)
			sb.WriteString(line)
			if !strings.HasSuffix(line, "\n") {
				sb.WriteString("\n\\ No newline at end of file\n")
			}
		}
		i = end
	}
}

// hunkRange formats "start,len" (1-based); an empty side reports the line
// before the hunk, as diff(1) does.
func hunkRange(start, n int, hunk []edit, isA bool) string {
	if n == 0 {
		// Position: the index where the empty range sits.
		pos := 0
		for _, e := range hunk {
			if isA {
				pos = e.ai
			} else {
				pos = e.bi
			}
			break
		}
		return fmt.Sprintf("%d,0", pos)
	}
	if n == 1 {
		return fmt.Sprintf("%d", start+1)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}
