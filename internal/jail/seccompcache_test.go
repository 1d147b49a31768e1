package jail

import (
	"errors"
	"slices"
	"testing"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// TestSeccompCache checks that a built-in profile is compiled once and
// handed out as independent copies equal to a fresh compile, and that the
// agent's refusal of audit mode is not cached away.
func TestSeccompCache(t *testing.T) {
	j := &Jail{}
	for _, sc := range []sandbox.Seccomp{{}, {Profile: seccomp.ProfileStrict}, {Profile: seccomp.ProfileUnconfined}} {
		fresh, err := compileSeccomp(sc, true)
		if err != nil {
			t.Fatal(err)
		}
		a, err := j.compileSeccomp(sc, true)
		if err != nil {
			t.Fatal(err)
		}
		a.Instructions[0].K ^= 1 // a caller's change must not reach the cache
		b, err := j.compileSeccomp(sc, true)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(b.Instructions, fresh.Instructions) || b.Profile != fresh.Profile || b.Mode != fresh.Mode ||
			b.Unconfined != fresh.Unconfined {
			t.Errorf("profile %q: cached program differs from a fresh compile", sc.Profile)
		}
	}
	if len(j.progs) != 3 {
		t.Errorf("cache holds %d programs, want 3", len(j.progs))
	}
	for range 2 {
		if _, err := j.compileSeccomp(sandbox.Seccomp{Audit: true}, true); !errors.Is(err, sandbox.ErrUnsupported) {
			t.Errorf("audit mode for an agent: got %v, want ErrUnsupported", err)
		}
	}
	p, err := j.compileSeccomp(sandbox.Seccomp{Audit: true}, false)
	if err != nil || p.Mode != seccomp.Audit {
		t.Errorf("audit mode for run: got %v, %v", p, err)
	}
}
