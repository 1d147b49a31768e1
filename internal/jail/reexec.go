package jail

import "github.com/ironclaw/ironclaw/internal/jail/initproc"

// InitArg0 is the argv[0] of a sandbox's init (see initproc.Arg0).
const InitArg0 = initproc.Arg0

// ErrCommandNotFound is reported when the command is not on the sandbox's PATH.
var ErrCommandNotFound = initproc.ErrCommandNotFound

// MaybeInit runs the sandbox's init and never returns when this process was
// started as one; otherwise it returns at once. Every binary that starts
// jails and may be re-executed as their init (ironclaw, ironclaw-agent,
// and test binaries of packages that start jails) calls it first thing.
func MaybeInit() { initproc.MaybeMain() }
