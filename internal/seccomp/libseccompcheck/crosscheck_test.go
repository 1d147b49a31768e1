//go:build cgo && libseccomp

package libseccompcheck

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	libseccomp "github.com/seccomp/libseccomp-golang"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/ironclaw/ironclaw/internal/seccomp"
)

var kernel = seccomp.KernelVersion{Major: 6, Minor: 18}

func scmpArch(a seccomp.Arch) libseccomp.ScmpArch {
	if a == seccomp.ArchAARCH64 {
		return libseccomp.ArchARM64
	}
	return libseccomp.ArchAMD64
}

func scmpAction(a seccomp.Action) (libseccomp.ScmpAction, error) {
	switch a.Kind {
	case seccomp.ActAllow:
		return libseccomp.ActAllow, nil
	case seccomp.ActErrno:
		return libseccomp.ActErrno.SetReturnCode(int16(a.Data)), nil
	case seccomp.ActKillProcess:
		return libseccomp.ActKillProcess, nil
	case seccomp.ActKillThread:
		return libseccomp.ActKillThread, nil
	case seccomp.ActTrap:
		return libseccomp.ActTrap, nil
	case seccomp.ActLog:
		return libseccomp.ActLog, nil
	}
	return 0, fmt.Errorf("action %v not mapped", a)
}

var ops = map[seccomp.Op]libseccomp.ScmpCompareOp{
	seccomp.OpEQ: libseccomp.CompareEqual, seccomp.OpNE: libseccomp.CompareNotEqual,
	seccomp.OpLT: libseccomp.CompareLess, seccomp.OpLE: libseccomp.CompareLessOrEqual,
	seccomp.OpGT: libseccomp.CompareGreater, seccomp.OpGE: libseccomp.CompareGreaterEqual,
	seccomp.OpMaskedEQ: libseccomp.CompareMaskedEqual,
}

// libseccompProgram builds pol with libseccomp for arch only and exports
// its BPF. It returns the syscall names libseccomp does not know (its table
// is older than x/sys's): decisions on those cannot be compared.
func libseccompProgram(t *testing.T, pol *seccomp.Policy, arch seccomp.Arch) ([]bpf.RawInstruction, map[string]bool) {
	t.Helper()
	def, err := scmpAction(pol.Default)
	if err != nil {
		t.Fatal(err)
	}
	f, err := libseccomp.NewFilter(def)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Release()
	native, err := libseccomp.GetNativeArch()
	if err != nil {
		t.Fatal(err)
	}
	if native != scmpArch(arch) {
		if err := f.AddArch(scmpArch(arch)); err != nil {
			t.Fatal(err)
		}
		if err := f.RemoveArch(native); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.SetBadArchAction(libseccomp.ActKillProcess); err != nil {
		t.Fatal(err)
	}
	unknown := map[string]bool{}
	for _, r := range pol.Rules {
		// libseccomp wants the native (or pseudo) number and translates it
		// by name for each architecture of the filter.
		call, err := libseccomp.GetSyscallFromName(r.Syscall)
		if _, aerr := libseccomp.GetSyscallFromNameByArch(r.Syscall, scmpArch(arch)); err != nil || aerr != nil {
			unknown[r.Syscall] = true
			continue
		}
		act, err := scmpAction(r.Action)
		if err != nil {
			t.Fatal(err)
		}
		var conds []libseccomp.ScmpCondition
		for _, c := range r.Conds {
			vals := []uint64{c.Value}
			if c.Op == seccomp.OpMaskedEQ {
				vals = []uint64{c.Mask, c.Value} // libseccomp: (arg & datum_a) == datum_b
			}
			cond, err := libseccomp.MakeCondition(uint(c.Arg), ops[c.Op], vals...)
			if err != nil {
				t.Fatal(err)
			}
			conds = append(conds, cond)
		}
		if len(conds) == 0 {
			err = f.AddRule(call, act)
		} else {
			err = f.AddRuleConditional(call, act, conds)
		}
		if err != nil {
			t.Fatalf("libseccomp: add %s %v: %v", r.Syscall, r.Conds, err)
		}
	}
	tmp, err := os.CreateTemp(t.TempDir(), "bpf")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	if err := f.ExportBPF(tmp); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(tmp.Name())
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]bpf.RawInstruction, len(data)/8)
	for i := range raw {
		b := data[8*i:]
		raw[i] = bpf.RawInstruction{Op: binary.NativeEndian.Uint16(b), Jt: b[2], Jf: b[3], K: binary.NativeEndian.Uint32(b[4:])}
	}
	return raw, unknown
}

