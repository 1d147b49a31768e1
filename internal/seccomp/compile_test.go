package seccomp

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	mseccomp "github.com/moby/profiles/seccomp"
	"golang.org/x/sys/unix"
)

var (
	arches = []Arch{ArchX86_64, ArchAARCH64}
	kernel = KernelVersion{6, 18}
)

// refDecide is an independent reading of Policy's documented semantics,
// to check the generated BPF against.
func refDecide(pol *Policy, arch Arch, auditArch, nr uint32, args [6]uint64) uint32 {
	in := archInfos[arch]()
	if auditArch != in.audit {
		return unix.SECCOMP_RET_KILL_PROCESS
	}
	if nr == 0xffffffff {
		return pol.Default.ret()
	}
	if in.x32 && nr&x32SyscallBit != 0 {
		return unix.SECCOMP_RET_KILL_PROCESS
	}
	var conditional []Rule
	for _, r := range pol.Rules {
		if in.table[r.Syscall] != nr {
			continue
		}
		if len(r.Conds) == 0 {
			return r.Action.ret()
		}
		conditional = append(conditional, r)
	}
	for _, r := range conditional {
		all := true
		for _, c := range r.Conds {
			all = all && refHolds(c, args[c.Arg])
		}
		if all {
			return r.Action.ret()
		}
	}
	return pol.Default.ret()
}

func refHolds(c Cond, v uint64) bool {
	val, mask := c.Value, c.Mask
	if c.Low32 {
		v, val, mask = uint64(uint32(v)), uint64(uint32(val)), uint64(uint32(mask))
	}
	switch c.Op {
	case OpEQ:
		return v == val
	case OpNE:
		return v != val
	case OpLT:
		return v < val
	case OpLE:
		return v <= val
	case OpGT:
		return v > val
	case OpGE:
		return v >= val
	case OpMaskedEQ:
		return v&mask == val
	}
	panic("bad op")
}

func compileFor(t testing.TB, pol *Policy, mode Mode, arch Arch) *Program {
	t.Helper()
	p, err := CompilePolicy("test", pol, mode, arch)
	if err != nil {
		t.Fatalf("CompilePolicy: %v", err)
	}
	return p
}

func eval(t testing.TB, p *Program, nr uint32, args [6]uint64) uint32 {
	t.Helper()
	ret, err := p.Evaluate(0, nr, args)
	if err != nil {
		t.Fatal(err)
	}
	return ret
}

func nr(t testing.TB, a Arch, name string) uint32 {
	t.Helper()
	n, ok := a.SyscallNumber(name)
	if !ok {
		t.Fatalf("%s unknown on %s", name, a)
	}
	return n
}

func TestTablesGenerated(t *testing.T) {
	// Spot checks against the kernel's unistd tables.
	for _, c := range []struct {
		a    Arch
		name string
		nr   uint32
	}{
		{ArchX86_64, "read", 0}, {ArchX86_64, "execve", 59}, {ArchX86_64, "clone3", 435}, {ArchX86_64, "ptrace", 101},
		{ArchAARCH64, "read", 63}, {ArchAARCH64, "execve", 221}, {ArchAARCH64, "clone3", 435}, {ArchAARCH64, "ptrace", 117},
	} {
		if got := nr(t, c.a, c.name); got != c.nr {
			t.Errorf("%s %s = %d, want %d", c.a, c.name, got, c.nr)
		}
	}
	if _, ok := ArchAARCH64.SyscallNumber("open"); ok {
		t.Error("aarch64 has no open(2)")
	}
}

func TestCompileDeterministic(t *testing.T) {
	for _, a := range arches {
		for _, name := range []string{ProfileDefault, ProfileStrict} {
			for _, m := range []Mode{Enforce, Audit} {
				p1, err := CompileFor(name, m, a, kernel)
				if err != nil {
					t.Fatal(err)
				}
				p2, err := CompileFor(name, m, a, kernel)
				if err != nil {
					t.Fatal(err)
				}
				j1, _ := json.Marshal(p1)
				j2, _ := json.Marshal(p2)
				if string(j1) != string(j2) {
					t.Fatalf("%s/%s/%s: two compilations differ", a, name, m)
				}
				var back Program
				if err := json.Unmarshal(j1, &back); err != nil || back.Digest() != p1.Digest() {
					t.Fatalf("%s/%s/%s: JSON round trip: %v", a, name, m, err)
				}
			}
		}
	}
}

