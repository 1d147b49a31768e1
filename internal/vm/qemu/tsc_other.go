//go:build !amd64

package qemu

import "time"

// HostTSCkHz returns 0 on architectures without an x86 TSC: the guest
// calibrates its own clock.
func HostTSCkHz(time.Duration) uint64 { return 0 }
