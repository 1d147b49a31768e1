// Package vme2e holds the end-to-end tests of the micro-VM backend: they
// build the real ironclaw and ironclaw-agent binaries, boot VMs with
// `ironclaw run --backend vm` (QEMU; TCG on hosts where KVM is unusable)
// in a throwaway host network namespace, and check from the kernel's side
// what the VMM runs under and that nothing is left behind.
//
// The tests need root, QEMU, busybox-static and a guest kernel
// (scripts/install-test-deps installs all of them); they skip without, and
// fail instead when IRONCLAW_TEST_PRIVILEGED=1.
package vme2e
