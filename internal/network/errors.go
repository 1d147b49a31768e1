package network

import "errors"

// Sentinel errors of the network package.
var (
	// ErrPoolEmpty is returned by Claim when no prepared slot is free.
	ErrPoolEmpty = errors.New("no free network slot in the pool")
	// ErrFlowsNotCut marks an Update whose new policy is in force but
	// whose connections the policy no longer allows could not all be cut.
	ErrFlowsNotCut = errors.New("policy applied, but connections it no longer allows may survive")
)
