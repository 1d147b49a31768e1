// Package daemon is the sandbox manager behind `ironclaw serve`: it owns
// every long-lived sandbox the daemon made, from create to destroy.
//
// A sandbox is a persistent jail (jail.Options{Persistent: true}) whose
// init is the guest agent; the manager talks to the agent over the
// sandbox's agent socket with a per-sandbox token. Each sandbox has a row
// in the store (internal/store) written before the backend starts it, so a
// daemon that dies at any point is followed by one that re-attaches every
// sandbox still alive (jail.Attach) and reclaims every other one; nothing
// is leaked.
//
// The manager enforces each sandbox's time-to-live and idle timeout,
// keeps warm pools of prepared sandboxes per spec class (a member is
// handed to one user and destroyed with that user's sandbox, never
// recycled), records a bounded per-sandbox event log, fans events out to
// subscribers, and exports Prometheus metrics measured on the real
// operations.
package daemon
