package network

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func TestMain(m *testing.M) { testutil.HostNetNSMain(m, leakCheck) }

// leakCheck runs in the test host namespace after every test: no IronClaw
// link, no namespace bind mount and no element of a sandbox in the host
// table's sets may be left.
func leakCheck() error {
	var problems []string
	links, err := testutil.LeakedLinks(IfPrefix)
	if err != nil {
		return err
	}
	if len(links) > 0 {
		problems = append(problems, fmt.Sprintf("links %v", links))
	}
	mounts, err := testutil.LeakedMounts("")
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		problems = append(problems, fmt.Sprintf("netns mounts %v", mounts))
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	chains, err := firewall.ReadTable(c)
	if err != nil {
		return err
	}
	for _, ch := range chains {
		if !ch.Base() {
			problems = append(problems, "chain "+ch.Name)
		}
	}
	if len(chains) > 0 {
		sizes, err := firewall.ReadSetSizes(c)
		if err != nil {
			return err
		}
		for set, n := range sizes {
			if n > 0 {
				problems = append(problems, fmt.Sprintf("%d elements in set %s", n, set))
			}
		}
		guarded, err := firewall.ReadUplinks(c)
		if err != nil {
			return err
		}
		if len(guarded) > 0 {
			problems = append(problems, fmt.Sprintf("guarded uplinks %v", guarded))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(problems, "; "))
	}
	return nil
}
