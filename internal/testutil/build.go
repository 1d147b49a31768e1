package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildCommands builds the static IronClaw commands names (ironclaw,
// ironclawd, ironclaw-agent, ...) into dir, as they are installed: ironclaw
// finds ironclaw-agent next to itself and uses it as its sandboxes' init,
// and ironclawd, which its daemon-side commands (serve, mcp, ...) run. The
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

// BuildSuite builds ironclaw, ironclawd and ironclaw-agent into a fresh
// directory named after prefix, searchable by the sandboxes' unprivileged
// uids, for an end-to-end test package whose tests share them. The directory
// outlives the tests (the package's leak check reads the state root in
// it). It returns the ironclaw binary (ironclawd is next to it) and the
// state root to use.
func BuildSuite(prefix string) (bin, root string, err error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", "", err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return "", "", err
	}
	if err := BuildCommands(dir, "ironclaw", "ironclawd", "ironclaw-agent"); err != nil {
		return "", "", err
	}
	return filepath.Join(dir, "ironclaw"), filepath.Join(dir, "state"), nil
}
