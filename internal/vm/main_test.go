package vm

import (
	"os"
	"testing"

	"github.com/ironclaw/ironclaw/internal/seccomp"
)

// TestMain runs the VMM launcher when the backend re-executes this test
// binary as it (the default launcher is this executable).
func TestMain(m *testing.M) {
	if len(os.Args) > 0 && os.Args[0] == seccomp.LauncherArg0 {
		os.Exit(seccomp.LauncherMain(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}
