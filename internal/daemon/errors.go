package daemon

import "errors"

// Errors of the manager. Errors about the spec wrap sandbox.ErrInvalid,
// unknown sandboxes sandbox.ErrNotFound, taken IDs sandbox.ErrExists and
// unavailable features sandbox.ErrUnsupported.
var (
	// ErrLimit marks a request refused because a configured limit (the
	// number of sandboxes) is reached.
	ErrLimit = errors.New("limit reached")
	// ErrNotRunning marks an operation on a sandbox that is being created,
	// has exited or is being destroyed.
	ErrNotRunning = errors.New("sandbox is not running")
	// ErrCommandNotFound marks an exec whose program is not on the
	// sandbox's PATH.
	ErrCommandNotFound = errors.New("command not found")
	// ErrNotExecutable marks an exec whose program exists but cannot be
	// executed.
	ErrNotExecutable = errors.New("command not executable")
	// ErrBusy marks a daemon state root that another daemon serves.
	ErrBusy = errors.New("another ironclaw daemon serves this state root")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("daemon is shutting down")
)
