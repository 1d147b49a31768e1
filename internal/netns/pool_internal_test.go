package netns

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

const leaseHelperEnv = "IRONCLAW_TEST_LEASE_HELPER"

type leaseHelperSpec struct {
	Dir, Owner, KillAt, Candidate string
}

func leaseTestPool(dir string) AddrPool {
	return AddrPool{Prefix: netip.MustParsePrefix("10.200.0.0/28"), Dir: dir}
}

// TestLeaseHelperProcess is not a test: it is the body of the helper
// process TestLeaseCrash re-executes the test binary as. It takes a lease,
// noting each candidate first as the caller's GC record would, and
// SIGKILLs itself at the step named in its spec.
func TestLeaseHelperProcess(t *testing.T) {
	raw := os.Getenv(leaseHelperEnv)
	if raw == "" {
		return
	}
	var s leaseHelperSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		t.Fatal(err)
	}
	kill := func() { syscall.Kill(os.Getpid(), syscall.SIGKILL); select {} }
	p := leaseTestPool(s.Dir)
	p.step = func(name string) {
		if name == s.KillAt {
			kill()
		}
	}
	if _, err := p.Take(s.Owner, func(l Lease) error {
		b, err := json.Marshal(l)
		if err != nil {
			return err
		}
		return os.WriteFile(s.Candidate, b, 0o600)
	}); err != nil {
		t.Fatal(err)
	}
	kill()
}

// TestLeaseCrash SIGKILLs a process at every step of taking a lease and
// checks that releasing the lease its record names (what GC does) leaves
// the pool's directory empty: no lease is ever stranded without an owner.
func TestLeaseCrash(t *testing.T) {
	for _, step := range []string{"written", "linked", "done"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			spec := leaseHelperSpec{Dir: filepath.Join(dir, "leases"), Owner: "sandbox-key", KillAt: step, Candidate: filepath.Join(dir, "candidate.json")}
			raw, err := json.Marshal(spec)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("/proc/self/exe", "-test.run=^TestLeaseHelperProcess$")
			cmd.Env = append(os.Environ(), leaseHelperEnv+"="+string(raw))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper was not killed at %s: %v\n%s", step, err, out)
			}
			b, err := os.ReadFile(spec.Candidate)
			if err != nil {
				t.Fatal(err)
			}
			var l Lease
			if err := json.Unmarshal(b, &l); err != nil {
				t.Fatal(err)
			}
			ents, err := os.ReadDir(spec.Dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if !IsLeaseName(e.Name()) {
					continue
				}
				got, err := os.ReadFile(filepath.Join(spec.Dir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != spec.Owner {
					t.Errorf("lease %s holds %q, not its owner's name", e.Name(), got)
				}
			}
			if err := Release(l.Path, spec.Owner); err != nil {
				t.Fatal(err)
			}
			ents, err = os.ReadDir(spec.Dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(ents) != 0 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Fatalf("left in the lease directory after Release: %v", names)
			}
			// The subnet is free again.
			if got, err := leaseTestPool(spec.Dir).Take(spec.Owner, func(Lease) error { return nil }); err != nil || got.Index != l.Index {
				t.Fatalf("retake: %+v %v, want index %d", got, err, l.Index)
			}
		})
	}
}
