// Package daemonvm holds the end-to-end tests of micro-VM sandboxes through
// the daemon: they build the real ironclaw and ironclaw-agent binaries, run
// `ironclaw serve` in a throwaway host network namespace
// (testutil.HostNetNSMain), create sandboxes with backend "vm" (QEMU; TCG
// where KVM is unusable) and "auto" through the Go client, and check from
// the kernel's side what the VMM runs under, what survives a SIGKILLed
// daemon, and that nothing is left behind.
//
// The tests need root, QEMU, busybox-static and a guest kernel
// (scripts/install-test-deps installs all of them); they skip without, and
// fail instead when IRONCLAW_TEST_PRIVILEGED=1. Each boot costs about 2-3 s
// under TCG, so the tests boot few VMs.
package daemonvm
