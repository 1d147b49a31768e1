package approval

import (
	"fmt"
	"strings"
)

// Limits of Unified. Past any of them the diff is replaced by a one-line
// summary (the card still shows the arguments). Together they bound one
// call's memory to 4 bytes per input line, a frontier of 2x(maxDiffEdits/2+2)
// entries and the output, whatever the input (TestUnifiedMemoryIsBounded:
// under 24 MiB for two 1 MiB inputs), and its time (maxDiffWork).
const (
	// maxDiffInput is the largest old or new content diffed, in bytes.
	maxDiffInput = maxCardFile
	// maxDiffEdits is the most changed (deleted plus inserted) lines shown.
	maxDiffEdits = 4000
	// maxDiffWork bounds the comparisons: each costs diffStepCost plus the
	// length of the line compared.
	maxDiffWork  = 1 << 29
	diffStepCost = 32
)

// Unified returns a unified diff (3 lines of context) turning old into new,
// with "--- a/NAME" and "+++ b/NAME" headers, or "" when they are equal.
// It uses Myers' O(ND) algorithm in linear space (the divide-and-conquer
// "middle snake" variant), on lines.
func Unified(name, old, new string) string {
	if old == new {
		return ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "--- a/%s\n+++ b/%s\n", name, name)
	if len(old) > maxDiffInput || len(new) > maxDiffInput {
		fmt.Fprintf(&sb, "@@ too large to show: %d bytes become %d bytes (the limit is %d) @@\n", len(old), len(new), maxDiffInput)
		return sb.String()
	}
	a, b := splitLines(old), splitLines(new)
	d := newDiffer(a, b, maxDiffEdits)
	if !d.compare(0, a.n(), 0, b.n()) || d.edits > maxDiffEdits || !d.verify() {
		fmt.Fprintf(&sb, "@@ too many changes to show: %d lines become %d lines @@\n", a.n(), b.n())
		return sb.String()
	}
	writeHunks(&sb, d.changes, a, b, 3)
	return sb.String()
}

// lines is a text cut into lines without copying: line i is
// s[end[i-1]:end[i]] (end[-1] being 0), its newline included.
type lines struct {
	s   string
	end []int32
}

// splitLines indexes the lines of s (at most maxDiffInput bytes). A last
// line without a newline is a line.
func splitLines(s string) lines {
	l := lines{s: s, end: make([]int32, 0, strings.Count(s, "\n")+1)}
	for i := 0; i < len(s); {
		j := strings.IndexByte(s[i:], '\n')
		if j < 0 {
			j = len(s) - i - 1
		}
		i += j + 1
		l.end = append(l.end, int32(i))
	}
	return l
}

func (l lines) n() int { return len(l.end) }

func (l lines) line(i int) string {
	start := int32(0)
	if i > 0 {
		start = l.end[i-1]
	}
	return l.s[start:l.end[i]]
}

// change replaces a[a:a+del] with b[b:b+ins]; the lines between two
// changes are kept.
type change struct {
	a, b, del, ins int
}

// differ computes the changes from a to b.
type differ struct {
	a, b    lines
	vf, vb  []int32 // furthest x per diagonal, forward and reverse
	maxD    int     // the most steps one middle-snake search takes
	work    int     // budget left (see maxDiffWork)
	edits   int
	changes []change
}

func newDiffer(a, b lines, maxEdits int) *differ {
	maxD := maxEdits/2 + 1
	if n := (a.n() + b.n() + 1) / 2; n < maxD {
		maxD = n
	}
	return &differ{
		a: a, b: b, maxD: maxD, work: maxDiffWork,
		vf: make([]int32, 2*maxD+2), vb: make([]int32, 2*maxD+2),
	}
}

// eq compares a's line i with b's line j, charging the work budget.
func (d *differ) eq(i, j int) bool {
	x, y := d.a.line(i), d.b.line(j)
	d.work -= diffStepCost + min(len(x), len(y))
	return x == y
}

