// Package firewall turns an egress Policy into nftables rulesets and applies,
// reads back and verifies them over netlink (google/nftables).
//
// Two rulesets enforce one sandbox's policy, so that neither alone is
// trusted:
//
//   - Inside the sandbox's network namespace, table inet "ironclaw" with
//     base chains at the output, input and forward hooks, all policy drop,
//     whose rules depend only on the link's addresses, and sets that hold
//     the policy (see sandbox_sets.go): made once when the link is, after
//     which a policy change adds and deletes elements only, in one
//     transaction.
//   - On the host, the shared table inet "ironclaw" holds one fixed
//     ruleset: base chains (forward, input, NAT) whose rules are the same
//     whatever sandboxes exist, with policy accept and every rule bound to
//     a sandbox link through a set, so they never touch traffic that is
//     not a sandbox's. Each sandbox is only elements of named sets and
//     maps keyed by its link's name (link, own source address, services,
//     its policy generation, allowed "link . address range [. protocol .
//     port range]" in that generation's sets, see host.go): a change adds
//     and deletes elements and never a chain, a rule, a jump or a verdict
//     map element, so the kernel does not re-validate the table and
//     neither the cost of a change nor the cost per packet grows with the
//     number of sandboxes. Every key is a plain concatenation of packet
//     fields, so the system's nft (1.0.6 included) lists the table.
//
// nftables runs every base chain registered on a hook, and a packet must be
// accepted by all of them: an accept in another table (an iptables ACCEPT
// policy, say) cannot undo a drop here.
//
// The builders are pure (Build* take no context and touch no kernel); Apply
// and Verify talk to the kernel through an *nftables.Conn, which tests can
// point at a throwaway namespace or a recording dial. An ElementReader
// reads a sandbox's host elements back by key (getelem.go), so verifying a
// start does not dump the shared sets. Every read by dump is checked
// against the namespace's ruleset generation and done again while a commit
// came during it (gen.go), so no read returns a mix of two states or
// misses elements. RemoveOldLayout removes what the host table of an
// earlier layout left unused (oldlayout.go).
package firewall
