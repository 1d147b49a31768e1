package seccomp

import "errors"

// Sentinel errors of package seccomp. Wrapped errors name the field or
// syscall at fault; test with errors.Is.
var (
	// ErrInvalidProfile reports a profile that cannot be parsed or compiled.
	ErrInvalidProfile = errors.New("invalid seccomp profile")
	// ErrUnsupported reports a profile feature, architecture or kernel
	// facility that IronClaw does not support.
	ErrUnsupported = errors.New("unsupported")
	// ErrLaunchPath reports a profile that would deny a syscall the jail's
	// init needs between installing the filter and execve of the workload.
	ErrLaunchPath = errors.New("profile denies syscalls the launch path needs")
	// ErrNotConfined reports a process whose seccomp state is not what the
	// caller required (see Status.RequireFiltered).
	ErrNotConfined = errors.New("process is not confined by seccomp")
)
