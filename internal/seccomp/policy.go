package seccomp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	mseccomp "github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ActionKind is what the kernel does with a syscall a rule matches.
type ActionKind uint8

// Action kinds, in the order of the kernel's precedence (strongest first).
const (
	ActKillProcess ActionKind = iota + 1
	ActKillThread
	ActTrap
	ActErrno
	ActNotify // user notification: audit mode only
	ActTrace
	ActLog
	ActAllow
)

// Action is an ActionKind with its 16-bit data (errno for ActErrno, the
// value reported for ActTrap and ActTrace).
type Action struct {
	Kind ActionKind
	Data uint16
}

// ret returns the SECCOMP_RET_* value of a.
func (a Action) ret() uint32 {
	switch a.Kind {
	case ActKillProcess:
		return unix.SECCOMP_RET_KILL_PROCESS
	case ActKillThread:
		return unix.SECCOMP_RET_KILL_THREAD
	case ActTrap:
		return unix.SECCOMP_RET_TRAP | uint32(a.Data)
	case ActErrno:
		return unix.SECCOMP_RET_ERRNO | uint32(a.Data)
	case ActNotify:
		return unix.SECCOMP_RET_USER_NOTIF
	case ActTrace:
		return unix.SECCOMP_RET_TRACE | uint32(a.Data)
	case ActLog:
		return unix.SECCOMP_RET_LOG
	case ActAllow:
		return unix.SECCOMP_RET_ALLOW
	}
	// Unreachable for actions built by parseAction; kill rather than allow.
	return unix.SECCOMP_RET_KILL_PROCESS
}

// String names a the way OCI profiles do.
func (a Action) String() string {
	switch a.Kind {
	case ActKillProcess:
		return "SCMP_ACT_KILL_PROCESS"
	case ActKillThread:
		return "SCMP_ACT_KILL_THREAD"
	case ActTrap:
		return "SCMP_ACT_TRAP"
	case ActErrno:
		return fmt.Sprintf("SCMP_ACT_ERRNO(%d)", a.Data)
	case ActNotify:
		return "SCMP_ACT_NOTIFY"
	case ActTrace:
		return fmt.Sprintf("SCMP_ACT_TRACE(%d)", a.Data)
	case ActLog:
		return "SCMP_ACT_LOG"
	case ActAllow:
		return "SCMP_ACT_ALLOW"
	}
	return fmt.Sprintf("action(%d)", a.Kind)
}

// proceeds reports whether the syscall runs under a.
func (a Action) proceeds() bool { return a.Kind == ActAllow || a.Kind == ActLog }

// Op is an argument comparison.
type Op uint8

// Comparison operators, as libseccomp's SCMP_CMP_*.
const (
	OpEQ Op = iota + 1
	OpNE
	OpLT
	OpLE
	OpGT
	OpGE
	OpMaskedEQ // (arg & Mask) == Value
)

// Cond is one argument condition of a Rule.
type Cond struct {
	Arg   uint8  // argument index, 0..5
	Op    Op     // comparison
	Value uint64 // compared value (the datum for OpMaskedEQ)
	Mask  uint64 // OpMaskedEQ only
	// Low32 compares only the low 32 bits of the argument (seccompiler's
	// "dword"); otherwise all 64 bits are compared, as libseccomp does.
	Low32 bool
}

// Rule gives Action to Syscall when all Conds hold.
type Rule struct {
	Syscall string
	Conds   []Cond
	Action  Action
}

// Policy is a profile resolved for one architecture: plain, deterministic
// data that the compiler turns into BPF.
//
// Semantics per syscall: an unconditional rule decides alone (two
// unconditional rules with different actions are an error); otherwise the
// conditional rules are tried in order and the first whose conditions all
// hold decides; if none holds, Default decides.
type Policy struct {
	Default Action
	Rules   []Rule
}

// KernelVersion is a kernel "major.minor", used to resolve Docker's
// minKernel conditions.
type KernelVersion struct{ Major, Minor uint64 }

func (k KernelVersion) atLeast(v *mseccomp.KernelVersion) bool {
	if k.Major != v.Kernel {
		return k.Major > v.Kernel
	}
	return k.Minor >= v.Major
}

// HostKernel returns the running kernel's version.
func HostKernel() (KernelVersion, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return KernelVersion{}, fmt.Errorf("uname: %w", err)
	}
	var k KernelVersion
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &k.Major, &k.Minor); err != nil {
		return KernelVersion{}, fmt.Errorf("parse kernel release: %w", err)
	}
	return k, nil
}

