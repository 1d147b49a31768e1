package seccomp

import (
	"fmt"
	"sort"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// maxInstructions is the kernel's BPF_MAXINSNS for classic BPF filters.
const maxInstructions = 4096

// Offsets in struct seccomp_data (include/uapi/linux/seccomp.h). Both
// supported architectures are little-endian: the low half of a 64-bit
// argument comes first.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

// Classic BPF opcodes (include/uapi/linux/filter.h).
const (
	opLdAbsW = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	opAndK   = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
	opJa     = unix.BPF_JMP | unix.BPF_JA
	opJeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	opJgtK   = unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K
	opJgeK   = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
	opRetK   = unix.BPF_RET | unix.BPF_K
)

// label is a jump target: the instruction it is bound to.
type label struct{ at *insn }

// insn is one instruction during assembly; jumps refer to labels, and
// offsets are resolved only at the end.
type insn struct {
	op     uint16
	k      uint32
	jt, jf *label // conditional jumps (nil = next instruction)
	ja     *label // unconditional jump
}

// asm assembles a forward-only BPF program with symbolic labels.
type asm struct {
	code    []*insn
	pending []*label // labels to bind to the next emitted instruction
}

func (a *asm) emit(in *insn) {
	for _, l := range a.pending {
		l.at = in
	}
	a.pending = a.pending[:0]
	a.code = append(a.code, in)
}

func (a *asm) bind(l *label) { a.pending = append(a.pending, l) }
func (a *asm) ld(off uint32) { a.emit(&insn{op: opLdAbsW, k: off}) }
func (a *asm) and(k uint32)  { a.emit(&insn{op: opAndK, k: k}) }
func (a *asm) ret(k uint32)  { a.emit(&insn{op: opRetK, k: k}) }
func (a *asm) jmp(op uint16, k uint32, jt, jf *label) {
	a.emit(&insn{op: op, k: k, jt: jt, jf: jf})
}

// assemble resolves labels into offsets. A conditional jump reaches at most
// 255 instructions ahead; a farther target gets a trampoline (an
// unconditional jump, whose offset has 32 bits) right after the jump.
func (a *asm) assemble() ([]bpf.RawInstruction, error) {
	if len(a.pending) != 0 {
		return nil, fmt.Errorf("assemble: label bound past the end of the program")
	}
	// "Next instruction" must mean the original next one even after
	// trampolines are inserted: make it an explicit label.
	for i, in := range a.code {
		if in.ja != nil || in.op&0x07 != unix.BPF_JMP {
			continue
		}
		for _, t := range []**label{&in.jt, &in.jf} {
			if *t == nil {
				if i+1 >= len(a.code) {
					return nil, fmt.Errorf("assemble: jump at %d falls off the end", i)
				}
				*t = &label{at: a.code[i+1]}
			}
		}
	}
	for {
		pos := make(map[*insn]int, len(a.code))
		for i, in := range a.code {
			pos[in] = i
		}
		far := func(i int, l *label) bool { return l != nil && pos[l.at]-i-1 > 255 }
		var out []*insn
		changed := false
		for i, in := range a.code {
			out = append(out, in)
			if in.ja != nil {
				continue
			}
			for _, t := range []**label{&in.jt, &in.jf} {
				if far(i, *t) {
					tramp := &insn{op: opJa, ja: *t}
					out = append(out, tramp)
					*t = &label{at: tramp}
					changed = true
				}
			}
		}
		a.code = out
		if !changed {
			break
		}
	}
	if len(a.code) > maxInstructions {
		return nil, fmt.Errorf("%w: program has %d instructions, the kernel accepts %d", ErrInvalidProfile, len(a.code), maxInstructions)
	}
	pos := make(map[*insn]int, len(a.code))
	for i, in := range a.code {
		pos[in] = i
	}
	off := func(i int, l *label) (uint32, error) {
		if l == nil {
			return 0, nil
		}
		p, ok := pos[l.at]
		if !ok || p <= i {
			return 0, fmt.Errorf("assemble: jump at %d to a label that is not ahead", i)
		}
		return uint32(p - i - 1), nil
	}
	raw := make([]bpf.RawInstruction, len(a.code))
	for i, in := range a.code {
		r := bpf.RawInstruction{Op: in.op, K: in.k}
		if in.ja != nil {
			o, err := off(i, in.ja)
			if err != nil {
				return nil, err
			}
			r.K = o
		} else if in.op&0x07 == unix.BPF_JMP {
			jt, err := off(i, in.jt)
			if err != nil {
				return nil, err
			}
			jf, err := off(i, in.jf)
			if err != nil {
				return nil, err
			}
			r.Jt, r.Jf = uint8(jt), uint8(jf)
		}
		raw[i] = r
	}
	return raw, nil
}

// handler decides one syscall number, or a range of numbers with the same
// unconditional action (rules == nil).
type handler struct {
	lo, hi uint32 // inclusive range of syscall numbers
	action Action // unconditional action, or the fallback after rules
	rules  []Rule // conditional rules, in order (single number only)
}

// compilePolicy generates the filter for pol on arch.
func compilePolicy(pol *Policy, arch Arch) ([]bpf.RawInstruction, error) {
	in, err := arch.info()
	if err != nil {
		return nil, err
	}
	type entry struct {
		uncond *Action
		rules  []Rule
	}
	byNr := map[uint32]*entry{}
	for _, r := range pol.Rules {
		nr, ok := in.table[r.Syscall]
		if !ok {
			return nil, fmt.Errorf("%w: syscall %q unknown on %s", ErrInvalidProfile, r.Syscall, arch)
		}
		e := byNr[nr]
		if e == nil {
			e = &entry{}
			byNr[nr] = e
		}
		if len(r.Conds) == 0 {
			if e.uncond != nil && *e.uncond != r.Action {
				return nil, fmt.Errorf("%w: syscall %s has conflicting unconditional actions %s and %s", ErrInvalidProfile, r.Syscall, *e.uncond, r.Action)
			}
			act := r.Action
			e.uncond = &act
			continue
		}
		for _, c := range r.Conds {
			if c.Arg > 5 || c.Op < OpEQ || c.Op > OpMaskedEQ {
				return nil, fmt.Errorf("%w: syscall %s: bad condition %+v", ErrInvalidProfile, r.Syscall, c)
			}
		}
		e.rules = append(e.rules, r)
	}
	nrs := make([]uint32, 0, len(byNr))
	for nr := range byNr {
		nrs = append(nrs, nr)
	}
	sort.Slice(nrs, func(i, j int) bool { return nrs[i] < nrs[j] })

	// Cover every number that reaches the search (below the x32 bit on
	// x86_64, all on aarch64) with handlers; gaps get the default action,
	// and neighbours with the same unconditional action merge.
	top := uint32(0xffffffff)
	if in.x32 {
		top = x32SyscallBit - 1
	}
	var hs []handler
	add := func(h handler) {
		if n := len(hs); n > 0 && h.rules == nil && hs[n-1].rules == nil && hs[n-1].action == h.action && hs[n-1].hi+1 == h.lo {
			hs[n-1].hi = h.hi
			return
		}
		hs = append(hs, h)
	}
	next := uint32(0)
	for _, nr := range nrs {
		if nr > top {
			return nil, fmt.Errorf("%w: syscall number %d out of range", ErrInvalidProfile, nr)
		}
		if nr > next {
			add(handler{lo: next, hi: nr - 1, action: pol.Default})
		}
		e := byNr[nr]
		if e.uncond != nil {
			add(handler{lo: nr, hi: nr, action: *e.uncond})
		} else {
			add(handler{lo: nr, hi: nr, action: pol.Default, rules: e.rules})
		}
		next = nr + 1
	}
	if len(nrs) == 0 || nrs[len(nrs)-1] < top {
		add(handler{lo: next, hi: top, action: pol.Default})
	}

	var a asm
	kill := Action{Kind: ActKillProcess}.ret()
	// Wrong architecture: kill. This also catches i386/arm32 compat calls.
	ok := &label{}
	a.ld(offArch)
	a.jmp(opJeqK, in.audit, ok, nil)
	a.ret(kill)
	a.bind(ok)
	a.ld(offNr)
	if in.x32 {
		// x32 (and any number with that bit) shares AUDIT_ARCH_X86_64:
		// kill. The exception is -1, which a tracer sets to skip a
		// syscall: it gets the default action, as libseccomp does.
		low, x32 := &label{}, &label{}
		a.jmp(opJgeK, x32SyscallBit, nil, low)
		a.jmp(opJeqK, 0xffffffff, nil, x32)
		a.ret(pol.Default.ret())
		a.bind(x32)
		a.ret(kill)
		a.bind(low)
	}
	emitTree(&a, hs)
	return a.assemble()
}

// emitTree emits a binary search over the sorted, contiguous handlers; A
// holds the syscall number.
func emitTree(a *asm, hs []handler) {
	if len(hs) == 1 {
		emitHandler(a, hs[0])
		return
	}
	mid := len(hs) / 2
	right := &label{}
	a.jmp(opJgeK, hs[mid].lo, right, nil)
	emitTree(a, hs[:mid])
	a.bind(right)
	emitTree(a, hs[mid:])
}

func emitHandler(a *asm, h handler) {
	for _, r := range h.rules {
		nextRule := &label{}
		for _, c := range r.Conds {
			pass := &label{}
			emitCond(a, c, pass, nextRule)
			a.bind(pass)
		}
		a.ret(r.Action.ret())
		a.bind(nextRule)
	}
	a.ret(h.action.ret())
}

// emitCond emits a test of c that jumps to t when it holds and to f when it
// does not. 64-bit comparisons test the high half first.
func emitCond(a *asm, c Cond, t, f *label) {
	switch c.Op {
	case OpNE:
		c.Op = OpEQ
		t, f = f, t
	case OpLT:
		c.Op = OpGE
		t, f = f, t
	case OpLE:
		c.Op = OpGT
		t, f = f, t
	}
	lo := uint32(offArgs + 8*uint32(c.Arg))
	hi := lo + 4
	vlo, vhi := uint32(c.Value), uint32(c.Value>>32)
	mlo, mhi := uint32(c.Mask), uint32(c.Mask>>32)
	switch c.Op {
	case OpEQ:
		if !c.Low32 {
			a.ld(hi)
			a.jmp(opJeqK, vhi, nil, f)
		}
		a.ld(lo)
		a.jmp(opJeqK, vlo, t, f)
	case OpMaskedEQ:
		if !c.Low32 {
			a.ld(hi)
			if mhi != 0xffffffff {
				a.and(mhi)
			}
			a.jmp(opJeqK, vhi, nil, f)
		}
		a.ld(lo)
		if mlo != 0xffffffff {
			a.and(mlo)
		}
		a.jmp(opJeqK, vlo, t, f)
	case OpGT, OpGE:
		if !c.Low32 {
			a.ld(hi)
			a.jmp(opJgtK, vhi, t, nil)
			a.jmp(opJeqK, vhi, nil, f)
		}
		a.ld(lo)
		op := uint16(opJgtK)
		if c.Op == OpGE {
			op = opJgeK
		}
		a.jmp(op, vlo, t, f)
	}
}
