package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestRetryConsistentBound drives retryConsistent with a scripted
// generation: a read counts only when the generation did not move during
// it, and a generation that always moves fails after exactly the bound.
func TestRetryConsistentBound(t *testing.T) {
	errMismatch := errors.New("mismatch")
	for _, c := range []struct {
		name  string
		moves int   // reads during which the generation moves
		rerr  error // what every read returns
		reads int   // reads expected
		want  error
	}{
		{"quiet", 0, nil, 1, nil},
		{"quiet mismatch", 0, errMismatch, 1, errMismatch},
		{"moves twice", 2, nil, 3, nil},
		// A mismatch seen while the generation moved is not believed:
		// the read is done again, and the quiet one's result counts.
		{"mismatch while moving", 3, errMismatch, 4, errMismatch},
		{"never quiet", 1000, nil, 5, ErrRulesetChanging},
		{"quiet on the last", 4, nil, 5, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			gen, reads := uint32(7), 0
			genFn := func() (uint32, error) { return gen, nil }
			read := func() error {
				reads++
				if reads <= c.moves {
					gen++ // a commit during this read
				}
				return c.rerr
			}
			err := retryConsistent(genFn, 5, read)
			if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if reads != c.reads {
				t.Fatalf("%d reads, want %d", reads, c.reads)
			}
		})
	}
	// A generation that cannot be read fails the read, whatever it found.
	boom := errors.New("boom")
	calls := 0
	err := retryConsistent(func() (uint32, error) {
		calls++
		if calls == 2 {
			return 0, boom
		}
		return 1, nil
	}, 5, func() error { return nil })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the generation's error", err)
	}
}