// ParseProfile decodes a Docker/OCI JSON seccomp profile. Unknown fields
// are rejected (a misspelt "args" would otherwise turn a conditional rule
// into an unconditional one), and so are trailing data and an empty profile.
func ParseProfile(data []byte) (*mseccomp.Seccomp, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p mseccomp.Seccomp
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: decode JSON: %v", ErrInvalidProfile, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the profile", ErrInvalidProfile)
	}
	if p.DefaultAction == "" {
		return nil, fmt.Errorf("%w: field defaultAction: missing", ErrInvalidProfile)
	}
	return &p, nil
}

// Resolve turns a Docker/OCI profile into the Policy for arch on kernel k,
// as Docker would for a container with an empty capability bounding set
// (IronClaw's workloads have none): rules included only for capabilities
// are dropped, arch and minKernel conditions are evaluated for arch and k.
// Syscall names unknown on arch are skipped, as runc does (Docker's default
// profile lists every architecture's names). A rule whose action equals the
// default action is dropped, as runc does.
func Resolve(p *mseccomp.Seccomp, arch Arch, k KernelVersion) (*Policy, error) {
	in, err := arch.info()
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fmt.Errorf("%w: no profile", ErrInvalidProfile)
	}
	if len(p.LinuxSeccomp.Syscalls) != 0 {
		return nil, fmt.Errorf("%w: LinuxSeccomp.Syscalls must be empty (use Syscalls)", ErrInvalidProfile)
	}
	if len(p.Architectures) != 0 && len(p.ArchMap) != 0 {
		return nil, fmt.Errorf("%w: both architectures and archMap are set", ErrInvalidProfile)
	}
	for i, a := range p.Architectures {
		if !strings.HasPrefix(string(a), "SCMP_ARCH_") {
			return nil, fmt.Errorf("%w: field architectures[%d]: unknown architecture %q", ErrInvalidProfile, i, a)
		}
	}
	if len(p.Flags) != 0 {
		return nil, fmt.Errorf("field flags %v: %w", p.Flags, ErrUnsupported)
	}
	if p.ListenerPath != "" || p.ListenerMetadata != "" {
		return nil, fmt.Errorf("fields listenerPath/listenerMetadata: %w", ErrUnsupported)
	}
	def, err := parseAction(p.DefaultAction, p.DefaultErrnoRet, "defaultAction")
	if err != nil {
		return nil, err
	}
	pol := &Policy{Default: def}
	for i, sc := range p.Syscalls {
		field := fmt.Sprintf("syscalls[%d]", i)
		if sc == nil {
			return nil, fmt.Errorf("%w: field %s: null", ErrInvalidProfile, field)
		}
		names := sc.Names
		if sc.Name != "" {
			if len(sc.Names) != 0 {
				return nil, fmt.Errorf("%w: field %s: both name and names are set", ErrInvalidProfile, field)
			}
			names = []string{sc.Name}
		}
		if len(names) == 0 {
			return nil, fmt.Errorf("%w: field %s.names: empty", ErrInvalidProfile, field)
		}
		if err := checkFilter(sc.Includes, field+".includes"); err != nil {
			return nil, err
		}
		if err := checkFilter(sc.Excludes, field+".excludes"); err != nil {
			return nil, err
		}
		if !applies(sc, in.dockerID, k) {
			continue
		}
		act, err := parseAction(sc.Action, sc.ErrnoRet, field+".action")
		if err != nil {
			return nil, err
		}
		if act.Kind == ActNotify {
			return nil, fmt.Errorf("field %s.action SCMP_ACT_NOTIFY: %w (use --seccomp-mode audit)", field, ErrUnsupported)
		}
		if act == def {
			continue
		}
		conds := make([]Cond, 0, len(sc.Args))
		perArg := map[uint]int{}
		for j, a := range sc.Args {
			c, err := parseArg(a, fmt.Sprintf("%s.args[%d]", field, j))
			if err != nil {
				return nil, err
			}
			perArg[a.Index]++
			conds = append(conds, c)
		}
		// runc (and so Docker) turns a rule with two conditions on the same
		// argument into one rule per condition (an OR); keep that meaning.
		split := false
		for _, n := range perArg {
			split = split || n > 1
		}
		for _, name := range names {
			if name == "" {
				return nil, fmt.Errorf("%w: field %s.names: empty name", ErrInvalidProfile, field)
			}
			if _, ok := in.table[name]; !ok {
				continue
			}
			if split {
				for _, c := range conds {
					pol.Rules = append(pol.Rules, Rule{Syscall: name, Conds: []Cond{c}, Action: act})
				}
				continue
			}
			pol.Rules = append(pol.Rules, Rule{Syscall: name, Conds: slices.Clone(conds), Action: act})
		}
	}
	return pol, nil
}

