// Package agent is the server side of the agentapi protocol: the library
// behind ironclaw-agent, the guest agent that runs inside every long-lived
// sandbox (the jail's init, PID 1 of a micro-VM).
//
// A Server authenticates one connection at a time with the per-sandbox
// token, then serves execs, file operations, health, rekey and shutdown on
// the yamux streams of that connection. Execs are started through
// Config.Launch, the seam through which a jail applies its hardening
// (capabilities, no_new_privs, Landlock, seccomp) before the workload runs.
// File paths are resolved by the kernel beneath Config.FileRoot with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS), so ".." and symlinks
// cannot leave it.
//
// The guest-init side (mounts, kernel modules, network from the kernel
// command line, zombie reaping, power-off) lives in the guest subpackage.
package agent