// argSets are the arguments tried on every syscall: zeros, edge values,
// every value a rule compares against (and its neighbours), and random.
func argSets(pol *seccomp.Policy, r *rand.Rand) [][6]uint64 {
	sets := [][6]uint64{{}, {^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}}
	edges := []uint64{0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 1 << 32, 1<<32 | 1, ^uint64(0)}
	for _, e := range edges {
		for i := 0; i < 6; i++ {
			var a [6]uint64
			a[i] = e
			sets = append(sets, a)
		}
	}
	for _, rule := range pol.Rules {
		for _, c := range rule.Conds {
			for _, v := range []uint64{c.Value, c.Value + 1, c.Value - 1, c.Value | 1<<32, c.Value | c.Mask, c.Mask, c.Value ^ 0x4} {
				var a [6]uint64
				a[c.Arg] = v
				sets = append(sets, a)
			}
		}
	}
	for i := 0; i < 30; i++ {
		var a [6]uint64
		for j := range a {
			a[j] = r.Uint64()
			if r.IntN(2) == 0 {
				a[j] &= 0xffffffff
			}
		}
		sets = append(sets, a)
	}
	return sets
}

func run(t *testing.T, raw []bpf.RawInstruction, auditArch, nr uint32, args [6]uint64) uint32 {
	t.Helper()
	insns, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("undecodable BPF")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	var data [64]byte
	binary.BigEndian.PutUint32(data[0:], nr)
	binary.BigEndian.PutUint32(data[4:], auditArch)
	for i, v := range args {
		binary.BigEndian.PutUint32(data[16+8*i:], uint32(v))
		binary.BigEndian.PutUint32(data[20+8*i:], uint32(v>>32))
	}
	ret, err := vm.Run(data[:])
	if err != nil {
		t.Fatal(err)
	}
	return uint32(ret)
}

func TestCrossCheckLibseccomp(t *testing.T) {
	major, minor, micro := libseccomp.GetLibraryVersion()
	t.Logf("libseccomp %d.%d.%d", major, minor, micro)
	audit := map[seccomp.Arch]uint32{seccomp.ArchX86_64: unix.AUDIT_ARCH_X86_64, seccomp.ArchAARCH64: unix.AUDIT_ARCH_AARCH64}
	for _, profile := range []string{seccomp.ProfileDefault, seccomp.ProfileStrict} {
		for _, arch := range []seccomp.Arch{seccomp.ArchX86_64, seccomp.ArchAARCH64} {
			t.Run(profile+"/"+string(arch), func(t *testing.T) {
				p, _, err := seccomp.LoadProfile(profile)
				if err != nil {
					t.Fatal(err)
				}
				pol, err := seccomp.Resolve(p, arch, kernel)
				if err != nil {
					t.Fatal(err)
				}
				ours, err := seccomp.CompilePolicy(profile, pol, seccomp.Enforce, arch)
				if err != nil {
					t.Fatal(err)
				}
				theirs, unknown := libseccompProgram(t, pol, arch)
				r := rand.New(rand.NewPCG(7, 8))
				sets := argSets(pol, r)
				compared := 0
				for _, name := range arch.Syscalls() {
					if unknown[name] {
						continue
					}
					nr, _ := arch.SyscallNumber(name)
					for _, args := range sets {
						got, want := run(t, ours.Instructions, audit[arch], nr, args), run(t, theirs, audit[arch], nr, args)
						if got != want {
							t.Fatalf("%s%#x: ironclaw %#x, libseccomp %#x", name, args, got, want)
						}
						compared++
					}
				}
				// Foreign architectures and numbers outside the tables.
				for _, a := range []uint32{unix.AUDIT_ARCH_I386, unix.AUDIT_ARCH_X86_64, unix.AUDIT_ARCH_AARCH64, unix.AUDIT_ARCH_ARM} {
					for _, nr := range []uint32{0, 1, 59, 221, 1000, 4095, 0x40000000 | 39, 0x40000000 | 512, 0xffffffff} {
						got, want := run(t, ours.Instructions, a, nr, [6]uint64{}), run(t, theirs, a, nr, [6]uint64{})
						if got != want {
							t.Fatalf("arch %#x nr %#x: ironclaw %#x, libseccomp %#x", a, nr, got, want)
						}
						compared++
					}
				}
				names := make([]string, 0, len(unknown))
				for n := range unknown {
					names = append(names, n)
				}
				t.Logf("%d decisions identical; %d syscalls unknown to this libseccomp, not compared: %v", compared, len(unknown), names)
				if compared < 10000 {
					t.Fatalf("only %d decisions compared", compared)
				}
			})
		}
	}
}
