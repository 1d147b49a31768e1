package sandbox

import "errors"

// Sentinel errors shared by every backend. Callers test them with errors.Is;
// the wrapped message names the field or the step and the cause.
var (
	// ErrInvalid marks a Spec or ID that failed validation.
	ErrInvalid = errors.New("invalid sandbox spec")
	// ErrUnsupported marks a request the host cannot enforce (a limit
	// without its cgroup controller, say). IronClaw never drops such a
	// request silently.
	ErrUnsupported = errors.New("not supported on this host")
	// ErrExists marks a sandbox ID that is already in use.
	ErrExists = errors.New("sandbox already exists")
	// ErrNotFound marks a sandbox ID that does not exist.
	ErrNotFound = errors.New("sandbox not found")
)

// StartError is a failed start of a sandbox, by any backend: the setup
// step that failed and why. Everything done before the failure has been
// rolled back when it is returned.
type StartError struct {
	Step string
	Err  error
}

func (e *StartError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }
