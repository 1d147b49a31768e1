package seccomp

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	st, err := parseStatus([]byte("Name:\tx\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\n"))
	if err != nil || st != (Status{Seccomp: 2, SeccompFilters: 3, NoNewPrivs: true, CapEff: 0, CapBnd: 0x1ffffffffff}) {
		t.Fatalf("%+v, %v", st, err)
	}
	if err := st.RequireFiltered(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"Seccomp:\t2\n", "Seccomp:\tx\nNoNewPrivs:\t1\nCapEff:\t0\nCapBnd:\t0\n"} {
		if _, err := parseStatus([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if err := (Status{Seccomp: 2}).RequireFiltered(); !errors.Is(err, ErrNotConfined) {
		t.Errorf("no NNP: %v", err)
	}
	if err := (Status{Seccomp: 0, NoNewPrivs: true}).RequireFiltered(); !errors.Is(err, ErrNotConfined) {
		t.Errorf("no filter: %v", err)
	}
	self, err := ReadStatus(os.Getpid(), 0)
	if err != nil || self.Seccomp != 0 {
		t.Fatalf("test process: %+v, %v (the tests must run unfiltered)", self, err)
	}
}

// TestOnlyLaunchingThreadFiltered: in the jail pattern, the workload and
// the launching thread carry the filter; the init's other threads do not.
func TestOnlyLaunchingThreadFiltered(t *testing.T) {
	res := runJailed(t, mustCompile(t, ProfileDefault, Enforce),
		[]string{"/bin/sh", "-c", "grep -E '^(Seccomp|NoNewPrivs|Seccomp_filters):' /proc/self/status"}, threadsEnv+"=1")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	st, err := parseStatus([]byte(res.stdout + "CapEff:\t0\nCapBnd:\t0\n"))
	if err != nil || st.RequireFiltered() != nil || st.SeccompFilters != 1 {
		t.Fatalf("workload status %q: %+v, %v", res.stdout, st, err)
	}
	lines := regexp.MustCompile(`thread \d+ self=(true|false) seccomp=(\d) nnp=(true|false)`).FindAllStringSubmatch(res.stderr, -1)
	if len(lines) < 2 {
		t.Fatalf("helper reported %d threads: %s", len(lines), res.stderr)
	}
	for _, l := range lines {
		want := "0"
		if l[1] == "true" {
			want = "2"
		}
		if l[2] != want {
			t.Errorf("%s: want seccomp=%s", strings.TrimSpace(l[0]), want)
		}
	}
}
