package sandbox

import (
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"time"
)

// Spec describes one sandbox. It is plain, deterministic data: parsing and
// Validate check it completely before any kernel object is made.
type Spec struct {
	// ID names the sandbox. Any string ValidateID accepts; kernel objects
	// are named after KeyOf(ID), never after the ID.
	ID string `json:"id"`
	// Command is the program and its arguments, resolved against the
	// sandbox's own PATH. A long-lived sandbox (an agent) may have none.
	Command []string `json:"command"`
	// Env is the complete environment of the command, as K=V pairs. It
	// starts clean: nothing is inherited from the caller.
	Env []string `json:"env,omitempty"`
	// User is who the command runs as inside the sandbox.
	User User `json:"user"`
	// Workdir is a host directory mounted read-write at /workspace. Empty
	// means a fresh empty directory that is removed with the sandbox.
	Workdir string `json:"workdir,omitempty"`
	// Mounts are host paths granted to the sandbox.
	Mounts []Mount `json:"mounts,omitempty"`
	// Rootfs, when set, is a prepared root directory used instead of the
	// host's system directories.
	Rootfs string `json:"rootfs,omitempty"`
	// Resources are the limits of the sandbox.
	Resources Resources `json:"resources"`
	// Timeout, when non-zero, is how long the command may run before the
	// whole sandbox is killed.
	Timeout time.Duration `json:"timeout,omitempty"`
	// TTY gives the command a pseudo-terminal.
	TTY bool `json:"tty,omitempty"`
	// Seccomp selects the system call filter.
	Seccomp Seccomp `json:"seccomp"`
	// Network is the egress policy.
	Network Network `json:"network"`
}

// Workspace is where the writable workspace appears inside every sandbox.
const Workspace = "/workspace"

// Mount grants a host path to the sandbox.
type Mount struct {
	// Source is the host path.
	Source string `json:"source"`
	// Target is the absolute path inside the sandbox.
	Target string `json:"target"`
	// Writable makes the mount read-write; mounts are read-only otherwise.
	Writable bool `json:"writable,omitempty"`
}

// String formats m the way ParseMount reads it.
func (m Mount) String() string {
	mode := "ro"
	if m.Writable {
		mode = "rw"
	}
	return m.Source + ":" + m.Target + ":" + mode
}

// User is a uid and gid inside the sandbox's user namespace.
type User struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

// SandboxUser is the unprivileged user commands run as by default.
var SandboxUser = User{UID: 1000, GID: 1000}

// MappedIDs is how many uids and gids each sandbox's user namespace maps:
// 0..MappedIDs-1 inside map to an unprivileged range on the host.
const MappedIDs = 65536

// Resources are the limits a sandbox runs under. Zero means unlimited for
// every field; limits that the host cannot enforce fail the start.
type Resources struct {
	// MemoryBytes caps the memory of every process in the sandbox
	// together (cgroup memory controller); swap is not allowed on top.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// Pids caps the number of processes and threads (cgroup pids controller).
	Pids int64 `json:"pids,omitempty"`
	// CPUs caps CPU time, in CPUs: 0.5 is half of one CPU (cgroup cpu controller).
	CPUs float64 `json:"cpus,omitempty"`
	// NoFile is RLIMIT_NOFILE, the number of open files per process.
	NoFile uint64 `json:"nofile,omitempty"`
	// FileSize is RLIMIT_FSIZE, the largest file a process may write.
	FileSize int64 `json:"file_size,omitempty"`
}

// DefaultResources are the limits a sandbox gets when the caller sets none.
var DefaultResources = Resources{
	MemoryBytes: 2 << 30,
	Pids:        1024,
	NoFile:      1024,
	FileSize:    1 << 30,
}

// Seccomp selects the system call filter of a sandbox.
type Seccomp struct {
	// Profile is "default", "strict", "unconfined" or the path of a
	// Docker/OCI seccomp JSON profile. Empty means "default".
	Profile string `json:"profile,omitempty"`
	// Audit logs violations instead of blocking them.
	Audit bool `json:"audit,omitempty"`
}

// Network is the egress policy of a sandbox. No rules means loopback only.
type Network struct {
	// Allow holds the allow rules as the user wrote them (--allow); the
	// firewall package parses and validates them.
	Allow []string `json:"allow,omitempty"`
}

// Validate checks every field of s and returns an error naming the first
// bad field and the reason. It does not touch the kernel or the file system.
func (s *Spec) Validate() error {
	if err := ValidateID(s.ID); err != nil {
		return err
	}
	// A long-lived sandbox may have no command of its own; the backend
	// requires one where it runs one.
	if len(s.Command) > 0 && s.Command[0] == "" {
		return fmt.Errorf("%w: command: must name a program", ErrInvalid)
	}
	for i, a := range s.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: command: argument %d contains a NUL byte", ErrInvalid, i)
		}
	}
	for _, kv := range s.Env {
		if err := validateEnv(kv); err != nil {
			return err
		}
	}
	if s.User.UID >= MappedIDs || s.User.GID >= MappedIDs {
		return fmt.Errorf("%w: user: %d:%d is outside the mapped range 0-%d", ErrInvalid, s.User.UID, s.User.GID, MappedIDs-1)
	}
	if s.Workdir != "" && !path.IsAbs(s.Workdir) {
		return fmt.Errorf("%w: workdir: %q is not an absolute path", ErrInvalid, s.Workdir)
	}
	if s.Rootfs != "" && !path.IsAbs(s.Rootfs) {
		return fmt.Errorf("%w: rootfs: %q is not an absolute path", ErrInvalid, s.Rootfs)
	}
	targets := map[string]bool{}
	for _, m := range s.Mounts {
		if err := m.validate(); err != nil {
			return err
		}
		if targets[m.Target] {
			return fmt.Errorf("%w: mount: target %s is given twice", ErrInvalid, m.Target)
		}
		targets[m.Target] = true
	}
	if err := s.Resources.validate(); err != nil {
		return err
	}
	if s.Timeout < 0 {
		return fmt.Errorf("%w: timeout: %s is negative", ErrInvalid, s.Timeout)
	}
	return nil
}

