// Package seccomp owns IronClaw's syscall filters: Docker/OCI JSON profiles
// ("default", "strict", a user's file, or "unconfined" by name only), a
// pure-Go compiler from profile to classic BPF, installing the filter,
// verifying it from /proc, audit mode, and the VMM launcher.
//
// # Compiling
//
// Compile loads a profile, resolves it for one architecture (x86_64 or
// aarch64; Docker's capability conditions resolve as for an empty bounding
// set) and emits BPF: a check of seccomp_data.arch (a foreign ABI — i386,
// x32, arm32 — is killed: KILL_PROCESS), a kill for x32 syscall numbers
// (nr & 0x40000000), then a binary search over syscall numbers with
// argument conditions compared on all 64 bits (or the low 32 for
// seccompiler "dword" rules). Output depends only on the input. Compile
// also runs the program in golang.org/x/net/bpf's VM on every syscall of
// the launch path (LaunchPath) and rejects a profile that would stop one.
//
// # Installing: why the jail filters one thread
//
// The jail's init is a multi-threaded Go program. It installs the filter
// with InstallThread on a goroutine locked to its OS thread
// (runtime.LockOSThread, never unlocked), right before syscall.ForkExec of
// the workload from that same thread: the forked child inherits exactly
// that thread's filter and carries it through execve, while init's other
// threads (its runtime, its channel to the host) stay unfiltered. Go never
// clones new threads from a locked thread (it asks its template thread),
// so the filter cannot leak into init's runtime either. TSYNC
// (InstallProcess) is for a process about to execve as a whole: the VMM
// launcher.
//
// The host then reads /proc/PID/status of the workload (ReadStatus) and
// requires "Seccomp: 2" and "NoNewPrivs: 1" (Status.RequireFiltered).
//
// # Audit
//
// In Audit mode every action that would stop a syscall becomes
// SECCOMP_RET_USER_NOTIF; InstallThread returns the listener, and an
// Auditor on the host answers each notification with
// SECCOMP_USER_NOTIF_FLAG_CONTINUE after counting it, in memory bounded by
// the syscall tables and a ring of fixed capacity. Suggest turns its
// Report into a profile.
//
// # VMMs
//
// LaunchVMM re-executes a launcher (argv[0] LauncherArg0, handled by
// LauncherMain) that installs an outer filter on all threads and execs the
// VMM: for Firecracker, the union of its own per-thread rules (embedded
// from its v1.16.1 release, see firecracker/) plus its start-up needs; for
// QEMU, the default profile (and chroot) plus QEMU's own -sandbox, with
// -runas VMMUID(pid). With VMMConfig.Watchdog the launcher first starts a
// root watchdog that SIGKILLs the VMM once the owner's pipe reports EOF
// (see watchdog_linux.go): the VMM's uid change clears its parent-death
// signal.
package seccomp