// emit records a change, merging it with the previous one if they touch.
func (d *differ) emit(c change) {
	d.edits += c.del + c.ins
	if n := len(d.changes); n > 0 {
		p := &d.changes[n-1]
		if p.a+p.del == c.a && p.b+p.ins == c.b {
			p.del += c.del
			p.ins += c.ins
			return
		}
	}
	d.changes = append(d.changes, c)
}

// compare diffs a[a0:a1] with b[b0:b1], appending the changes in order.
// It reports false when the work budget or the edit limit runs out.
func (d *differ) compare(a0, a1, b0, b1 int) bool {
	for a0 < a1 && b0 < b1 && d.eq(a0, b0) {
		a0++
		b0++
	}
	for a1 > a0 && b1 > b0 && d.eq(a1-1, b1-1) {
		a1--
		b1--
	}
	if d.work < 0 || d.edits > maxDiffEdits {
		return false
	}
	if a0 == a1 || b0 == b1 {
		if a0 < a1 || b0 < b1 {
			d.emit(change{a0, b0, a1 - a0, b1 - b0})
		}
		return true
	}
	x, y, res := d.split(a0, a1, b0, b1)
	switch res {
	case splitNone:
		d.emit(change{a0, b0, a1 - a0, b1 - b0})
		return true
	case splitTooMany:
		return false
	}
	// Both halves must be smaller, or the recursion would not end; the
	// middle snake guarantees it, and this guards the guarantee.
	if (x == a0 && y == b0) || (x == a1 && y == b1) {
		return false
	}
	return d.compare(a0, x, b0, y) && d.compare(x, a1, y, b1)
}

// Results of split.
const (
	splitFound   = iota
	splitNone    // no line in common: delete all, insert all
	splitTooMany // the edit limit or the work budget ran out
)

// split finds a point (x, y) on an optimal edit path from (a0, b0) to
// (a1, b1) by running the forward and reverse searches until they meet
// (Myers 1986, section 4b; the bounds handling follows diff-match-patch's
// bisect). Both ends differ (compare trimmed them), so the point is
// strictly inside. If the searches do not meet within (n+m+1)/2 steps
// the ranges have no line in common (a shortest script has n+m edits,
// the only parity the searches then miss).
func (d *differ) split(a0, a1, b0, b1 int) (int, int, int) {
	n, m := a1-a0, b1-b0
	maxD := (n + m + 1) / 2
	none := splitNone
	if maxD > d.maxD {
		maxD, none = d.maxD, splitTooMany
	}
	off := maxD
	vlen := 2*maxD + 2
	vf, vb := d.vf[:vlen], d.vb[:vlen]
	for i := range vf {
		vf[i], vb[i] = -1, -1
	}
	vf[off+1], vb[off+1] = 0, 0
	delta := n - m
	front := delta%2 != 0
	var k1start, k1end, k2start, k2end int
	for D := 0; D < maxD; D++ {
		if d.work < 0 {
			return 0, 0, splitTooMany
		}
		for k1 := -D + k1start; k1 <= D-k1end; k1 += 2 {
			d.work -= diffStepCost
			i := off + k1
			var x1 int
			if k1 == -D || (k1 != D && vf[i-1] < vf[i+1]) {
				x1 = int(vf[i+1])
			} else {
				x1 = int(vf[i-1]) + 1
			}
			y1 := x1 - k1
			for x1 < n && y1 < m && d.eq(a0+x1, b0+y1) {
				x1++
				y1++
			}
			vf[i] = int32(x1)
			switch {
			case x1 > n: // ran off the right of the graph
				k1end += 2
			case y1 > m: // ran off the bottom
				k1start += 2
			case front:
				if j := off + delta - k1; j >= 0 && j < vlen && vb[j] != -1 && x1 >= n-int(vb[j]) {
					return a0 + x1, b0 + y1, splitFound
				}
			}
		}
		for k2 := -D + k2start; k2 <= D-k2end; k2 += 2 {
			d.work -= diffStepCost
			i := off + k2
			var x2 int
			if k2 == -D || (k2 != D && vb[i-1] < vb[i+1]) {
				x2 = int(vb[i+1])
			} else {
				x2 = int(vb[i-1]) + 1
			}
			y2 := x2 - k2
			for x2 < n && y2 < m && d.eq(a1-1-x2, b1-1-y2) {
				x2++
				y2++
			}
			vb[i] = int32(x2)
			switch {
			case x2 > n: // ran off the left
				k2end += 2
			case y2 > m: // ran off the top
				k2start += 2
			case !front:
				if j := off + delta - k2; j >= 0 && j < vlen && vf[j] != -1 {
					x1 := int(vf[j])
					y1 := off + x1 - j
					if x1 >= n-x2 {
						return a0 + x1, b0 + y1, splitFound
					}
				}
			}
		}
	}
	return 0, 0, none
}

