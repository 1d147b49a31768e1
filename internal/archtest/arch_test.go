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
	{module + "/cmd/ironclaw-agent", []string{module + "/internal/jail", module + "/internal/state", module + "/internal/cgroup", module + "/internal/firewall", module + "/internal/netns", module + "/internal/store", module + "/internal/api"},
		"the guest agent imports nothing host-side"},
}

func TestImportRules(t *testing.T) {
	for _, p := range packages(t) {
		for _, r := range rules {
			if !strings.HasPrefix(p.ImportPath, r.pkg) {
				continue
			}
			for _, imp := range p.Imports {
				for _, f := range r.forbid {
					if strings.HasPrefix(imp, f) {
						t.Errorf("%s imports %s: %s", p.ImportPath, imp, r.because)
					}
				}
			}
		}
	}
}
