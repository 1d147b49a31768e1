package firewall

import (
	"testing"

	"github.com/ironclaw/ironclaw/internal/testutil"
)

func TestMain(m *testing.M) { testutil.HostNetNSMain(m, nil) }
