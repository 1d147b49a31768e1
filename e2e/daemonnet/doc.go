// Package daemonnet tests the daemon's networked sandboxes through the real
// binary, in a throwaway host network namespace (testutil.HostNetNSMain)
// with a peer namespace as the Internet.
package daemonnet
