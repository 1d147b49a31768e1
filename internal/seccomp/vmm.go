package seccomp

import (
	"embed"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// VMMKind names a virtual machine monitor the launcher can start.
type VMMKind string

// Supported VMMs.
const (
	Firecracker VMMKind = "firecracker"
	QEMU        VMMKind = "qemu"
)

//go:embed firecracker/seccomp-x86_64-v1.16.1.json firecracker/seccomp-aarch64-v1.16.1.json
var firecrackerRules embed.FS

// FirecrackerRules returns the embedded Firecracker v1.16.1 per-thread rules
// for arch, parsed.
func FirecrackerRules(arch Arch) (map[string]SeccompilerFilter, error) {
	if _, err := arch.info(); err != nil {
		return nil, err
	}
	data, err := firecrackerRules.ReadFile("firecracker/seccomp-" + string(arch) + "-v1.16.1.json")
	if err != nil {
		return nil, fmt.Errorf("firecracker rules for %s: %w", arch, err)
	}
	return ParseSeccompiler(data)
}

// firecrackerThreads are the threads whose rules the outer filter unites.
var firecrackerThreads = []string{"vmm", "api", "vcpu"}

// vmmExtra is a group of syscalls the outer VMM filter allows beyond the
// VMM's own rules, with the reason.
type vmmExtra struct {
	names  []string
	reason string
}

// firecrackerExtras are what happens in the VMM process before Firecracker
// installs its per-thread filters (its rules cover only what each thread
// does afterwards), and in the launcher between its filter and execve.
// Firecracker is not available on this machine, so this list is derived
// from its documentation and a static Rust binary's start-up, not from a
// trace; it errs towards allowing start-up calls, while everything the
// default profile's tightenings name stays denied unless Firecracker's own
// rules allow it (io_uring: its block device uses it).
func firecrackerExtras() []vmmExtra {
	return []vmmExtra{
		{[]string{"execve"}, "the launcher execs the VMM after installing the filter"},
		{[]string{"futex", "nanosleep", "sched_yield", "mmap", "munmap", "madvise", "mprotect", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "gettid", "getpid", "tgkill", "tkill", "exit", "exit_group", "read", "write", "close", "epoll_create1", "epoll_ctl", "epoll_pwait", "pipe2", "sched_getaffinity", "openat", "fcntl", "readlinkat", "getrandom", "clock_gettime", "clock_nanosleep", "prlimit64", "uname"},
			"the launcher's Go runtime until execve, and the start-up of a static binary"},
		{[]string{"arch_prctl", "set_tid_address", "set_robust_list", "rseq", "brk", "poll", "ppoll", "membarrier", "getuid", "geteuid", "getgid", "getegid", "newfstatat", "statx", "fstat", "lseek", "readlink"},
			"static Rust/musl start-up before main"},
		{[]string{"prctl", "seccomp"},
			"Firecracker installs its own per-thread filters (no_new_privs, SECCOMP_SET_MODE_FILTER)"},
		{[]string{"ioctl"},
			"KVM set-up (KVM_CREATE_VM, KVM_CREATE_VCPU, KVM_SET_USER_MEMORY_REGION, TUNSETIFF, ...) runs before the vmm thread's filter, whose ioctl rules list only what runs after"},
		{[]string{"open", "bind", "listen", "unlink", "unlinkat", "eventfd2", "timerfd_create", "memfd_create", "ftruncate", "dup", "dup3", "mkdirat", "sched_setaffinity"},
			"VMM set-up before the filters: API socket (socket(2) itself only as its rules allow: AF_UNIX), devices, guest memory, vCPU threads"},
	}
}

// VMMProfile returns the outer, process-wide policy for a VMM of kind on
// arch. Its default action is ERRNO(EPERM), so a missed start-up call fails
// visibly rather than killing the VMM silently.
//
// Firecracker: the union of its own vmm, api and vcpu thread rules (each
// rule kept with its argument conditions), plus firecrackerExtras; clone
// only without namespace flags.
//
// QEMU: the "default" profile and chroot (QEMU adds its own -sandbox
// filter on top; see QEMUSandboxArgs).
func VMMProfile(kind VMMKind, arch Arch) (*Policy, error) {
	k := KernelVersion{Major: 6, Minor: 1} // resolves minKernel conditions deterministically
	switch kind {
	case QEMU:
		pol, err := Resolve(DefaultProfile(), arch, k)
		if err != nil {
			return nil, err
		}
		// -chroot: QEMU, still root, chroots into an empty directory
		// before it runs the guest; once it is unprivileged the kernel
		// refuses chroot (no CAP_SYS_CHROOT).
		pol.Rules = append(pol.Rules, Rule{Syscall: "chroot", Action: Action{Kind: ActAllow}})
		return pol, nil
	case Firecracker:
	default:
		return nil, fmt.Errorf("VMM kind %q (want %s or %s): %w", kind, Firecracker, QEMU, ErrUnsupported)
	}
	threads, err := FirecrackerRules(arch)
	if err != nil {
		return nil, err
	}
	pol := &Policy{Default: Action{Kind: ActErrno, Data: uint16(unix.EPERM)}}
	allow := Action{Kind: ActAllow}
	for _, name := range firecrackerThreads {
		f, ok := threads[name]
		if !ok {
			return nil, fmt.Errorf("%w: firecracker rules lack thread %q", ErrInvalidProfile, name)
		}
		if f.FilterAction.Action != allow {
			return nil, fmt.Errorf("%w: firecracker thread %q: filter_action %s (want allow)", ErrInvalidProfile, name, f.FilterAction.Action)
		}
		rules, err := f.Rules(arch)
		if err != nil {
			return nil, fmt.Errorf("firecracker thread %q: %w", name, err)
		}
		pol.Rules = append(pol.Rules, rules...)
	}
	for _, e := range firecrackerExtras() {
		for _, n := range e.names {
			if _, ok := arch.SyscallNumber(n); ok {
				pol.Rules = append(pol.Rules, Rule{Syscall: n, Action: allow})
			}
		}
	}
	pol.Rules = append(pol.Rules, Rule{Syscall: "clone", Action: allow, Conds: []Cond{{Arg: 0, Op: OpMaskedEQ, Mask: nsFlags}}})
	pol.Rules = append(pol.Rules, Rule{Syscall: "clone3", Action: Action{Kind: ActErrno, Data: uint16(unix.ENOSYS)}})
	return pol, nil
}

// vmmLaunchPath are the calls the launcher makes between InstallProcess
// and execve.
func vmmLaunchPath() []Call {
	var out []Call
	for _, c := range LaunchPath() {
		if slices.Contains([]string{"futex", "mmap", "munmap", "madvise", "sched_yield", "nanosleep", "rt_sigreturn", "sigaltstack", "gettid", "getpid", "tgkill", "rt_sigprocmask", "execve", "write", "exit"}, c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// CompileVMM compiles the outer filter for a VMM of kind on arch.
func CompileVMM(kind VMMKind, arch Arch) (*Program, error) {
	pol, err := VMMProfile(kind, arch)
	if err != nil {
		return nil, err
	}
	return compileChecked("vmm-"+string(kind), pol, Enforce, arch, vmmLaunchPath())
}

// QEMUSandboxArgs are the arguments that turn on QEMU's own seccomp
// sandbox, denying obsolete syscalls, spawning processes and resource
// control. Privilege changes stay allowed: QEMU needs them for -runas
// (the launcher makes it drop to VMMUID before it runs the guest, and the
// host checks it did), and without capabilities and with no_new_privs
// they can only move between the ids QEMU already has.
func QEMUSandboxArgs() []string {
	return []string{"-sandbox", "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"}
}

// VMMUIDBase is the first of the host uids (and gids) QEMU processes run
// as: VMMUID(pid), next to the jail's range (jail.DefaultUIDBase).
const VMMUIDBase = 1_100_000_000

// VMMUID is the unprivileged uid and gid the QEMU process pid runs as once
// it runs its guest. It is distinct for every live QEMU (PIDs are), so no
// QEMU may signal another.
func VMMUID(pid int) int { return VMMUIDBase + pid }

// FirecrackerArgs builds Firecracker's command line: the API socket, the
// microVM id, and --seccomp-filter only when the user supplied a compiled
// filter file (Firecracker otherwise keeps its built-in per-thread
// filters). extra may not contain --no-seccomp or --seccomp-filter.
func FirecrackerArgs(apiSock, id, seccompFilter string, extra ...string) ([]string, error) {
	if apiSock == "" {
		return nil, fmt.Errorf("firecracker args: api socket path is empty")
	}
	for _, a := range extra {
		if flagIs(a, "no-seccomp") {
			return nil, fmt.Errorf("firecracker args: %s: Firecracker must keep its seccomp filters", a)
		}
		if flagIs(a, "seccomp-filter") {
			return nil, fmt.Errorf("firecracker args: %s: pass the filter file as seccompFilter", a)
		}
	}
	args := []string{"--api-sock", apiSock}
	if id != "" {
		args = append(args, "--id", id)
	}
	if seccompFilter != "" {
		args = append(args, "--seccomp-filter", seccompFilter)
	}
	return append(args, extra...), nil
}

// flagIs reports whether arg is the flag name (with one or two dashes, with
// or without =value).
func flagIs(arg, name string) bool {
	for _, p := range []string{"-" + name, "--" + name} {
		if arg == p || len(arg) > len(p) && arg[:len(p)+1] == p+"=" {
			return true
		}
	}
	return false
}
