package firewall

import (
	"fmt"
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

// TestMain runs the tests in a throwaway host namespace and fails the run
// if a namespace bind mount is left behind.
func TestMain(m *testing.M) {
	testutil.HostNetNSMain(m, func() error {
		if m, err := testutil.LeakedMounts(""); err != nil || len(m) > 0 {
			return fmt.Errorf("netns mounts left: %v %v", m, err)
		}
		return nil
	})
}
