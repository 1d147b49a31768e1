// Package sandbox holds what every backend shares: the Spec a sandbox is made
// from, its validation, sandbox IDs and the collision-resistant Key that every
// kernel object name and path is derived from.
//
// A Spec is plain data, validated before anything touches the kernel; the
// live handle that owns kernel resources belongs to a backend (see package
// jail).
package sandbox
