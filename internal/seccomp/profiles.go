package seccomp

import (
	"slices"

	mseccomp "github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// tightening is a group of syscalls the default profile denies on top of
// Docker's, with the reason.
type tightening struct {
	names  []string
	reason string
}

// tightenings lists what IronClaw's "default" profile denies beyond
// Docker's default profile. Docker already denies most of these to a
// container without capabilities; removing them by name here keeps them
// denied whatever Docker's list does in a future version, and the reason
// travels with the profile as the comment of an explicit deny rule.
func tightenings() []tightening {
	return []tightening{
		{[]string{"io_uring_setup", "io_uring_enter", "io_uring_register"},
			"io_uring: operations submitted through the ring run without a syscall, so seccomp never sees them; and it has a long record of kernel privilege-escalation bugs"},
		{[]string{"ptrace"},
			"ptrace: reads and writes other processes' memory and registers, and could bypass seccomp on kernels before 4.8"},
		{[]string{"process_vm_readv", "process_vm_writev"},
			"process_vm_readv/writev: read and write another process's memory directly"},
		{[]string{"bpf"},
			"bpf: loads programs into the kernel; the verifier is a large attack surface"},
		{[]string{"perf_event_open"},
			"perf_event_open: a source of side channels and kernel bugs"},
		{[]string{"userfaultfd"},
			"userfaultfd: lets a process stall kernel accesses to its memory, the standard tool to win kernel race conditions in exploits"},
		{[]string{"kexec_load", "kexec_file_load"},
			"kexec_load/kexec_file_load: boot another kernel"},
		{[]string{"keyctl", "add_key", "request_key"},
			"keyctl/add_key/request_key: the kernel keyring is not namespaced and has had many bugs"},
		{[]string{"mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "open_tree_attr", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr"},
			"mount family: the jail sets up the filesystem; the workload must not change it"},
		{[]string{"unshare", "setns"},
			"unshare/setns: new namespaces (user namespaces above all) open kernel attack surface that is otherwise out of reach"},
		{[]string{"open_by_handle_at"},
			"open_by_handle_at: opens files by handle, bypassing path checks (the 'shocker' container escape)"},
	}
}

// DefaultProfile returns IronClaw's "default" profile: Docker's default
// profile (github.com/moby/profiles/seccomp), tightened by tightenings.
// Parts of Docker's profile that already do what the issue asks, and are
// kept as they are (and tested):
//   - clone: allowed only without namespace flags (masked-equal on the flags
//     argument); clone3 fails with ENOSYS, because its flags are behind a
//     pointer seccomp cannot read, and libc then falls back to clone;
//   - personality: allowed only for PER_LINUX, PER_LINUX32, UNAME26,
//     UNAME26|PER_LINUX32 and the 0xffffffff query;
//   - socket: allowed only for listed address families; AF_VSOCK (host/VM
//     sockets) and AF_ALG are not among them.
//
// Rules Docker includes only for capabilities never apply: IronClaw's
// workloads have an empty bounding set.
func DefaultProfile() *mseccomp.Seccomp {
	p := mseccomp.DefaultProfile()
	var denied []string
	for _, t := range tightenings() {
		denied = append(denied, t.names...)
	}
	kept := p.Syscalls[:0]
	for _, sc := range p.Syscalls {
		if sc.Action == specs.ActAllow {
			sc.Names = slices.DeleteFunc(sc.Names, func(n string) bool { return slices.Contains(denied, n) })
			if len(sc.Names) == 0 {
				continue
			}
		}
		kept = append(kept, sc)
	}
	p.Syscalls = kept
	eperm := uint(unix.EPERM)
	for _, t := range tightenings() {
		p.Syscalls = append(p.Syscalls, &mseccomp.Syscall{
			LinuxSyscall: specs.LinuxSyscall{Names: t.names, Action: specs.ActErrno, ErrnoRet: &eperm},
			Comment:      "ironclaw: " + t.reason,
		})
	}
	return p
}

// nsFlags are the clone flags that create namespaces (as Docker's profile).
const nsFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

// strictAllow is the "strict" allowlist: what static binaries, /bin/sh,
// coreutils and python3 need to run, found by tracing them. No sockets, no
// namespaces, no mounts, no tracing, no kernel keyring, no io_uring, no
// BPF, no module loading, no time setting.
func strictAllow() []string {
	return []string{
		// Files and directories.
		"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
		"open", "openat", "openat2", "creat", "close", "close_range", "lseek",
		"stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
		"access", "faccessat", "faccessat2", "readlink", "readlinkat",
		"getdents", "getdents64", "getcwd", "chdir", "fchdir",
		"mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
		"link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2",
		"chown", "fchown", "lchown", "fchownat", "umask", "utime", "utimes", "utimensat", "futimesat",
		"truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "sync", "syncfs", "flock",
		"dup", "dup2", "dup3", "pipe", "pipe2", "fcntl", "sendfile", "copy_file_range", "splice", "tee",
		"fadvise64", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
		"poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
		"eventfd", "eventfd2", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
		// Memory.
		"brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "mincore", "msync", "mlock", "munlock", "membarrier",
		// Processes and threads.
		"execve", "execveat", "fork", "vfork", "exit", "exit_group", "wait4", "waitid",
		"getpid", "getppid", "gettid", "getpgrp", "getpgid", "setpgid", "getsid", "setsid",
		"getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid",
		"setuid", "setgid", "setgroups", "setresuid", "setresgid", "setreuid", "setregid", "capget",
		"kill", "tkill", "tgkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend",
		"rt_sigtimedwait", "rt_sigpending", "rt_sigqueueinfo", "sigaltstack", "pause", "restart_syscall",
		"futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq", "arch_prctl", "prctl",
		"sched_yield", "sched_getaffinity", "sched_getparam", "sched_getscheduler", "getpriority",
		"getrlimit", "prlimit64", "getrusage", "times", "uname", "sysinfo", "getrandom",
		// Time.
		"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
		"alarm", "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_delete",
		"timerfd_create", "timerfd_settime", "timerfd_gettime",
	}
}

// strictIoctls are the ioctl requests "strict" allows: terminal and fd
// requests of include/uapi/asm-generic/ioctls.h (the same on x86_64 and
// aarch64).
func strictIoctls() []uint64 {
	return []uint64{
		0x5401, // TCGETS
		0x5402, // TCSETS
		0x5403, // TCSETSW
		0x5404, // TCSETSF
		0x540E, // TIOCSCTTY
		0x540F, // TIOCGPGRP
		0x5410, // TIOCSPGRP
		0x5413, // TIOCGWINSZ
		0x5414, // TIOCSWINSZ
		0x541B, // FIONREAD
		0x5421, // FIONBIO
		0x5422, // TIOCNOTTY
		0x5450, // FIONCLEX
		0x5451, // FIOCLEX
	}
}

// StrictProfile returns the "strict" profile: an allowlist (strictAllow)
// with everything else failing with EPERM; no socket syscalls at all; clone
// without namespace flags; clone3 → ENOSYS (libc falls back to clone);
// ioctl only for strictIoctls; personality as in Docker's profile.
func StrictProfile() *mseccomp.Seccomp {
	eperm, enosys := uint(unix.EPERM), uint(unix.ENOSYS)
	allow := func(names ...string) *mseccomp.Syscall {
		return &mseccomp.Syscall{LinuxSyscall: specs.LinuxSyscall{Names: names, Action: specs.ActAllow}}
	}
	withArg := func(name string, index uint, value, two uint64, op specs.LinuxSeccompOperator) *mseccomp.Syscall {
		sc := allow(name)
		sc.Args = []specs.LinuxSeccompArg{{Index: index, Value: value, ValueTwo: two, Op: op}}
		return sc
	}
	sys := []*mseccomp.Syscall{allow(strictAllow()...)}
	sys = append(sys, withArg("clone", 0, nsFlags, 0, specs.OpMaskedEqual))
	sys[len(sys)-1].Comment = "threads and fork, no namespaces"
	sys = append(sys, &mseccomp.Syscall{
		LinuxSyscall: specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		Comment:      "flags behind a pointer: ENOSYS makes libc fall back to clone",
	})
	for _, req := range strictIoctls() {
		sys = append(sys, withArg("ioctl", 1, req, 0, specs.OpEqualTo))
	}
	for _, per := range []uint64{0, 0x0008, 0x20000, 0x20008, 0xffffffff} {
		sys = append(sys, withArg("personality", 0, per, 0, specs.OpEqualTo))
	}
	return &mseccomp.Seccomp{
		LinuxSeccomp: specs.LinuxSeccomp{DefaultAction: specs.ActErrno, DefaultErrnoRet: &eperm},
		Syscalls:     sys,
	}
}