func TestArchAndX32KilledVM(t *testing.T) {
	for _, a := range arches {
		for _, name := range []string{ProfileDefault, ProfileStrict} {
			p, err := CompileFor(name, Enforce, a, kernel)
			if err != nil {
				t.Fatal(err)
			}
			read := nr(t, a, "read")
			if got := eval(t, p, read, [6]uint64{}); got != unix.SECCOMP_RET_ALLOW {
				t.Fatalf("%s/%s: read = %#x, want allow", a, name, got)
			}
			for _, wrong := range []uint32{unix.AUDIT_ARCH_I386, unix.AUDIT_ARCH_X86_64, unix.AUDIT_ARCH_AARCH64, unix.AUDIT_ARCH_ARM, 1} {
				if wrong == archInfos[a]().audit {
					continue
				}
				got, err := p.Evaluate(wrong, read, [6]uint64{})
				if err != nil || got != unix.SECCOMP_RET_KILL_PROCESS {
					t.Errorf("%s/%s: arch %#x: %#x, %v; want KILL_PROCESS", a, name, wrong, got, err)
				}
			}
			for _, n := range []uint32{x32SyscallBit | read, x32SyscallBit | 39, x32SyscallBit | 512, 0xfffffffe, 0xffffffff} {
				want := uint32(unix.SECCOMP_RET_KILL_PROCESS) // x32 on x86_64
				if a == ArchAARCH64 || n == 0xffffffff {
					want = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM) // no such syscall, or a tracer's skip
				}
				if got := eval(t, p, n, [6]uint64{}); got != want {
					t.Errorf("%s/%s: nr %#x = %#x, want %#x", a, name, n, got, want)
				}
			}
			// Unknown numbers below the x32 bit get the default action.
			if got := eval(t, p, 4000, [6]uint64{}); got != unix.SECCOMP_RET_ERRNO|uint32(unix.EPERM) {
				t.Errorf("%s/%s: nr 4000 = %#x, want ERRNO(EPERM)", a, name, got)
			}
		}
	}
}

func TestActionsVM(t *testing.T) {
	acts := []Action{
		{Kind: ActAllow}, {Kind: ActErrno, Data: 13}, {Kind: ActKillProcess}, {Kind: ActKillThread},
		{Kind: ActTrap, Data: 7}, {Kind: ActLog}, {Kind: ActTrace, Data: 3},
	}
	for _, a := range arches {
		for _, def := range acts {
			for _, act := range acts {
				pol := &Policy{Default: def, Rules: []Rule{
					{Syscall: "uname", Action: act},
					{Syscall: "getcwd", Action: act, Conds: []Cond{{Arg: 0, Op: OpEQ, Value: 5}}},
				}}
				// Launch-path syscalls must proceed; give them an allow.
				for _, c := range LaunchPath() {
					pol.Rules = append(pol.Rules, Rule{Syscall: c.Name, Action: Action{Kind: ActAllow}})
				}
				p := compileFor(t, pol, Enforce, a)
				if got := eval(t, p, nr(t, a, "uname"), [6]uint64{}); got != act.ret() {
					t.Errorf("%s: uname under %s = %#x, want %#x", a, act, got, act.ret())
				}
				if got := eval(t, p, nr(t, a, "getcwd"), [6]uint64{5}); got != act.ret() {
					t.Errorf("%s: getcwd(5) under %s = %#x, want %#x", a, act, got, act.ret())
				}
				if got := eval(t, p, nr(t, a, "getcwd"), [6]uint64{6}); got != def.ret() {
					t.Errorf("%s: getcwd(6), default %s = %#x, want %#x", a, def, got, def.ret())
				}
				au := compileFor(t, pol, Audit, a)
				want := act.ret()
				if !act.proceeds() {
					want = unix.SECCOMP_RET_USER_NOTIF
				}
				if got := eval(t, au, nr(t, a, "uname"), [6]uint64{}); got != want {
					t.Errorf("%s: audit uname under %s = %#x, want %#x", a, act, got, want)
				}
			}
		}
	}
}

// edgeValues are argument values around 32-bit and sign boundaries.
var edgeValues = []uint64{0, 1, 2, 3, 0x7f, 0xff, 0x7fffffff, 0x80000000, 0xffffffff, 1 << 32, 1<<32 + 1, 0xffffffff00000000, 0x7fffffffffffffff, 0x8000000000000000, ^uint64(0), ^uint64(0) - 1}

