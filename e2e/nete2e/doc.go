// Package nete2e holds end-to-end tests of sandbox networking through the
// real ironclaw binary. The test binary re-executes itself in a throwaway
// network and mount namespace that plays the host (testutil.HostNetNSMain),
// with a peer namespace standing in for the Internet: no packet ever
// leaves namespaces the test made.
package nete2e