func validateEnv(kv string) error {
	k, _, ok := strings.Cut(kv, "=")
	switch {
	case !ok:
		return fmt.Errorf("%w: env: %q is not KEY=VALUE", ErrInvalid, kv)
	case k == "":
		return fmt.Errorf("%w: env: %q has an empty name", ErrInvalid, kv)
	case strings.IndexByte(kv, 0) >= 0:
		return fmt.Errorf("%w: env: %s contains a NUL byte", ErrInvalid, k)
	}
	return nil
}

// reservedTargets are sandbox paths that IronClaw builds itself; a user
// mount may not replace them (it may go below /workspace and /tmp).
var reservedTargets = []string{"/", "/proc", "/dev", "/etc", Workspace, "/tmp"}

func (m Mount) validate() error {
	switch {
	case m.Source == "":
		return fmt.Errorf("%w: mount: empty host path in %q", ErrInvalid, m.String())
	case !path.IsAbs(m.Source):
		return fmt.Errorf("%w: mount: host path %q is not absolute", ErrInvalid, m.Source)
	case !path.IsAbs(m.Target):
		return fmt.Errorf("%w: mount: sandbox path %q is not absolute", ErrInvalid, m.Target)
	case path.Clean(m.Target) != m.Target:
		return fmt.Errorf("%w: mount: sandbox path %q is not clean (want %q)", ErrInvalid, m.Target, path.Clean(m.Target))
	case strings.IndexByte(m.Source, 0) >= 0 || strings.IndexByte(m.Target, 0) >= 0:
		return fmt.Errorf("%w: mount: path contains a NUL byte", ErrInvalid)
	}
	if err := CheckMountTarget(m.Target); err != nil {
		return fmt.Errorf("%w: mount: %w", ErrInvalid, err)
	}
	return nil
}

// CheckMountTarget refuses a clean absolute sandbox path that a user mount
// may not take: one IronClaw builds itself, or a path inside /proc or
// /dev. The jail's init applies it again to where a target resolves in
// the sandbox, since a symlink on the way can lead elsewhere.
func CheckMountTarget(p string) error {
	for _, r := range reservedTargets {
		if p == r {
			return fmt.Errorf("sandbox path %s is reserved", p)
		}
	}
	for _, r := range []string{"/proc/", "/dev/"} {
		if strings.HasPrefix(p, r) {
			return fmt.Errorf("sandbox path %s is inside reserved %s", p, strings.TrimSuffix(r, "/"))
		}
	}
	return nil
}

func (r Resources) validate() error {
	switch {
	case r.MemoryBytes < 0:
		return fmt.Errorf("%w: memory: %d is negative", ErrInvalid, r.MemoryBytes)
	case r.MemoryBytes != 0 && r.MemoryBytes < 4<<20:
		return fmt.Errorf("%w: memory: %s is below the minimum of 4MiB", ErrInvalid, FormatSize(r.MemoryBytes))
	case r.Pids < 0:
		return fmt.Errorf("%w: pids: %d is negative", ErrInvalid, r.Pids)
	case r.Pids != 0 && r.Pids < 2:
		return fmt.Errorf("%w: pids: %d is below the minimum of 2 (init and the command)", ErrInvalid, r.Pids)
	case r.CPUs < 0 || math.IsNaN(r.CPUs) || math.IsInf(r.CPUs, 0):
		return fmt.Errorf("%w: cpus: %v is not a non-negative number", ErrInvalid, r.CPUs)
	case r.CPUs != 0 && r.CPUs < 0.01:
		return fmt.Errorf("%w: cpus: %v is below the minimum of 0.01", ErrInvalid, r.CPUs)
	case r.CPUs > 1024:
		return fmt.Errorf("%w: cpus: %v is above the maximum of 1024", ErrInvalid, r.CPUs)
	case r.NoFile > 1<<20:
		return fmt.Errorf("%w: nofile: %d is above the kernel's nr_open default of %d", ErrInvalid, r.NoFile, 1<<20)
	case r.FileSize < 0:
		return fmt.Errorf("%w: file size: %d is negative", ErrInvalid, r.FileSize)
	}
	return nil
}

// UserName returns the name uid has in a sandbox's generated /etc/passwd.
func UserName(uid uint32) string {
	switch uid {
	case 0:
		return "root"
	case SandboxUser.UID:
		return "sandbox"
	case 65534:
		return "nobody"
	}
	return "user" + strconv.FormatUint(uint64(uid), 10)
}
