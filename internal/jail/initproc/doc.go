// Package initproc is the sandbox side of IronClaw's jail: the init that
// runs as PID 1 of a sandbox's PID namespace, and the control protocol it
// speaks with the host (package jail).
//
// Init builds the sandbox's root (detached bind mounts attached with
// move_mount, a generated /etc, proc, dev, tmp; pivot_root), confines the
// threads that start commands (capability bounding set, no_new_privs,
// Landlock, cgroup namespace, seccomp) and either runs one command for
// `ironclaw run` or serves the agent protocol for a long-lived sandbox. It
// imports nothing host-side, so that the small ironclaw-agent binary can be
// the init and start faster than the full ironclaw binary.
package initproc