func randValue(r *rand.Rand) uint64 {
	switch r.IntN(4) {
	case 0:
		return edgeValues[r.IntN(len(edgeValues))]
	case 1:
		return uint64(r.Uint32())
	case 2:
		return uint64(r.IntN(8))
	}
	return r.Uint64()
}

func TestConditionsVM(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	allow := Action{Kind: ActAllow}
	for _, a := range arches {
		for i := 0; i < 300; i++ {
			pol := &Policy{Default: Action{Kind: ActErrno, Data: 1}}
			for _, c := range LaunchPath() {
				pol.Rules = append(pol.Rules, Rule{Syscall: c.Name, Action: allow})
			}
			// Up to 3 rules on getpid, each with up to 3 conditions.
			for j := 0; j <= r.IntN(3); j++ {
				rule := Rule{Syscall: "getpid", Action: Action{Kind: ActErrno, Data: uint16(10 + j)}}
				for k := 0; k <= r.IntN(3); k++ {
					c := Cond{Arg: uint8(r.IntN(6)), Op: Op(1 + r.IntN(7)), Value: randValue(r), Low32: r.IntN(3) == 0}
					if c.Op == OpMaskedEQ {
						c.Mask = randValue(r)
						if r.IntN(2) == 0 {
							c.Value &= c.Mask
						}
					}
					rule.Conds = append(rule.Conds, c)
				}
				pol.Rules = append(pol.Rules, rule)
			}
			p := compileFor(t, pol, Enforce, a)
			getpid := nr(t, a, "getpid")
			for k := 0; k < 40; k++ {
				var args [6]uint64
				for x := range args {
					args[x] = randValue(r)
				}
				// Sometimes hit the compared values exactly.
				for _, rule := range pol.Rules[len(LaunchPath()):] {
					for _, c := range rule.Conds {
						if r.IntN(2) == 0 {
							args[c.Arg] = c.Value
						}
					}
				}
				want := refDecide(pol, a, archInfos[a]().audit, getpid, args)
				if got := eval(t, p, getpid, args); got != want {
					t.Fatalf("%s: rules %+v args %#x: BPF %#x, reference %#x", a, pol.Rules[len(LaunchPath()):], args, got, want)
				}
			}
		}
	}
}

func TestFarJumpsVM(t *testing.T) {
	allow := Action{Kind: ActAllow}
	for _, a := range arches {
		pol := &Policy{Default: Action{Kind: ActErrno, Data: 1}}
		for _, c := range LaunchPath() {
			pol.Rules = append(pol.Rules, Rule{Syscall: c.Name, Action: allow})
		}
		// 150 rules × 2 conditions on one syscall: its block is far longer
		// than a conditional jump reaches; plus every third syscall gets
		// a conditional rule, so the search tree spans thousands.
		for i := 0; i < 150; i++ {
			pol.Rules = append(pol.Rules, Rule{Syscall: "uname", Action: Action{Kind: ActErrno, Data: uint16(100 + i)},
				Conds: []Cond{{Arg: 0, Op: OpEQ, Value: uint64(i)}, {Arg: 1, Op: OpGT, Value: uint64(i) << 33}}})
		}
		names := a.Syscalls()
		for i, n := range names {
			if i%3 != 0 || n == "uname" || slices.ContainsFunc(LaunchPath(), func(c Call) bool { return c.Name == n }) {
				continue
			}
			pol.Rules = append(pol.Rules, Rule{Syscall: n, Action: Action{Kind: ActErrno, Data: uint16(i)}, Conds: []Cond{{Arg: 2, Op: OpMaskedEQ, Mask: 0xf0, Value: 0x10}}})
		}
		p := compileFor(t, pol, Enforce, a)
		jas := 0
		for _, in := range p.Instructions {
			if in.Op == opJa {
				jas++
			}
		}
		if jas == 0 || len(p.Instructions) < 1000 {
			t.Fatalf("%s: %d instructions, %d trampolines: the test does not exercise far jumps", a, len(p.Instructions), jas)
		}
		t.Logf("%s: %d instructions, %d trampolines", a, len(p.Instructions), jas)
		r := rand.New(rand.NewPCG(3, 4))
		for _, n := range names {
			num := nr(t, a, n)
			for k := 0; k < 4; k++ {
				args := [6]uint64{uint64(r.IntN(160)), randValue(r), uint64(r.IntN(0x40)), 0, 0, 0}
				if want, got := refDecide(pol, a, archInfos[a]().audit, num, args), eval(t, p, num, args); got != want {
					t.Fatalf("%s: %s%#x: BPF %#x, reference %#x", a, n, args, got, want)
				}
			}
		}
	}
}

