// Command seccompbench prints the cost of IronClaw's seccomp filters as
// medians over interleaved rounds, each with its ratio to a peer measured
// in the same run:
//
//   - a loop of getppid (and of 1-byte reads of /dev/zero) on a thread with
//     the default (and strict) profile, against the same loop unfiltered;
//   - compiling the default profile, against starting one process.
//
// Usage: go run ./internal/seccomp/internal/seccompbench [-rounds 15] [-n 200000]
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/ironclaw/ironclaw/internal/seccomp"
)

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func main() {
	rounds := flag.Int("rounds", 15, "interleaved rounds per measurement")
	n := flag.Int("n", 200000, "syscalls per loop")
	flag.Parse()
	if err := run(*rounds, *n); err != nil {
		fmt.Fprintln(os.Stderr, "seccompbench:", err)
		os.Exit(1)
	}
}

func run(rounds, n int) error {
	arch, err := seccomp.NativeArch()
	if err != nil {
		return err
	}
	progs := map[string]*seccomp.Program{"none": nil}
	for _, name := range []string{seccomp.ProfileDefault, seccomp.ProfileStrict} {
		if progs[name], err = seccomp.Compile(name, seccomp.Enforce, arch); err != nil {
			return err
		}
	}
	order := []string{"none", seccomp.ProfileDefault, seccomp.ProfileStrict}
	fmt.Printf("syscall loop: %d calls per round, %d rounds, median ns/syscall\n", n, rounds)
	for _, kind := range []string{"getppid", "read"} {
		res := map[string][]time.Duration{}
		for r := 0; r < rounds; r++ {
			for _, name := range order {
				d, err := seccomp.SyscallLoop(progs[name], kind, n)
				if err != nil {
					return err
				}
				res[name] = append(res[name], d/time.Duration(n))
			}
		}
		base := median(res["none"])
		for _, name := range order {
			m := median(res[name])
			fmt.Printf("  %-8s %-8s %6.1f ns   ratio to none %.2fx\n", kind, name, float64(m.Nanoseconds()), float64(m)/float64(base))
		}
	}
	k, err := seccomp.HostKernel()
	if err != nil {
		return err
	}
	var comp, start []time.Duration
	for r := 0; r < rounds*4; r++ {
		t0 := time.Now()
		if _, err := seccomp.CompileFor(seccomp.ProfileDefault, seccomp.Enforce, arch, k); err != nil {
			return err
		}
		comp = append(comp, time.Since(t0))
		t0 = time.Now()
		if err := startTrue(); err != nil {
			return err
		}
		start = append(start, time.Since(t0))
	}
	mc, ms := median(comp), median(start)
	fmt.Printf("compile default profile: median %v; one process start (/bin/true): median %v; ratio %.2fx\n", mc, ms, float64(mc)/float64(ms))
	return nil
}

func startTrue() error {
	var attr os.ProcAttr
	p, err := os.StartProcess("/bin/true", []string{"true"}, &attr)
	if err != nil {
		return err
	}
	_, err = p.Wait()
	return err
}
