package network

import (
	"errors"
	"testing"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
)

// TestInspect reads a live sandbox's rules from its record, as `ironclaw
// net show` does from another process, and checks that a tampered rule in
// either namespace fails verification.
func TestInspect(t *testing.T) {
	e := newEnv(t)
	n := e.setup(t, "inspect", "203.0.113.10:8080/tcp", "allowed.test")
	st, err := Inspect(t.Context(), n.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Networked || st.Report.Err != nil || st.SandboxAddr != n.Addr() || len(st.Report.Sandbox) != 3 || len(st.Report.Maps) != 5 {
		t.Fatalf("inspect of a good sandbox: %+v", st)
	}
	// Tamper: drop the last rule of the host's fwd-in chain (its default deny).
	hc, _ := nftables.New()
	tbl := &nftables.Table{Name: firewall.TableName, Family: nftables.TableFamilyINet}
	rules, err := hc.GetRules(tbl, &nftables.Chain{Name: n.tgt.Name + "-fwd-in", Table: tbl})
	if err != nil || len(rules) == 0 {
		t.Fatal(err)
	}
	if err := hc.DelRule(rules[len(rules)-1]); err != nil {
		t.Fatal(err)
	}
	if err := hc.Flush(); err != nil {
		t.Fatal(err)
	}
	st, err = Inspect(t.Context(), n.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(st.Report.Err, firewall.ErrVerify) {
		t.Fatalf("a deleted host rule must fail verification, got %v", st.Report.Err)
	}
	// Loopback-only or unknown sandbox.
	st, err = Inspect(t.Context(), t.TempDir())
	if err != nil || st.Networked {
		t.Fatalf("inspect without record: %+v %v", st, err)
	}
}
