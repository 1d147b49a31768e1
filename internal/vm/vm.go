// Package vm is the micro-VM backend's entry point: Probe reports which
// VMMs this host can use (for `ironclaw doctor` and --backend auto), and
// Start boots a sandbox with the chosen driver (qemu/ or firecracker/) and
// returns it with its connected agent client.
package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/vm/image"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
)

// VMMProbe is what Probe found about one VMM.
type VMMProbe struct {
	Name    string `json:"name"`
	Binary  string `json:"binary,omitempty"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

// ProbeResult is the host's micro-VM readiness.
type ProbeResult struct {
	VMMs []VMMProbe `json:"vmms"`
	// KVM is true only when a guest actually booted under KVM within the
	// probe's timeout; /dev/kvm existing proves nothing.
	KVM       bool   `json:"kvm"`
	KVMDetail string `json:"kvm_detail"`
	Image     string `json:"image,omitempty"`
	ImageErr  string `json:"image_error,omitempty"`
}

// Usable reports whether some VMM can boot a sandbox here.
func (p ProbeResult) Usable() bool {
	if p.Image == "" {
		return false
	}
	for _, v := range p.VMMs {
		if v.Error == "" && (v.Name == "qemu" || (v.Name == "firecracker" && p.KVM)) {
			return true
		}
	}
	return false
}

// ProbeConfig says where to look.
type ProbeConfig struct {
	QEMU, Firecracker string // binaries; "" means the default names on PATH
	ImageDir          string // a built image directory; "" skips the KVM boot probe
	KVMTimeout        time.Duration
	Dir               string // scratch directory for the boot probe
}

// Probe checks each VMM's binary and version, whether the image is ready,
// and — when /dev/kvm exists and an image is given — whether a guest boots
// under KVM within a timeout (a stock kernel hangs under some KVMs).
func Probe(ctx context.Context, cfg ProbeConfig) ProbeResult {
	var r ProbeResult
	r.VMMs = append(r.VMMs, probeBinary(ctx, "qemu", orDefault(cfg.QEMU, "qemu-system-x86_64"), "--version"))
	r.VMMs = append(r.VMMs, probeBinary(ctx, "firecracker", orDefault(cfg.Firecracker, "firecracker"), "--version"))
	var img *image.Image
	if cfg.ImageDir != "" {
		var err error
		if img, err = image.Load(cfg.ImageDir); err != nil {
			r.ImageErr = err.Error()
		} else {
			r.Image = img.Dir
		}
	} else {
		r.ImageErr = "no image built (run `ironclaw image build`)"
	}
	switch {
	case fileMissing("/dev/kvm"):
		r.KVMDetail = "/dev/kvm does not exist"
	case img == nil:
		r.KVMDetail = "/dev/kvm exists; boot probe skipped without an image"
	case r.VMMs[0].Error != "":
		r.KVMDetail = "/dev/kvm exists; boot probe needs QEMU"
	default:
		r.KVM, r.KVMDetail = kvmBootProbe(ctx, cfg, img)
	}
	return r
}

func kvmBootProbe(ctx context.Context, cfg ProbeConfig, img *image.Image) (bool, string) {
	timeout := cfg.KVMTimeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	dir, err := os.MkdirTemp(cfg.Dir, "kvm-probe-")
	if err != nil {
		return false, "boot probe: " + err.Error()
	}
	defer os.RemoveAll(dir)
	v, err := qemu.Start(ctx, qemu.Config{Binary: cfg.QEMU, Image: img, Dir: dir, KVM: true, Token: qemu.NewToken(), BootTimeout: timeout})
	if err != nil {
		return false, fmt.Sprintf("a guest did not boot under KVM within %s: %s", timeout, firstLine(err.Error()))
	}
	bt := v.BootTime
	_ = v.Close()
	return true, fmt.Sprintf("a guest booted under KVM in %s", bt.Round(time.Millisecond))
}

func probeBinary(ctx context.Context, name, bin, flag string) VMMProbe {
	p := VMMProbe{Name: name}
	path, err := exec.LookPath(bin)
	if err != nil {
		p.Error = "not found: " + bin
		return p
	}
	p.Binary = path
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, path, flag).Output()
	if err != nil {
		p.Error = fmt.Sprintf("%s %s: %v", path, flag, err)
		return p
	}
	p.Version = firstLine(string(out))
	return p
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func fileMissing(p string) bool {
	_, err := os.Stat(p)
	return errors.Is(err, os.ErrNotExist)
}

// Sandbox is a running micro-VM sandbox.
type Sandbox struct {
	// Agent is the connected agent client.
	Agent  *agentapi.Client
	closer io.Closer
}

// Close destroys the VM and removes what its driver made.
func (s *Sandbox) Close() error { return s.closer.Close() }

// StartQEMU boots a sandbox with the QEMU driver.
func StartQEMU(ctx context.Context, cfg qemu.Config) (*Sandbox, error) {
	v, err := qemu.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Sandbox{Agent: v.Agent, closer: v}, nil
}
