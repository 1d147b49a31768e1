package network

import (
	"errors"
	"slices"
	"strings"
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
	if !st.Networked || st.Report.Err != nil || st.SandboxAddr != n.Addr() || len(st.Report.Sandbox) != 3 || len(st.Report.Host) != 4 || len(st.Report.Elements) == 0 {
		t.Fatalf("inspect of a good sandbox: %+v", st)
	}
	for _, e := range st.Report.Elements {
		if !strings.Contains(e.String(), `"`+n.tgt.HostIf+`"`) {
			t.Fatalf("element %s is not the sandbox's", e)
		}
	}
	hc, _ := nftables.New()
	// Tamper: an extra element (a wider allow rule) for the sandbox's
	// link; then a missing one (its anti-spoofing source).
	wide := *n.tgt
	wide.Policy, _ = firewall.ParsePolicy([]string{"0.0.0.0/0"})
	widePart, _ := firewall.BuildHost(&wide, n.live)
	cur, _ := firewall.ReadHostPart(hc, n.tgt.HostIf)
	withExtra := cur
	withExtra.Elements = slices.Clone(cur.Elements)
	pub := firewall.SetAllowPublicA
	if firewall.GenerationOf(n.live) == 1 {
		pub = firewall.SetAllowPublicB
	}
	for _, e := range widePart.Elements {
		if e.Set == pub {
			withExtra.Elements = append(withExtra.Elements, e)
		}
	}
	if err := firewall.ApplyHostChanges(hc, &cur, &withExtra); err != nil {
		t.Fatal(err)
	}
	st, err = Inspect(t.Context(), n.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(st.Report.Err, firewall.ErrVerify) || !strings.Contains(st.Report.Err.Error(), "unexpected allow_public") {
		t.Fatalf("an extra host element must fail verification, got %v", st.Report.Err)
	}
	var noSource firewall.HostPart
	noSource.Iface = cur.Iface
	for _, e := range cur.Elements {
		if e.Set != firewall.SetSources {
			noSource.Elements = append(noSource.Elements, e)
		}
	}
	if err := firewall.ApplyHostChanges(hc, &withExtra, &noSource); err != nil {
		t.Fatal(err)
	}
	st, err = Inspect(t.Context(), n.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(st.Report.Err, firewall.ErrVerify) || !strings.Contains(st.Report.Err.Error(), "missing sources") {
		t.Fatalf("a missing host element must fail verification, got %v", st.Report.Err)
	}
	// Tamper with the shared base: drop the input chain's last rule.
	tbl := &nftables.Table{Name: firewall.TableName, Family: nftables.TableFamilyINet}
	rules, err := hc.GetRules(tbl, &nftables.Chain{Name: "input", Table: tbl})
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
	if !errors.Is(st.Report.Err, firewall.ErrVerify) || !strings.Contains(st.Report.Err.Error(), "chain input") {
		t.Fatalf("a deleted host rule must fail verification, got %v", st.Report.Err)
	}
	// Put the base back for the other tests (Close removes this
	// sandbox's elements, whatever the kernel holds of them).
	if err := firewall.EnsureHostBase(hc, nil); err != nil {
		t.Fatal(err)
	}
	// Loopback-only or unknown sandbox.
	st, err = Inspect(t.Context(), t.TempDir())
	if err != nil || st.Networked {
		t.Fatalf("inspect without record: %+v %v", st, err)
	}
}