// TestGenChain: dumps checked one after another read the generation once
// between two of them, and a dump during which it moved is done again on
// its own.
func TestGenChain(t *testing.T) {
	gen, readings := uint32(1), 0
	ch := &genChain{gen: func() (uint32, error) { readings++; return gen, nil }}
	dumps := map[string]int{}
	dump := func(name string, moves bool) {
		t.Helper()
		if err := ch.do(func() error {
			dumps[name]++
			if moves && dumps[name] == 1 {
				gen++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	dump("a", false)
	dump("b", true)
	dump("c", false)
	if want := map[string]int{"a": 1, "b": 2, "c": 1}; !reflect.DeepEqual(dumps, want) {
		t.Fatalf("dumps %v, want %v", dumps, want)
	}
	// a: before and after; b: after, then before and after its retry;
	// c: after.
	if readings != 6 {
		t.Fatalf("%d generation readings, want 6", readings)
	}
	var nilChain *genChain
	if err := nilChain.do(func() error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// TestConsistentReadUnderCommits reads the host table's links while
// another goroutine commits continuously (links coming and going, as pool
// maintainers and other sandboxes do), in a throwaway namespace. A plain
// dump (hostLinks) sees the generation move under it, and may return a
// partial list (the kernel resumes a dump by position, so elements
// deleted ahead of the position make it skip others); HostLinks reads
// again until one generation held still, and always returns every link
// that stays.
func TestConsistentReadUnderCommits(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	c := connIn(t, ns)
	if err := EnsureHostBase(c, nil); err != nil {
		t.Fatal(err)
	}
	part := func(name string, i int) HostPart {
		tg := testTarget(t, "203.0.113.0/24:443/tcp", "198.18.0.0/15:1000-2000/udp", "192.0.2.7")
		tg.HostIf = name
		tg.SandboxAddr = netip.AddrFrom4([4]byte{10, 200, byte(i >> 6), byte(i&63)*4 + 2})
		tg.HostAddr = tg.SandboxAddr.Prev()
		p, err := BuildHost(tg, 1)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Links that stay, and links the committer adds and removes.
	var stay []string
	for i := range 200 {
		name := fmt.Sprintf("icstay%03d", i)
		p := part(name, i)
		if err := ApplyHostChanges(c, &HostPart{Iface: name}, &p); err != nil {
			t.Fatal(err)
		}
		stay = append(stay, name)
	}
	var churn []HostPart
	for i := range 40 {
		churn = append(churn, part(fmt.Sprintf("icchurn%02d", i), 1000+i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var commitErr error
	commits := 0
	wg.Add(1)
	committer := func() {
		defer wg.Done()
		cc := connIn(t, ns)
		for on := true; ; on = !on {
			for i := range churn {
				select {
				case <-stop:
					return
				default:
				}
				empty := HostPart{Iface: churn[i].Iface}
				prev, next := &empty, &churn[i]
				if !on {
					prev, next = next, prev
				}
				if err := ApplyHostChanges(cc, prev, next); err != nil {
					commitErr = err
					return
				}
				commits++
				// Gaps of a few milliseconds (well over a hundred
				// commits a second, busier than a busy host): a read of
				// the table finds a quiet moment within a few attempts.
				// Much shorter gaps than a set's dump takes on a loaded
				// machine leave it none, and the read fails closed
				// (ErrRulesetChanging), which is not what this tests.
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	g, err := NewGenReader(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	missing := func(got []string) int {
		n := 0
		for _, name := range stay {
			if !slices.Contains(got, name) {
				n++
			}
		}
		return n
	}
	// What every set holds for the links that stay, read while nothing
	// commits.
	stayCount := func(c *nftables.Conn, g *GenReader) ([]int, error) {
		var out []int
		ch := newGenChain(g)
		for _, d := range sandboxSets() {
			els, err := getSetElements(c, ch, d.nft(table()))
			if err != nil {
				return nil, err
			}
			n := 0
			for _, el := range els {
				if strings.HasPrefix(string(el.Key), "icstay") {
					n++
				}
			}
			out = append(out, n)
		}
		return out, nil
	}
	want, err := stayCount(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	go committer()
	// Plain dumps, set by set: the generation moves under them, and
	// some come back with elements missing or doubled.
	moved, partial := 0, 0
	t0 := time.Now()
	for range 50 {
		before, err := g.Generation()
		if err != nil {
			t.Fatal(err)
		}
		got, err := stayCount(c, nil)
		after, gerr := g.Generation()
		if gerr != nil {
			t.Fatal(gerr)
		}
		if before != after {
			moved++
		}
		if err == nil && !slices.Equal(got, want) {
			partial++
		}
	}
	plain := time.Since(t0) / 50
	// Checked dumps: always every element, once.
	t0 = time.Now()
	for i := range 50 {
		got, err := stayCount(c, g)
		if err != nil {
			t.Fatalf("consistent read %d: %v", i, err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("consistent read %d: elements of the links that stay per set %v, want %v", i, got, want)
		}
	}
	checked := time.Since(t0) / 50
	for i := range 5 {
		got, err := HostLinks(c)
		if err != nil {
			t.Fatalf("HostLinks %d: %v", i, err)
		}
		if n := missing(got); n > 0 {
			t.Fatalf("HostLinks %d misses %d of the links that stay", i, n)
		}
	}
	close(stop)
	wg.Wait()
	if commitErr != nil {
		t.Fatal(commitErr)
	}
	t.Logf("%d commits; plain reads (%v each): the generation moved during %d of 50, %d had elements missing or doubled; checked reads %v each",
		commits, plain, moved, partial, checked)
	if moved == 0 {
		t.Fatal("the generation never moved during a plain read: the committer did not race the reads, so this test proves nothing")
	}
	// The generation the reader sees is the namespace's: a commit moves it.
	before, err := g.Generation()
	if err != nil {
		t.Fatal(err)
	}
	cc := connIn(t, ns)
	cc.AddTable(&nftables.Table{Name: "icgenprobe", Family: nftables.TableFamilyINet})
	if err := cc.Flush(); err != nil {
		t.Fatal(err)
	}
	if after, err := g.Generation(); err != nil || after == before {
		t.Fatalf("generation %d after a commit, %d before (%v)", after, before, err)
	}
}
