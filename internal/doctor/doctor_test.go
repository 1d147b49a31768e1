package doctor

import (
	"context"
	"testing"
)

func TestRunReportsEveryBuiltinAndExtraProbes(t *testing.T) {
	extra := func(context.Context) []Check { return []Check{{Name: "extra", Status: OK}} }
	checks := Run(context.Background(), extra)
	names := map[string]Check{}
	for _, c := range checks {
		names[c.Name] = c
		if c.Status != OK && c.Fix == "" {
			t.Errorf("%s is %s without a fix: %s", c.Name, c.Status, c.Detail)
		}
	}
	for _, n := range []string{"user namespaces", "cgroups", "landlock", "seccomp", "extra"} {
		if _, ok := names[n]; !ok {
			t.Errorf("no %q check", n)
		}
	}
}
