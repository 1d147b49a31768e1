package cli

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

func TestVersionFlag(t *testing.T) {
	var out bytes.Buffer
	cmd := newRootCmd("ironclaw", &Globals{}, LeanCommands())
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--version"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.HasPrefix(got, "ironclaw version ") || !strings.Contains(got, runtime.Version()) {
		t.Errorf("ironclaw --version printed %q; want the version and %s", got, runtime.Version())
	}
}
