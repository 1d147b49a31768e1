package cli

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/network"
)

func TestPrintNetStatus(t *testing.T) {
	st := &network.Status{
		Networked: true, Names: network.NamesOf("aaaaaaaaaaaaaaaaaaaaaaaaaa"), NetnsPath: "/run/netns/ic-x",
		SandboxAddr: netip.MustParseAddr("10.200.0.2"), HostAddr: netip.MustParseAddr("10.200.0.1"),
		Allow: []string{"203.0.113.0/24:443/tcp"},
	}
	var b bytes.Buffer
	if !printNetStatus(&b, "vm-1", st) || !strings.Contains(b.String(), "verified:") || !strings.Contains(b.String(), "203.0.113.0/24:443/tcp") {
		t.Fatalf("good status:\n%s", b.String())
	}
	b.Reset()
	st.Report.Err = errors.Join(firewall.ErrVerify, errors.New("chain output: policy is not drop"))
	if printNetStatus(&b, "vm-1", st) || !strings.Contains(b.String(), "verification FAILED") {
		t.Fatalf("failed status must say so and report false:\n%s", b.String())
	}
}
