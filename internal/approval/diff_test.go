package approval

import (
	"fmt"
	"math/rand"
	"runtime"
	"strings"
	"testing"
)

// maxUnifiedAlloc bounds the memory one Unified call allocates in total
// (garbage included), for inputs of up to maxCardFile bytes each.
const maxUnifiedAlloc = 24 << 20

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	f()
	runtime.ReadMemStats(&m1)
	return m1.TotalAlloc - m0.TotalAlloc
}

func distinctLines(prefix string, n int) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sb, "%s%d\n", prefix, i)
	}
	return sb.String()
}

// TestUnifiedMemoryIsBounded feeds Unified the inputs that cost it most:
// every line different (the old algorithm kept a copy of its whole
// frontier for each of up to 4001 steps: 250 MiB), the most lines two
// 1 MiB inputs can hold (the old one also held a 16-byte string header
// per line: 187 MiB), the longest lines, and a diff at the edit cap. The
// new one keeps 4 bytes per line and a frontier of 2x(maxDiffEdits/2+2)
// entries; the rest is its output.
func TestUnifiedMemoryIsBounded(t *testing.T) {
	nl := strings.Repeat("\n", maxCardFile-4)
	for _, tc := range []struct{ name, a, b, want string }{
		{"every line differs, past the edit cap", distinctLines("a", 5000), distinctLines("b", 5000), "too many changes"},
		{"every line differs, at the edit cap", distinctLines("a", 2000), distinctLines("b", 2000), "@@ -1,2000 +1,2000 @@"},
		{"a million lines, changed at both ends", "x\n" + nl + "y\n", "z\n" + nl + "w\n", "+w\n"},
		{"one 1 MiB line each", strings.Repeat("a", maxCardFile), strings.Repeat("b", maxCardFile), "\\ No newline"},
		{"over the input limit", nl + nl, nl, "too large to show"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d string
			got := allocated(func() { d = Unified("f", tc.a, tc.b) })
			t.Logf("%d KiB allocated", got>>10)
			if got > maxUnifiedAlloc {
				t.Errorf("Unified allocated %d MiB, over the %d MiB bound", got>>20, maxUnifiedAlloc>>20)
			}
			if !strings.Contains(d, tc.want) {
				t.Errorf("diff lacks %q:\n%.300s", tc.want, d)
			}
		})
	}
}

// lineSlice cuts s into lines, newlines included.
func lineSlice(s string) []string {
	l := splitLines(s)
	out := make([]string, l.n())
	for i := range out {
		out[i] = l.line(i)
	}
	return out
}

// editDistance is the reference: the number of deleted plus inserted lines
// of a shortest edit script, by the plain O(ND) greedy algorithm.
func editDistance(a, b []string) int {
	n, m := len(a), len(b)
	off := n + m + 1
	v := make([]int, 2*off+1)
	for d := 0; d <= n+m; d++ {
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
				return d
			}
		}
	}
	return n + m
}

// TestUnifiedIsMinimal checks the linear-space search against the plain
// one: the diff is a shortest edit script, and it applies.
func TestUnifiedIsMinimal(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 3000; i++ {
		alphabet := 2 + rng.Intn(5)
		gen := func() string {
			var sb strings.Builder
			for n := rng.Intn(60); n > 0; n-- {
				fmt.Fprintf(&sb, "%c\n", 'a'+rng.Intn(alphabet))
			}
			return sb.String()
		}
		a, b := gen(), gen()
		d := Unified("f", a, b)
		if a == b {
			continue
		}
		changed := 0
		for _, l := range strings.Split(d, "\n")[2:] {
			if strings.HasPrefix(l, "+") || strings.HasPrefix(l, "-") {
				changed++
			}
		}
		if want := editDistance(lineSlice(a), lineSlice(b)); changed != want {
			t.Fatalf("%q -> %q: %d changed lines, the shortest script has %d:\n%s", a, b, changed, want, d)
		}
		if got := applyUnified(t, a, d); got != b {
			t.Fatalf("applying the diff gave %q, want %q", got, b)
		}
	}
}

// FuzzUnified: for any two texts the diff applies, and for small ones it
// is a shortest edit script.
func FuzzUnified(f *testing.F) {
	f.Add("a\nb\nc\n", "a\nc\nd")
	f.Add("", "x\n")
	f.Add("x", "")
	f.Add("a\na\na\nb\n", "b\na\na\na\n")
	f.Fuzz(func(t *testing.T, a, b string) {
		d := Unified("f", a, b)
		if a == b {
			if d != "" {
				t.Fatalf("equal inputs gave a diff")
			}
			return
		}
		if strings.Contains(d, "\n@@ too") {
			t.Fatalf("small inputs gave a summary:\n%s", d)
		}
		if got := applyUnified(t, a, d); got != b {
			t.Fatalf("applying the diff to %q gave %q, want %q:\n%s", a, got, b, d)
		}
		la, lb := lineSlice(a), lineSlice(b)
		if len(la)+len(lb) > 400 {
			return
		}
		changed := 0
		for _, l := range strings.SplitAfter(d, "\n")[2:] {
			if strings.HasPrefix(l, "+") || strings.HasPrefix(l, "-") {
				changed++
			}
		}
		if want := editDistance(la, lb); changed != want {
			t.Fatalf("%d changed lines, the shortest script has %d:\n%s", changed, want, d)
		}
	})
}
