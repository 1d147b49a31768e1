// Package daemon is the sandbox manager behind `ironclaw serve`: it owns
// every long-lived sandbox the daemon made, from create to destroy.
//
// A sandbox is a jail whose init is the guest agent, or a micro-VM whose
// PID 1 is the same agent (backend "vm"; "auto" picks a VM only where KVM
// works); the manager talks to either over the same protocol
// (internal/agentapi) with a per-sandbox token: a Unix socket for a jail,
// virtio-serial through QEMU for a VM. Each sandbox has a row in the store
// (internal/store) written before the backend starts it, so a daemon that
// dies at any point is followed by one that re-attaches every sandbox
// still alive (jail.Attach, vm.Backend.Attach) and reclaims every other
// one; nothing is leaked. Loopback-only sandboxes of both backends outlive
// the daemon; networked ones die with it (their egress servers live in
// it).
//
// The manager enforces each sandbox's time-to-live and idle timeout,
// keeps warm pools of prepared sandboxes per spec class (a member is
// handed to one user and destroyed with that user's sandbox, never
// recycled), records a bounded per-sandbox event log, fans events out to
// subscribers, and exports Prometheus metrics measured on the real
// operations.
package daemon