func TestDefaultProfileDecisionsVM(t *testing.T) {
	eperm := unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	enosys := unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	for _, a := range arches {
		p, err := CompileFor(ProfileDefault, Enforce, a, kernel)
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range tightenings() {
			for _, n := range tg.names {
				num, ok := a.SyscallNumber(n)
				if !ok {
					continue
				}
				if got := eval(t, p, num, [6]uint64{}); got != eperm {
					t.Errorf("%s: %s = %#x, want ERRNO(EPERM)", a, n, got)
				}
			}
		}
		for _, c := range []struct {
			name string
			args [6]uint64
			want uint32
		}{
			{"clone", [6]uint64{unix.CLONE_VM | unix.CLONE_THREAD | unix.CLONE_SIGHAND}, unix.SECCOMP_RET_ALLOW},
			{"clone", [6]uint64{unix.CLONE_NEWUSER}, eperm},
			{"clone", [6]uint64{unix.CLONE_NEWNET | unix.CLONE_VFORK}, eperm},
			{"clone", [6]uint64{unix.CLONE_NEWCGROUP}, eperm},
			{"clone3", [6]uint64{}, enosys},
			{"personality", [6]uint64{0}, unix.SECCOMP_RET_ALLOW},
			{"personality", [6]uint64{0xffffffff}, unix.SECCOMP_RET_ALLOW},
			{"personality", [6]uint64{0x0040000}, eperm},
			{"personality", [6]uint64{1<<32 | 0}, eperm},
			{"socket", [6]uint64{unix.AF_UNIX}, unix.SECCOMP_RET_ALLOW},
			{"socket", [6]uint64{unix.AF_INET6}, unix.SECCOMP_RET_ALLOW},
			{"socket", [6]uint64{unix.AF_VSOCK}, eperm},
			{"socket", [6]uint64{unix.AF_ALG}, eperm},
			{"socket", [6]uint64{1<<32 | unix.AF_UNIX}, eperm},
			{"execve", [6]uint64{}, unix.SECCOMP_RET_ALLOW},
			{"name_to_handle_at", [6]uint64{}, unix.SECCOMP_RET_ALLOW},
		} {
			if got := eval(t, p, nr(t, a, c.name), c.args); got != c.want {
				t.Errorf("%s: %s%#x = %#x, want %#x", a, c.name, c.args, got, c.want)
			}
		}
	}
}

func writeProfile(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "profile.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLaunchPathRejected(t *testing.T) {
	p := DefaultProfile()
	for _, sc := range p.Syscalls {
		sc.Names = slices.DeleteFunc(sc.Names, func(n string) bool { return n == "execve" || n == "pipe2" })
	}
	p.Syscalls = slices.DeleteFunc(p.Syscalls, func(sc *mseccomp.Syscall) bool { return len(sc.Names) == 0 })
	_, err := CompileFor(writeProfile(t, p), Enforce, ArchX86_64, kernel)
	if !errors.Is(err, ErrLaunchPath) || !strings.Contains(err.Error(), "execve") || !strings.Contains(err.Error(), "pipe2") {
		t.Fatalf("err = %v, want ErrLaunchPath naming execve and pipe2", err)
	}
	// A profile that kills on clone with CLONE_VFORK is caught too.
	raw := `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["clone"],"action":"SCMP_ACT_KILL_PROCESS","args":[{"index":0,"value":16384,"valueTwo":16384,"op":"SCMP_CMP_MASKED_EQ"}]}]}`
	path := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(path, []byte(raw), 0o600)
	if _, err := CompileFor(path, Enforce, ArchAARCH64, kernel); !errors.Is(err, ErrLaunchPath) || !strings.Contains(err.Error(), "clone") {
		t.Fatalf("err = %v, want ErrLaunchPath naming clone", err)
	}
}

func TestProfileErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ json, want string }{
		{`{}`, "defaultAction"},
		{`{"defaultAction":"SCMP_ACT_ALLOW"}`, "unconfined"},
		{`{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_LOG"}]}`, "unconfined"},
		{`{"defaultAction":"SCMP_ACT_NOPE"}`, "defaultAction"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","agrs":[]}]}`, "agrs"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}`, "syscalls[0].args[0].index"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_XX"}]}]}`, "syscalls[0].args[0].op"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}`, "SCMP_ACT_NOTIFY"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":[],"action":"SCMP_ACT_ALLOW"}]}`, "syscalls[0].names"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}`, "errnoRet"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","flags":["SECCOMP_FILTER_FLAG_LOG"]}`, "flags"},
		{`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"},{"names":["read"],"action":"SCMP_ACT_KILL"}]}`, "conflicting"},
		{`{"defaultAction":"SCMP_ACT_ERRNO"} x`, "trailing"},
	} {
		path := filepath.Join(dir, "p.json")
		if err := os.WriteFile(path, []byte(c.json), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := CompileFor(path, Enforce, ArchX86_64, kernel)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one naming %q", c.json, err, c.want)
		}
	}
	for _, name := range []string{"defualt", "Strict", "", "unconfined "} {
		if _, err := CompileFor(name, Enforce, ArchX86_64, kernel); err == nil {
			t.Errorf("profile %q compiled; want an error", name)
		}
	}
	if _, err := CompileFor(ProfileDefault, "log", ArchX86_64, kernel); err == nil {
		t.Error("mode log accepted")
	}
	if _, err := CompileFor(ProfileDefault, Enforce, "riscv64", kernel); !errors.Is(err, ErrUnsupported) {
		t.Errorf("riscv64: err = %v, want ErrUnsupported", err)
	}
	u, err := CompileFor(ProfileUnconfined, Enforce, ArchX86_64, kernel)
	if err != nil || !u.Unconfined {
		t.Fatalf("unconfined: %+v, %v", u, err)
	}
}

func FuzzCompileProfile(f *testing.F) {
	for _, p := range []*mseccomp.Seccomp{DefaultProfile(), StrictProfile()} {
		data, err := json.Marshal(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"defaultAction":"SCMP_ACT_KILL_PROCESS","syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"valueTwo":1,"op":"SCMP_CMP_MASKED_EQ"},{"index":0,"value":5,"op":"SCMP_CMP_GT"}]}]}`))
	f.Add([]byte(`{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],"syscalls":[{"name":"ptrace","action":"SCMP_ACT_TRAP","includes":{"minKernel":"4.8","arches":["amd64"]},"excludes":{"caps":["CAP_SYS_PTRACE"]}}]}`))
	f.Add([]byte(`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":99999}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProfile(data)
		if err != nil {
			return
		}
		for _, a := range arches {
			pol, err := Resolve(p, a, kernel)
			if err != nil {
				continue
			}
			for _, m := range []Mode{Enforce, Audit} {
				prog, err := CompilePolicy("fuzz", pol, m, a)
				if err != nil {
					continue
				}
				if _, err := prog.Evaluate(0, 0, [6]uint64{1, 2, 3}); err != nil {
					t.Fatalf("compiled program does not run: %v", err)
				}
			}
		}
	})
}

// FuzzDecodeInstructions: any byte string either decodes to 1..4096
// instructions that encode back to the same bytes, or is an error.
func FuzzDecodeInstructions(f *testing.F) {
	arch, err := NativeArch()
	if err != nil {
		f.Fatal(err)
	}
	p, err := CompileFor(ProfileDefault, Enforce, arch, KernelVersion{Major: 6, Minor: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(AppendInstructions(nil, p.Instructions))
	f.Add([]byte{6, 0, 0, 0, 0, 0, 0xff, 0x7f})
	f.Add([]byte{1, 2, 3})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ins, err := DecodeInstructions(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidProfile) {
				t.Fatalf("%x: error %v is not ErrInvalidProfile", b, err)
			}
			return
		}
		if len(ins) == 0 || len(ins) > maxInstructions {
			t.Fatalf("%x: decoded %d instructions", b, len(ins))
		}
		if got := AppendInstructions(nil, ins); !bytes.Equal(got, b) {
			t.Fatalf("%x re-encodes as %x", b, got)
		}
	})
}
