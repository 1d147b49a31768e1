package seccomp

import (
	"os"
	"testing"
)

func benchLoop(b *testing.B, profile, kind string) {
	var p *Program
	if profile != "" {
		p = mustCompile(b, profile, Enforce)
	}
	b.ResetTimer()
	d, err := SyscallLoop(p, kind, b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "ns/syscall")
}

// BenchmarkSyscall compares a syscall-heavy loop without a filter and
// under the default and strict profiles. The ratio is printed by
// internal/seccomp/internal/seccompbench.
func BenchmarkSyscall(b *testing.B) {
	for _, kind := range []string{"getppid", "read"} {
		b.Run(kind+"/none", func(b *testing.B) { benchLoop(b, "", kind) })
		b.Run(kind+"/default", func(b *testing.B) { benchLoop(b, ProfileDefault, kind) })
		b.Run(kind+"/strict", func(b *testing.B) { benchLoop(b, ProfileStrict, kind) })
	}
}

// BenchmarkCompileDefault measures compiling the default profile (load,
// resolve, generate, launch-path check) for this machine.
func BenchmarkCompileDefault(b *testing.B) {
	arch := nativeArch(b)
	k, err := HostKernel()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := CompileFor(ProfileDefault, Enforce, arch, k); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProcessStart is the peer of BenchmarkCompileDefault: one
// fork+exec+wait of /bin/true.
func BenchmarkProcessStart(b *testing.B) {
	for b.Loop() {
		if err := compilePeer(); err != nil {
			b.Fatal(err)
		}
	}
}

// compilePeer starts and reaps one process.
func compilePeer() error {
	var attr os.ProcAttr
	proc, err := os.StartProcess("/bin/true", []string{"true"}, &attr)
	if err != nil {
		return err
	}
	_, err = proc.Wait()
	return err
}
