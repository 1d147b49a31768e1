package network

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/testutil"
	"github.com/miekg/dns"
)

// failOnce returns a Config.fail hook that fails the first time the point
// called name is reached.
func failOnce(name string) func(string) error {
	fired := false
	return func(n string) error {
		if n != name || fired {
			return nil
		}
		fired = true
		return errInjected
	}
}

// TestUpdateFailureKeepsOldPolicy makes Update fail after both new
// rulesets were applied and checks that the old policy is still in force
// everywhere: kernel rulesets, egress proxy and DNS stub, record, traffic.
func TestUpdateFailureKeepsOldPolicy(t *testing.T) {
	e := newEnv(t)
	// Rules in the order Policy.Rules gives them back.
	oldRules := []string{"203.0.113.10:8080/tcp", "allowed.test"}
	newRules := []string{"203.0.113.20:8080/tcp", "www.wild.test"}
	newPolicy, err := firewall.ParsePolicy(newRules)
	if err != nil {
		t.Fatal(err)
	}
	// checkOld proves the old policy of n with traffic and reads.
	checkOld := func(t *testing.T, n *Net, dir string, rules []string) {
		t.Helper()
		if got := n.tgt.Policy.Rules(); !slices.Equal(got, rules) {
			t.Errorf("live target has %v, want %v", got, rules)
		}
		if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil {
			t.Errorf("the kernel does not hold the old rulesets: %v %v", err, rep.Err)
		}
		st, err := Inspect(t.Context(), dir)
		if err != nil || !slices.Equal(st.Allow, rules) || st.Report.Err != nil {
			t.Errorf("record: %v %v %v, want %v", st.Allow, err, st.Report.Err, rules)
		}
		runProbes(t, "old policy", &testutil.Probe{NS: n.ns}, []probe{
			tcp("allowed by the old policy", peerA, 8080, true),
			tcp("allowed by the new policy only", peerB, 8080, false),
		})
	}

	t.Run("domains to domains", func(t *testing.T) {
		n := e.setup(t, "update-fails", oldRules...)
		dir, _ := e.sandboxDir(t, "update-fails")
		n.cfg.fail = failOnce("applied")
		if err := n.Update(t.Context(), newPolicy); !errors.Is(err, errInjected) || errors.Is(err, ErrFlowsNotCut) {
			t.Fatalf("Update: %v, want the injected failure", err)
		}
		checkOld(t, n, dir, oldRules)
		gw := n.Gateway().String()
		if code, body, err := httpGet(t.Context(), n.ns, gw+":80", "allowed.test"); err != nil || code != 200 {
			t.Errorf("proxy refuses a name of the old policy: %d %q %v", code, body, err)
		}
		if code, _, err := httpGet(t.Context(), n.ns, gw+":80", "www.wild.test"); err != nil || code != 403 {
			t.Errorf("proxy serves a name of the failed new policy: %d %v", code, err)
		}
		for name, rcode := range map[string]int{"allowed.test": dns.RcodeSuccess, "www.wild.test": dns.RcodeRefused} {
			if r, err := lookup(n.ns, gw+":53", name); err != nil || r.Rcode != rcode {
				t.Errorf("DNS stub for %s: %v %v, want %s", name, r, err, dns.RcodeToString[rcode])
			}
		}
		// Once nothing fails, the same Update goes through.
		if err := n.Update(t.Context(), newPolicy); err != nil {
			t.Fatal(err)
		}
		if code, _, err := httpGet(t.Context(), n.ns, gw+":80", "www.wild.test"); err != nil || code != 200 {
			t.Errorf("after a good update: %d %v", code, err)
		}
	})

	t.Run("no domains to domains", func(t *testing.T) {
		rules := []string{"203.0.113.10:8080/tcp"}
		n := e.setup(t, "update-fails-2", rules...)
		dir, _ := e.sandboxDir(t, "update-fails-2")
		n.cfg.fail = failOnce("applied")
		if err := n.Update(t.Context(), newPolicy); !errors.Is(err, errInjected) {
			t.Fatalf("Update: %v, want the injected failure", err)
		}
		checkOld(t, n, dir, rules)
		if n.eg != nil {
			t.Error("the egress server started for the failed policy is still running")
		}
		if got := string(n.ResolvConf()); strings.Contains(got, "nameserver") {
			t.Errorf("resolv.conf names a stub: %q", got)
		}
	})

	t.Run("connections not cut", func(t *testing.T) {
		n := e.setup(t, "cut-fails", oldRules...)
		n.cfg.fail = failOnce("cut-flows")
		err := n.Update(t.Context(), newPolicy)
		if !errors.Is(err, ErrFlowsNotCut) {
			t.Fatalf("Update: %v, want ErrFlowsNotCut", err)
		}
		// The new policy is in force.
		if rep, err := n.Verify(t.Context()); err != nil || rep.Err != nil || !slices.Equal(n.tgt.Policy.Rules(), newRules) {
			t.Errorf("new policy not in force: %v %v %v", n.tgt.Policy.Rules(), err, rep.Err)
		}
		gw := n.Gateway().String()
		if code, _, err := httpGet(t.Context(), n.ns, gw+":80", "www.wild.test"); err != nil || code != 200 {
			t.Errorf("proxy not switched: %d %v", code, err)
		}
		runProbes(t, "new policy", &testutil.Probe{NS: n.ns}, []probe{
			tcp("allowed by the old policy only", peerA, 8080, false),
			tcp("allowed by the new policy", peerB, 8080, true),
		})
	})
}
