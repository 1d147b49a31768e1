package daemoncli

import (
	"testing"

	"github.com/ironclaw/ironclaw/internal/cli"
)

// TestForwardedCommandsMatch: every command of ironclawd that the lean
// ironclaw does not run itself is forwarded by it with the same short
// text, and every forwarded command exists in ironclawd.
func TestForwardedCommandsMatch(t *testing.T) {
	g := &cli.Globals{}
	full := map[string]string{}
	for _, c := range Commands() {
		cmd := c(g)
		full[cmd.Name()] = cmd.Short
	}
	lean := map[string]bool{}
	for _, c := range cli.LeanCommands() {
		cmd := c(g)
		lean[cmd.Name()] = true
		short, ok := full[cmd.Name()]
		if !ok {
			t.Errorf("ironclaw has %s, ironclawd does not", cmd.Name())
			continue
		}
		switch cmd.Annotations[cli.ForwardAnnotation] {
		case cli.ForwardAlways:
			if cmd.Short != short {
				t.Errorf("ironclaw %s says %q; ironclawd's says %q", cmd.Name(), cmd.Short, short)
			}
			if !cmd.DisableFlagParsing {
				t.Errorf("ironclaw %s parses flags: its arguments go to ironclawd as they are", cmd.Name())
			}
		case cli.ForwardIfFound, "":
		default:
			t.Errorf("ironclaw %s: unknown %s %q", cmd.Name(), cli.ForwardAnnotation, cmd.Annotations[cli.ForwardAnnotation])
		}
	}
	for name := range full {
		if !lean[name] {
			t.Errorf("ironclawd has %s, ironclaw neither runs nor forwards it", name)
		}
	}
	for _, name := range []string{"serve", "mcp", "approvals", "audit", "gc", "run", "sandbox"} {
		if _, ok := full[name]; !ok {
			t.Errorf("ironclawd lacks %s", name)
		}
	}
}