func checkFilter(f *mseccomp.Filter, field string) error {
	if f == nil {
		return nil
	}
	for _, c := range f.Caps {
		if !strings.HasPrefix(c, "CAP_") {
			return fmt.Errorf("%w: field %s.caps: %q is not a capability name", ErrInvalidProfile, field, c)
		}
	}
	return nil
}

// applies evaluates a rule's includes/excludes for a container with no
// capabilities on the given Docker arch name and kernel.
func applies(sc *mseccomp.Syscall, dockerArch string, k KernelVersion) bool {
	if ex := sc.Excludes; ex != nil {
		if slices.Contains(ex.Arches, dockerArch) {
			return false
		}
		// No capability is ever present, so excludes.caps never excludes.
		if ex.MinKernel != nil && k.atLeast(ex.MinKernel) {
			return false
		}
	}
	if in := sc.Includes; in != nil {
		if len(in.Arches) > 0 && !slices.Contains(in.Arches, dockerArch) {
			return false
		}
		if len(in.Caps) > 0 {
			return false
		}
		if in.MinKernel != nil && !k.atLeast(in.MinKernel) {
			return false
		}
	}
	return true
}

func parseAction(a specs.LinuxSeccompAction, errnoRet *uint, field string) (Action, error) {
	errno := uint(unix.EPERM)
	if errnoRet != nil {
		errno = *errnoRet
		if errno > 0xffff {
			return Action{}, fmt.Errorf("%w: field %s: errnoRet %d does not fit 16 bits", ErrInvalidProfile, field, errno)
		}
	}
	var act Action
	switch a {
	case specs.ActKill, specs.ActKillThread:
		act = Action{Kind: ActKillThread}
	case specs.ActKillProcess:
		act = Action{Kind: ActKillProcess}
	case specs.ActTrap:
		act = Action{Kind: ActTrap}
	case specs.ActErrno:
		return Action{Kind: ActErrno, Data: uint16(errno)}, nil
	case specs.ActTrace:
		return Action{Kind: ActTrace, Data: uint16(errno)}, nil
	case specs.ActAllow:
		act = Action{Kind: ActAllow}
	case specs.ActLog:
		act = Action{Kind: ActLog}
	case specs.ActNotify:
		act = Action{Kind: ActNotify}
	case "":
		return Action{}, fmt.Errorf("%w: field %s: missing", ErrInvalidProfile, field)
	default:
		return Action{}, fmt.Errorf("%w: field %s: unknown action %q", ErrInvalidProfile, field, a)
	}
	if errnoRet != nil {
		return Action{}, fmt.Errorf("%w: field %s: errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE", ErrInvalidProfile, field)
	}
	return act, nil
}

func parseArg(a specs.LinuxSeccompArg, field string) (Cond, error) {
	if a.Index > 5 {
		return Cond{}, fmt.Errorf("%w: field %s.index: %d is not an argument index (0..5)", ErrInvalidProfile, field, a.Index)
	}
	c := Cond{Arg: uint8(a.Index), Value: a.Value}
	switch a.Op {
	case specs.OpEqualTo:
		c.Op = OpEQ
	case specs.OpNotEqual:
		c.Op = OpNE
	case specs.OpLessThan:
		c.Op = OpLT
	case specs.OpLessEqual:
		c.Op = OpLE
	case specs.OpGreaterThan:
		c.Op = OpGT
	case specs.OpGreaterEqual:
		c.Op = OpGE
	case specs.OpMaskedEqual:
		// OCI: value is the mask, valueTwo the datum.
		c.Op, c.Mask, c.Value = OpMaskedEQ, a.Value, a.ValueTwo
	case "":
		return Cond{}, fmt.Errorf("%w: field %s.op: missing", ErrInvalidProfile, field)
	default:
		return Cond{}, fmt.Errorf("%w: field %s.op: unknown operator %q", ErrInvalidProfile, field, a.Op)
	}
	if c.Op != OpMaskedEQ && a.ValueTwo != 0 {
		return Cond{}, fmt.Errorf("%w: field %s.valueTwo: only valid with SCMP_CMP_MASKED_EQ", ErrInvalidProfile, field)
	}
	return c, nil
}

// errNoRules is returned for a profile that allows every syscall.
var errNoRules = errors.New("profile allows every syscall")
