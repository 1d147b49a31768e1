package firewall

import "errors"

// Sentinel errors of the firewall package.
var (
	// ErrInvalidRule marks an --allow rule that does not parse.
	ErrInvalidRule = errors.New("invalid allow rule")
	// ErrUnsupportedRule marks an --allow rule that parses but that this
	// build cannot enforce (IPv6 egress, a domain on a port the proxy does
	// not serve). It is never dropped silently.
	ErrUnsupportedRule = errors.New("unsupported allow rule")
	// ErrVerify marks a ruleset read back from the kernel that differs from
	// the one that was applied.
	ErrVerify = errors.New("firewall verification failed")
	// ErrOldLayoutInUse marks a host table that still dispatches live
	// sandboxes of an earlier IronClaw through its old layout: rewriting
	// its base chains would strip their host-side rules.
	ErrOldLayoutInUse = errors.New("host firewall table in use by an earlier IronClaw's sandboxes")
	// ErrRulesetChanging marks a read of the ruleset that never saw one
	// state: the generation moved during every attempt (see gen.go).
	ErrRulesetChanging = errors.New("nftables ruleset kept changing during the read")
)
