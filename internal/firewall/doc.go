// Package firewall turns an egress Policy into nftables rulesets and applies,
// reads back and verifies them over netlink (google/nftables).
//
// Two rulesets enforce one sandbox's policy, so that neither alone is
// trusted:
//
//   - Inside the sandbox's network namespace, table inet "ironclaw" with
//     base chains at the output, input and forward hooks, all policy drop.
//     It is replaced as a whole (add, delete, re-create) in one transaction.
//   - On the host, in the shared table inet "ironclaw", per-sandbox regular
//     chains reached through verdict maps keyed by interface name
//     (iifname/oifname → jump). The host's base chains have policy accept
//     so they never touch traffic that is not a sandbox's; each sandbox's
//     chains end in an explicit drop. A map lookup is a hash lookup, so the
//     cost per packet does not grow with the number of sandboxes.
//
// nftables runs every base chain registered on a hook, and a packet must be
// accepted by all of them: an accept in another table (an iptables ACCEPT
// policy, say) cannot undo a drop here.
//
// The builders are pure (Build* take no context and touch no kernel); Apply
// and Verify talk to the kernel through an *nftables.Conn, which tests can
// point at a throwaway namespace or a recording dial.
package firewall
