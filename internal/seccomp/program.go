package seccomp

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	mseccomp "github.com/moby/profiles/seccomp"
	"golang.org/x/net/bpf"
)

// Mode says whether a filter blocks or only reports.
type Mode string

// Modes.
const (
	// Enforce applies the profile's actions.
	Enforce Mode = "enforce"
	// Audit turns every action that would stop a syscall into a user
	// notification; an Auditor records it and lets the syscall proceed.
	Audit Mode = "audit"
)

// Built-in profile names.
const (
	ProfileDefault    = "default"
	ProfileStrict     = "strict"
	ProfileUnconfined = "unconfined"
)

// Program is a compiled filter: plain data, JSON-marshalable, shipped from
// the host to the jail's init.
type Program struct {
	Profile string `json:"profile"` // built-in name or file path
	Arch    Arch   `json:"arch"`
	Mode    Mode   `json:"mode"`
	// Unconfined is set only for the "unconfined" profile, whose filter
	// allows every syscall (it still marks the process as filtered, so the
	// jail's /proc check stays uniform). Callers show it loudly.
	Unconfined   bool                 `json:"unconfined,omitempty"`
	Instructions []bpf.RawInstruction `json:"instructions"`
}

// Digest returns a short hex digest of p's instructions, for logs.
func (p *Program) Digest() string {
	h := sha256.New()
	var b [8]byte
	for _, in := range p.Instructions {
		binary.LittleEndian.PutUint16(b[0:], in.Op)
		b[2], b[3] = in.Jt, in.Jf
		binary.LittleEndian.PutUint32(b[4:], in.K)
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Compile loads the named profile ("default", "strict", "unconfined" or a
// path to a Docker/OCI JSON profile) and compiles it for arch in mode,
// resolving Docker's minKernel conditions against the running kernel.
// It rejects a profile that denies any syscall of the launch path
// (see LaunchPath), naming the syscalls.
func Compile(profile string, mode Mode, arch Arch) (*Program, error) {
	k, err := HostKernel()
	if err != nil {
		return nil, err
	}
	return CompileFor(profile, mode, arch, k)
}

// CompileFor is Compile for a given kernel version; its output depends on
// its arguments (and the profile file's content) only.
func CompileFor(profile string, mode Mode, arch Arch, k KernelVersion) (*Program, error) {
	if mode != Enforce && mode != Audit {
		return nil, fmt.Errorf("seccomp mode %q (want %s or %s): %w", mode, Enforce, Audit, ErrInvalidProfile)
	}
	if profile == ProfileUnconfined {
		if _, err := arch.info(); err != nil {
			return nil, err
		}
		return &Program{
			Profile: profile, Arch: arch, Mode: mode, Unconfined: true,
			Instructions: []bpf.RawInstruction{{Op: opRetK, K: Action{Kind: ActAllow}.ret()}},
		}, nil
	}
	p, fromFile, err := LoadProfile(profile)
	if err != nil {
		return nil, err
	}
	pol, err := Resolve(p, arch, k)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", profile, err)
	}
	if fromFile && allowsEverything(pol) {
		return nil, fmt.Errorf("profile %s: %w: %v; ask for the %q profile by name instead", profile, ErrInvalidProfile, errNoRules, ProfileUnconfined)
	}
	return CompilePolicy(profile, pol, mode, arch)
}

// LoadProfile returns the built-in profile of that name, or reads the
// profile file at path; fromFile tells which. A name that is neither
// built-in nor a path (no "/" and no ".json" suffix) is an error, so a
// misspelt built-in name never reads a file.
func LoadProfile(name string) (p *mseccomp.Seccomp, fromFile bool, err error) {
	switch name {
	case ProfileDefault:
		return DefaultProfile(), false, nil
	case ProfileStrict:
		return StrictProfile(), false, nil
	case ProfileUnconfined:
		return nil, false, fmt.Errorf("profile %q has no rules to load: %w", name, ErrInvalidProfile)
	}
	if !strings.Contains(name, "/") && !strings.HasSuffix(name, ".json") {
		return nil, false, fmt.Errorf("profile %q: %w: want %s, %s, %s or a path to a JSON profile", name, ErrInvalidProfile, ProfileDefault, ProfileStrict, ProfileUnconfined)
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, true, fmt.Errorf("read seccomp profile: %w", err)
	}
	p, err = ParseProfile(data)
	if err != nil {
		return nil, true, fmt.Errorf("profile %s: %w", name, err)
	}
	return p, true, nil
}

// allowsEverything reports whether no syscall can be stopped by pol.
func allowsEverything(pol *Policy) bool {
	if !pol.Default.proceeds() {
		return false
	}
	for _, r := range pol.Rules {
		if !r.Action.proceeds() {
			return false
		}
	}
	return true
}

// CompilePolicy compiles a resolved policy; name is recorded in the
// Program. In Audit mode every action that stops a syscall becomes a user
// notification. The launch path is checked on the enforcing program.
func CompilePolicy(name string, pol *Policy, mode Mode, arch Arch) (*Program, error) {
	return compileChecked(name, pol, mode, arch, LaunchPath())
}

// compileChecked compiles pol and requires the enforcing program to let
// every call of mustProceed proceed.
func compileChecked(name string, pol *Policy, mode Mode, arch Arch, mustProceed []Call) (*Program, error) {
	raw, err := compilePolicy(pol, arch)
	if err != nil {
		return nil, fmt.Errorf("compile profile %s for %s: %w", name, arch, err)
	}
	prog := &Program{Profile: name, Arch: arch, Mode: Enforce, Instructions: raw}
	if err := checkCalls(prog, mustProceed); err != nil {
		return nil, fmt.Errorf("profile %s: %w", name, err)
	}
	switch mode {
	case Enforce:
	case Audit:
		raw, err := compilePolicy(auditPolicy(pol), arch)
		if err != nil {
			return nil, fmt.Errorf("compile profile %s for %s (audit): %w", name, arch, err)
		}
		prog = &Program{Profile: name, Arch: arch, Mode: Audit, Instructions: raw}
	default:
		return nil, fmt.Errorf("seccomp mode %q: %w", mode, ErrInvalidProfile)
	}
	return prog, nil
}

// auditPolicy returns pol with every stopping action replaced by a user
// notification.
func auditPolicy(pol *Policy) *Policy {
	notify := func(a Action) Action {
		if a.proceeds() {
			return a
		}
		return Action{Kind: ActNotify}
	}
	out := &Policy{Default: notify(pol.Default), Rules: make([]Rule, len(pol.Rules))}
	for i, r := range pol.Rules {
		r.Action = notify(r.Action)
		out.Rules[i] = r
	}
	return out
}

// Evaluate runs p in golang.org/x/net/bpf's VM on a synthetic seccomp_data
// for syscall nr with args on auditArch (0 means p's own architecture) and
// returns the SECCOMP_RET_* value.
func (p *Program) Evaluate(auditArch, nr uint32, args [6]uint64) (uint32, error) {
	ev, err := p.evaluator()
	if err != nil {
		return 0, err
	}
	return ev(auditArch, nr, args)
}

// evaluator prepares p for repeated evaluation in the VM.
func (p *Program) evaluator() (func(auditArch, nr uint32, args [6]uint64) (uint32, error), error) {
	in, err := p.Arch.info()
	if err != nil {
		return nil, err
	}
	insns, ok := bpf.Disassemble(p.Instructions)
	if !ok {
		return nil, fmt.Errorf("evaluate: program has instructions the VM cannot decode")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		return nil, fmt.Errorf("evaluate: %w", err)
	}
	return func(auditArch, nr uint32, args [6]uint64) (uint32, error) {
		if auditArch == 0 {
			auditArch = in.audit
		}
		// The VM loads words big-endian, the kernel in host order: store
		// each 32-bit word big-endian so a load yields the kernel's value.
		var data [64]byte
		binary.BigEndian.PutUint32(data[offNr:], nr)
		binary.BigEndian.PutUint32(data[offArch:], auditArch)
		for i, v := range args {
			binary.BigEndian.PutUint32(data[offArgs+8*i:], uint32(v))
			binary.BigEndian.PutUint32(data[offArgs+8*i+4:], uint32(v>>32))
		}
		ret, err := vm.Run(data[:])
		if err != nil {
			return 0, fmt.Errorf("evaluate: %w", err)
		}
		return uint32(ret), nil
	}, nil
}
