package seccomp

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// InstallThread installs p on the calling OS thread only (no TSYNC). The
// caller must hold runtime.LockOSThread and never unlock it: the filter
// stays with the thread, and a goroutine that moves to another thread would
// leave it behind. It sets no_new_privs on the thread first (idempotent;
// the kernel requires it to install a filter without CAP_SYS_ADMIN).
//
// In Audit mode it returns the user-notification listener
// (SECCOMP_FILTER_FLAG_NEW_LISTENER), to be served by an Auditor; in
// Enforce mode it returns nil.
func InstallThread(p *Program) (*os.File, error) {
	return install(p, 0)
}

// InstallProcess installs p on every thread of the process
// (SECCOMP_FILTER_FLAG_TSYNC), for a process about to execve, like the VMM
// launcher. In Audit mode it returns the listener as InstallThread does.
func InstallProcess(p *Program) (*os.File, error) {
	return install(p, unix.SECCOMP_FILTER_FLAG_TSYNC)
}

func install(p *Program, flags uintptr) (*os.File, error) {
	if err := validate(p); err != nil {
		return nil, err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("set no_new_privs: %w", err)
	}
	filter := make([]unix.SockFilter, len(p.Instructions))
	for i, in := range p.Instructions {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if p.Mode == Audit {
		flags |= unix.SECCOMP_FILTER_FLAG_NEW_LISTENER
		if flags&unix.SECCOMP_FILTER_FLAG_TSYNC != 0 {
			// TSYNC reports a failed thread as its TID, which would be
			// mistaken for the listener fd; TSYNC_ESRCH makes it an error.
			flags |= unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH
		}
		// A notified task then waits killably only once the Auditor has
		// received the notification, so Go's preemption signals do not
		// restart (and re-notify) the syscall (Linux 5.19).
		flags |= unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
	}
	r, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&prog)))
	if errno == unix.EINVAL && flags&unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0 {
		flags &^= unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
		r, _, errno = unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&prog)))
	}
	if errno != 0 {
		return nil, fmt.Errorf("install seccomp filter %s (%s, %d instructions): %w", p.Profile, p.Mode, len(filter), errno)
	}
	if flags&unix.SECCOMP_FILTER_FLAG_TSYNC != 0 && flags&unix.SECCOMP_FILTER_FLAG_NEW_LISTENER == 0 && r != 0 {
		return nil, fmt.Errorf("install seccomp filter %s: thread %d could not be synchronised", p.Profile, r)
	}
	if p.Mode != Audit {
		return nil, nil
	}
	return os.NewFile(r, "seccomp-listener"), nil
}

// validate checks what the kernel would reject anyway, with clearer errors,
// and that the program cannot be mistaken for something else.
func validate(p *Program) error {
	if p == nil {
		return errors.New("install seccomp filter: no program")
	}
	if p.Mode != Enforce && p.Mode != Audit {
		return fmt.Errorf("install seccomp filter: mode %q: %w", p.Mode, ErrInvalidProfile)
	}
	n := len(p.Instructions)
	if n == 0 || n > maxInstructions {
		return fmt.Errorf("install seccomp filter: %d instructions (want 1..%d): %w", n, maxInstructions, ErrInvalidProfile)
	}
	native, err := NativeArch()
	if err != nil {
		return err
	}
	if p.Arch != native {
		return fmt.Errorf("install seccomp filter: compiled for %s, running on %s: %w", p.Arch, native, ErrUnsupported)
	}
	insns, ok := bpf.Disassemble(p.Instructions)
	if !ok {
		return fmt.Errorf("install seccomp filter: undecodable instruction: %w", ErrInvalidProfile)
	}
	if _, err := bpf.NewVM(insns); err != nil {
		return fmt.Errorf("install seccomp filter: %v: %w", err, ErrInvalidProfile)
	}
	return nil
}
