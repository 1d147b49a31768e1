// Package firecracker runs a micro-VM with Firecracker: a typed client of
// its REST API on a Unix socket (every request and response is a struct
// marshalled with encoding/json), the boot sequence (boot-source, drives,
// machine-config, network-interfaces, vsock, entropy, logger, metrics,
// InstanceStart), the agent reached over vsock through the host-initiated
// "CONNECT <port>" handshake, jailer support, and snapshots for a warm pool.
//
// The driver writes firecracker.json into the sandbox directory before the
// VMM starts and completes it with the VMM's PID and start time; Reclaim
// kills that process and removes the sockets, drives and the jailer's
// chroot from the record alone. With the jailer (--new-pid-ns) the jailer
// exits once it has cloned Firecracker; the driver takes the PID from the
// jailer's firecracker.pid and watches it through a pidfd, so Exited
// reports a VMM that dies at any time, not only during the boot.
//
// Firecracker is never started with --no-seccomp: its own per-thread
// filters stay on, and Config.Launch is the seam for the outer filter.
// Firecracker cannot run on hosts without a usable KVM, so this package is
// tested against a stand-in (package standin) that serves the published
// OpenAPI description (testdata/firecracker-api-v1.16.1.yaml) and rejects
// any request that does not validate against it.
package firecracker
