package network

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

// listWithNft runs the system's nft (`nft list ruleset`, `nft -j list
// ruleset`, `nft list table inet ironclaw`) in the test's host namespace
// and fails the test unless each exits 0 and shows the generation sets
// and the rules that look them up, and every name in want.
func listWithNft(t *testing.T, phase string, want ...string) {
	t.Helper()
	nft := testutil.RequireCommand(t, "nft")
	for _, args := range [][]string{{"list", "ruleset"}, {"-j", "list", "ruleset"}, {"list", "table", "inet", firewall.TableName}} {
		out, err := exec.Command(nft, args...).CombinedOutput()
		cmd := "nft " + strings.Join(args, " ")
		if err != nil {
			t.Fatalf("%s: %s: %v\n%s", phase, cmd, err, out)
		}
		for _, w := range append([]string{firewall.SetGenerationA, firewall.SetGenerationB, firewall.SetAllowPublicPortsA, firewall.SetAllowPublicPortsB}, want...) {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s: %s does not show %q:\n%s", phase, cmd, w, out)
			}
		}
		if args[0] == "-j" {
			var doc struct {
				Nftables []json.RawMessage `json:"nftables"`
			}
			if err := json.Unmarshal(out, &doc); err != nil || len(doc.Nftables) == 0 {
				t.Errorf("%s: %s: not an nftables JSON document: %v", phase, cmd, err)
			}
		} else if !strings.Contains(string(out), "iifname @"+firewall.SetGenerationB+" iifname . ip daddr @"+firewall.SetAllowPublicB+" accept") {
			t.Errorf("%s: %s does not show the forward chain's allow rules:\n%s", phase, cmd, out)
		}
	}
}

// TestNftListsRuleset is the regression test for `nft list ruleset`
// aborting on the host (nft 1.0.6: "netlink_parse_concat_expr: Assertion
// 'consumed > 0' failed") while IronClaw runs: with sandboxes whose
// policies have rules in every tier (the sandbox pool, internal ranges,
// public; with and without ports; with a domain), and after a live policy
// update (both generations then hold elements), the system's nft lists the
// host's ruleset, as text and as JSON. Real traffic shows each state is
// the one enforced.
func TestNftListsRuleset(t *testing.T) {
	e := newEnv(t)
	a := e.setup(t, "nft-a",
		"10.200.250.0/24:8080/tcp",                       // inside the pool: first tier
		peerPriv.String()+":8080/tcp", peerMeta.String(), // internal ranges
		peerA.String()+":8080/tcp", peerB.String(), // public
		"allowed.test")
	b := e.setup(t, "nft-b", "0.0.0.0/0", "10.0.0.0/8:8080/tcp")
	listWithNft(t, "created", a.rec.Names.HostIf, b.rec.Names.HostIf)
	pa := &testutil.Probe{NS: a.ns}
	runProbes(t, "created", pa, []probe{
		tcp("internal with port", peerPriv, 8080, true),
		tcp("internal, other port", peerPriv, 9090, false),
		tcp("metadata, any port", peerMeta, 9090, true),
		tcp("public with port", peerA, 8080, true),
		tcp("public, other port", peerA, 9090, false),
		tcp("public, any port", peerB, 9090, true),
	})

	// b stays in generation a; a's update writes generation b.
	p, _ := firewall.ParsePolicy([]string{peerA.String() + ":9090/tcp", peerMeta.String() + ":8080/tcp", "10.200.251.0/24"})
	if err := a.Update(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	if g := firewall.GenerationOf(a.live); g != 1 {
		t.Fatalf("a's update made generation %d live, want b (1)", g)
	}
	listWithNft(t, "updated", a.rec.Names.HostIf, b.rec.Names.HostIf)
	runProbes(t, "updated", pa, []probe{
		tcp("internal, no longer allowed", peerPriv, 8080, false),
		tcp("metadata, now port 8080 only", peerMeta, 9090, false),
		tcp("metadata with port", peerMeta, 8080, true),
		tcp("public, now port 9090 only", peerA, 8080, false),
		tcp("public with port", peerA, 9090, true),
		tcp("public, no longer allowed", peerB, 9090, false),
	})
	a.prunes.Wait()
	listWithNft(t, "pruned", a.rec.Names.HostIf)
	if rep, err := a.Verify(t.Context()); err != nil || rep.Err != nil {
		t.Fatalf("verify after the prune: %v %v", err, rep.Err)
	}
}
