package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Name       string
	GoFiles    []string
}

const module = "github.com/ironclaw/ironclaw"

func packages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range packages(t) {
		if len(p.GoFiles) == 0 {
			continue
		}
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", p.ImportPath)
		}
	}
}

// rules lists, per package prefix, imports it must not have.
var rules = []struct {
	pkg     string
	forbid  []string
	because string
}{
	{module + "/cmd/", []string{"golang.org/x/sys/unix", "github.com/vishvananda/netlink", "github.com/google/nftables", "github.com/landlock-lsm/"},
		"cmd only parses flags and wires packages; kernel work lives in internal/"},
	{module + "/internal/sandbox", []string{module + "/internal/jail", module + "/internal/vm", module + "/internal/netns", module + "/internal/firewall", module + "/internal/seccomp", module + "/internal/cgroup"},
		"sandbox holds the shared Spec and never imports its backends"},
	{module + "/cmd/ironclaw-agent", hostSide, "the guest agent imports nothing host-side"},
	{module + "/internal/agent", hostSide, "the guest agent imports nothing host-side"},
	{module + "/internal/jail/initproc", hostSide, "a sandbox's init runs inside the sandbox and imports nothing host-side"},
	{module + "/internal/jail/spawner", []string{module + "/"},
		"the spawner is a mode of the init binary (the guest agent): the standard library and x/sys only"},
}

// hostSide are the packages that only make sense on the host. The jail's
// sandbox side (internal/jail/initproc) is not among them: it is what the
// agent binary runs as a jail's init.
var hostSide = []string{
	module + "/internal/jail", module + "/internal/state", module + "/internal/cgroup", module + "/internal/firewall",
	module + "/internal/netns", module + "/internal/network", module + "/internal/egress", module + "/internal/store",
	module + "/internal/api", module + "/internal/apiserver", module + "/internal/daemon", module + "/internal/mcpgw", module + "/internal/vm",
	module + "/internal/datadir",
}

// forbidden reports whether imp is the package f or one below it. The
// sandbox side of the jail, and the daemon's spawner (another mode of the
// init binary, itself held to the standard library and x/sys), are
// allowed where the jail itself is not.
func forbidden(imp, f string) bool {
	if (imp == module+"/internal/jail/initproc" || imp == module+"/internal/jail/spawner") && f == module+"/internal/jail" {
		return false
	}
	return imp == f || strings.HasPrefix(imp, f+"/")
}

func TestImportRules(t *testing.T) {
	for _, p := range packages(t) {
		for _, r := range rules {
			if !strings.HasPrefix(p.ImportPath, r.pkg) {
				continue
			}
			for _, imp := range p.Imports {
				for _, f := range r.forbid {
					if forbidden(imp, f) || strings.HasSuffix(f, "/") && strings.HasPrefix(imp, f) {
						t.Errorf("%s imports %s: %s", p.ImportPath, imp, r.because)
					}
				}
			}
		}
	}
}

// leanForbidden are the packages the lean ironclaw binary must not link,
// directly or not: the daemon's dependencies, whose initialisation every
// `ironclaw run` would pay before main (see internal/cli).
var leanForbidden = []string{
	"github.com/prometheus/client_golang/prometheus",
	"modernc.org/sqlite",
	"github.com/modelcontextprotocol/go-sdk/mcp",
	module + "/internal/daemon",
	module + "/internal/store",
	module + "/internal/mcpgw",
	module + "/internal/apiserver",
	module + "/internal/approval",
}

// deps returns the packages the command pkg links (go list -deps).
func deps(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	m := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		m[l] = true
	}
	return m
}

// TestLeanIronclawLinksNoDaemon: cmd/ironclaw links none of the daemon's
// packages, while cmd/ironclawd, the complete binary, links them all (so
// that the list names packages that exist).
func TestLeanIronclawLinksNoDaemon(t *testing.T) {
	lean, full := deps(t, module+"/cmd/ironclaw"), deps(t, module+"/cmd/ironclawd")
	for _, p := range leanForbidden {
		if lean[p] {
			t.Errorf("cmd/ironclaw links %s: daemon-side code belongs in internal/cli/daemoncli, reached through ironclawd", p)
		}
		if !full[p] {
			t.Errorf("cmd/ironclawd does not link %s: the complete binary has every command", p)
		}
	}
}
