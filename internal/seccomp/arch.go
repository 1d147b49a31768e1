package seccomp

//go:generate go run ./internal/mksysnum -o zsysnum.go

import (
	"fmt"
	"runtime"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Arch is a syscall ABI a filter is compiled for. IronClaw's filters accept
// exactly one ABI each: compat ABIs (i386, x32, arm32) are killed.
type Arch string

// Supported architectures, named as the kernel's uname -m.
const (
	ArchX86_64  Arch = "x86_64"
	ArchAARCH64 Arch = "aarch64"
)

// x32SyscallBit marks x32 syscalls, which share AUDIT_ARCH_X86_64 with
// native x86_64 ones (__X32_SYSCALL_BIT in arch/x86/include/uapi/asm/unistd.h).
const x32SyscallBit = 0x40000000

// NativeArch returns the Arch of the running binary.
func NativeArch() (Arch, error) {
	switch runtime.GOARCH {
	case "amd64":
		return ArchX86_64, nil
	case "arm64":
		return ArchAARCH64, nil
	}
	return "", fmt.Errorf("native architecture %s: %w", runtime.GOARCH, ErrUnsupported)
}

// archInfo is what the compiler needs to know about one Arch.
type archInfo struct {
	audit    uint32            // AUDIT_ARCH_* value in seccomp_data.arch
	table    map[string]uint32 // syscall name → number
	names    map[uint32]string // number → name
	maxNr    uint32            // highest known syscall number
	x32      bool              // reject numbers with x32SyscallBit
	dockerID string            // the arch name Docker profiles use in includes/excludes
}

// archInfos are computed once, on first use, and never written
// afterwards: building the tables at package initialisation cost every
// process that links this package (the sandbox's init among them) 0.1 ms.
var archInfos = map[Arch]func() *archInfo{
	ArchX86_64: sync.OnceValue(func() *archInfo {
		return newArchInfo(archInfo{audit: unix.AUDIT_ARCH_X86_64, table: sysnumX86_64(), x32: true, dockerID: "amd64"})
	}),
	ArchAARCH64: sync.OnceValue(func() *archInfo {
		return newArchInfo(archInfo{audit: unix.AUDIT_ARCH_AARCH64, table: sysnumAARCH64(), dockerID: "arm64"})
	}),
}

func newArchInfo(in archInfo) *archInfo {
	in.names = make(map[uint32]string, len(in.table))
	for n, nr := range in.table {
		if old, ok := in.names[nr]; !ok || n < old {
			in.names[nr] = n
		}
		if nr > in.maxNr {
			in.maxNr = nr
		}
	}
	return &in
}

func (a Arch) info() (*archInfo, error) {
	in, ok := archInfos[a]
	if !ok {
		return nil, fmt.Errorf("architecture %q (want %s or %s): %w", a, ArchX86_64, ArchAARCH64, ErrUnsupported)
	}
	return in(), nil
}

// SyscallNumber returns the number of the named syscall on a.
func (a Arch) SyscallNumber(name string) (uint32, bool) {
	in, err := a.info()
	if err != nil {
		return 0, false
	}
	nr, ok := in.table[name]
	return nr, ok
}

// SyscallName returns the name of syscall number nr on a, or "" if unknown.
func (a Arch) SyscallName(nr uint32) string {
	in, err := a.info()
	if err != nil {
		return ""
	}
	return in.names[nr]
}

// Syscalls returns every syscall name known on a, sorted.
func (a Arch) Syscalls() []string {
	in, err := a.info()
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(in.table))
	for n := range in.table {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