// verify checks that every kept line is equal on both sides (the searches
// compare lines one by one, so this is a cheap guard of the bookkeeping).
func (d *differ) verify() bool {
	i, j := 0, 0
	check := func(ai, bi int) bool {
		if ai-i != bi-j {
			return false
		}
		for ; i < ai; i, j = i+1, j+1 {
			if d.a.line(i) != d.b.line(j) {
				return false
			}
		}
		return true
	}
	for _, c := range d.changes {
		if !check(c.a, c.b) {
			return false
		}
		i, j = c.a+c.del, c.b+c.ins
	}
	return check(d.a.n(), d.b.n())
}

// writeHunks writes the changes as hunks with ctx lines of context,
// joining changes less than 2*ctx+1 kept lines apart.
func writeHunks(sb *strings.Builder, changes []change, a, b lines, ctx int) {
	for i := 0; i < len(changes); {
		j := i
		for j+1 < len(changes) && changes[j+1].a-(changes[j].a+changes[j].del) <= 2*ctx {
			j++
		}
		first, last := changes[i], changes[j]
		prevEnd, nextStart := 0, a.n()
		if i > 0 {
			prevEnd = changes[i-1].a + changes[i-1].del
		}
		if j+1 < len(changes) {
			nextStart = changes[j+1].a
		}
		pre := min(ctx, first.a-prevEnd)
		post := min(ctx, nextStart-(last.a+last.del))
		aStart, bStart := first.a-pre, first.b-pre
		aEnd, bEnd := last.a+last.del+post, last.b+last.ins+post
		fmt.Fprintf(sb, "@@ -%s +%s @@\n", hunkRange(aStart, aEnd-aStart), hunkRange(bStart, bEnd-bStart))
		pos := aStart
		for k := i; k <= j; k++ {
			c := changes[k]
			for ; pos < c.a; pos++ {
				writeLine(sb, ' ', a.line(pos))
			}
			for n := 0; n < c.del; n++ {
				writeLine(sb, '-', a.line(c.a+n))
			}
			for n := 0; n < c.ins; n++ {
				writeLine(sb, '+', b.line(c.b+n))
			}
			pos = c.a + c.del
		}
		for ; pos < aEnd; pos++ {
			writeLine(sb, ' ', a.line(pos))
		}
		i = j + 1
	}
}

func writeLine(sb *strings.Builder, prefix byte, line string) {
	sb.WriteByte(prefix)
	sb.WriteString(line)
	if !strings.HasSuffix(line, "\n") {
		sb.WriteString("\n\\ No newline at end of file\n")
	}
}

// hunkRange formats "start,len" (1-based); an empty range names the line
// before it, as diff(1) does.
func hunkRange(start, n int) string {
	switch n {
	case 0:
		return fmt.Sprintf("%d,0", start)
	case 1:
		return fmt.Sprintf("%d", start+1)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}
