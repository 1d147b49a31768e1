// Package approval is the Approval Cliff: it classifies every MCP tools/call
// green (runs) or red (held for a person), holds red calls in a Queue until
// someone approves or denies them (or the timeout denies them), and builds
// the diff card a person decides from.
//
// Classification is by whole names and word tokens, never by substring: a
// tool called "delete all targets" does not match the read verb "get".
// Unknown means red. The Queue is served to `ironclaw approvals` over a
// Unix socket (see Serve); the peer's uid, read with SO_PEERCRED, is
// recorded as the approver.
package approval
