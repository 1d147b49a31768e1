package firecracker

import "github.com/ironclaw/ironclaw/internal/agent/guest"

type guestNet = guest.NetConfig

func parseNet(s string) (*guest.NetConfig, error) {
	n, err := guest.ParseNet(s)
	return &n, err
}
