// Package firecracker runs a micro-VM with Firecracker: a typed client of
// its REST API on a Unix socket (every request and response is a struct
// marshalled with encoding/json), the boot sequence (boot-source, drives,
// machine-config, network-interfaces, vsock, entropy, logger, metrics,
// InstanceStart), the agent reached over vsock through the host-initiated
// "CONNECT <port>" handshake, jailer support, and snapshots for a warm pool.
//
// Firecracker is never started with --no-seccomp: its own per-thread
// filters stay on, and Config.Launch is the seam for the outer filter.
// Firecracker cannot run on hosts without a usable KVM, so this package is
// tested against a stand-in (package standin) that serves the published
// OpenAPI description (testdata/firecracker-api-v1.16.1.yaml) and rejects
// any request that does not validate against it.
package firecracker
