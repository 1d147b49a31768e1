// Package e2e holds IronClaw's end-to-end tests: they build the real
// ironclaw binary and drive it as a user would, then prove isolation from
// the kernel's side (what the sandbox can see, write and signal, how its
// limits hold) and check that nothing is left behind.
//
// All tests need root; they skip without it, and fail instead when
// IRONCLAW_TEST_PRIVILEGED=1.
package e2e
