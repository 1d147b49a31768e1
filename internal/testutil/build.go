package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildCommands builds the static IronClaw commands names (ironclaw,
// ironclaw-agent, ...) into dir, as they are installed: ironclaw finds
// ironclaw-agent next to itself and uses it as its sandboxes' init. The
// build is -trimpath, as vmtest builds the agent, so that the default
// micro-VM image, keyed by the agent's content, is shared between suites.
func BuildCommands(dir string, names ...string) error {
	for _, name := range names {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, name), "github.com/ironclaw/ironclaw/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return nil
}
