package vm

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// TestCheckSpec: what a VM cannot honour is refused with the flag's name
// and the reason; what it can passes.
func TestCheckSpec(t *testing.T) {
	ok := sandbox.Spec{ID: "x", Command: []string{"true"}, Resources: sandbox.DefaultResources}
	if err := CheckSpec(ok); err != nil {
		t.Fatalf("default spec refused: %v", err)
	}
	for flag, mod := range map[string]func(*sandbox.Spec){
		"--mount":        func(s *sandbox.Spec) { s.Mounts = []sandbox.Mount{{Source: "/tmp", Target: "/x"}} },
		"--workdir":      func(s *sandbox.Spec) { s.Workdir = "/tmp" },
		"--rootfs":       func(s *sandbox.Spec) { s.Rootfs = "/tmp" },
		"--seccomp-mode": func(s *sandbox.Spec) { s.Seccomp.Audit = true },
		"--seccomp":      func(s *sandbox.Spec) { s.Seccomp.Profile = "strict" },
		"--memory":       func(s *sandbox.Spec) { s.Resources.MemoryBytes = 64 << 20 },
	} {
		s := ok
		mod(&s)
		err := CheckSpec(s)
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("%s: %v", flag, err)
		}
		if flag != "--memory" && !errors.Is(err, sandbox.ErrUnsupported) {
			t.Errorf("%s: %v is not ErrUnsupported", flag, err)
		}
	}
}

// TestProbeCache: a verdict is reused only for the same key (boot, QEMU,
// image), and Accelerated needs KVM on top of a usable VMM and image.
func TestProbeCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "probe.json")
	writeCache(path, probeCache{Key: "k1", KVM: true, Detail: "booted", At: time.Now()})
	if c, ok := readCache(path, "k1"); !ok || !c.KVM || c.Detail != "booted" {
		t.Fatalf("readCache(k1) = %+v, %v", c, ok)
	}
	if _, ok := readCache(path, "k2"); ok {
		t.Fatal("a verdict for another key was reused")
	}
	img := &image.Image{Hash: "h1"}
	q := VMMProbe{Name: "qemu", Binary: "/usr/bin/qemu", Version: "7.2"}
	if cacheKey(q, img) == cacheKey(q, &image.Image{Hash: "h2"}) {
		t.Fatal("the cache key ignores the image")
	}
	p := ProbeResult{VMMs: []VMMProbe{q}, Image: "/img"}
	if !p.Usable() || p.Accelerated() {
		t.Fatalf("TCG only: usable %v accelerated %v", p.Usable(), p.Accelerated())
	}
	p.KVM = true
	if !p.Accelerated() {
		t.Fatal("KVM + QEMU + image is not accelerated")
	}
	p.Image = ""
	if p.Usable() || p.Accelerated() {
		t.Fatal("usable without an image")
	}
	// Without an image the boot probe is skipped, whatever /dev/kvm says.
	r := Probe(context.Background(), ProbeConfig{QEMU: "/nonexistent/qemu", ImageErr: errors.New("no image")})
	if r.KVM || r.ImageErr != "no image" || r.VMMs[0].Error == "" {
		t.Fatalf("probe without qemu and image: %+v", r)
	}
}
