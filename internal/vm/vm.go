// Package vm is the micro-VM backend: Backend boots one VM per sandbox
// with the QEMU driver (qemu/; firecracker/ is the driver for KVM hosts),
// inside the sandbox's network namespace, cgroup and state directory, runs
// the sandbox's command through the guest agent and destroys everything
// afterwards; Reclaim removes what a killed owner left. Probe reports which
// VMMs this host can use and whether KVM really boots a guest (for
// `ironclaw doctor` and --backend auto).
package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

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
	// KVMCached says the KVM verdict came from this boot's cache.
	KVMCached bool   `json:"kvm_cached,omitempty"`
	Image     string `json:"image,omitempty"`
	ImageErr  string `json:"image_error,omitempty"`
}

// Usable reports whether some VMM can boot a sandbox here (QEMU may do so
// under TCG, an emulator).
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

// Accelerated reports whether sandboxes here get hardware-accelerated VMs:
// a usable VMM, an image, and a guest that booted under KVM. This is what
// --backend auto asks: TCG works, but at seconds per boot an emulated VM is
// no default.
func (p ProbeResult) Accelerated() bool { return p.Usable() && p.KVM }

// ProbeConfig says what to probe.
type ProbeConfig struct {
	QEMU, Firecracker string // binaries; "" means the default names on PATH
	// Image is the image the KVM boot probe boots; nil (with ImageErr
	// saying why) skips the probe.
	Image    *image.Image
	ImageErr error
	// KVMTimeout bounds the KVM boot probe; 0 means 10 s.
	KVMTimeout time.Duration
	// Dir is the scratch directory of the boot probe ("" the system's).
	Dir string
	// Cache, when set, is a file that keeps the KVM verdict for this
	// host boot (keyed by boot id, QEMU and image): the boot probe
	// costs up to KVMTimeout where KVM hangs.
	Cache string
	// Launcher runs the seccomp VMM launcher ("" this executable).
	Launcher string
}

// Probe checks each VMM's binary and version, whether the image is ready,
// and — when /dev/kvm exists and an image is given — whether a guest boots
// under KVM within a timeout (a stock kernel hangs under some KVMs).
func Probe(ctx context.Context, cfg ProbeConfig) ProbeResult {
	var r ProbeResult
	r.VMMs = append(r.VMMs, probeBinary(ctx, "qemu", orDefault(cfg.QEMU, "qemu-system-x86_64"), "--version"))
	r.VMMs = append(r.VMMs, probeBinary(ctx, "firecracker", orDefault(cfg.Firecracker, "firecracker"), "--version"))
	switch {
	case cfg.Image != nil:
		r.Image = cfg.Image.Dir
	case cfg.ImageErr != nil:
		r.ImageErr = cfg.ImageErr.Error()
	default:
		r.ImageErr = "no image built (run `ironclaw image build`)"
	}
	switch {
	case fileMissing("/dev/kvm"):
		r.KVMDetail = "/dev/kvm does not exist"
	case cfg.Image == nil:
		r.KVMDetail = "/dev/kvm exists; boot probe skipped without an image"
	case r.VMMs[0].Error != "":
		r.KVMDetail = "/dev/kvm exists; boot probe needs QEMU"
	default:
		key := cacheKey(r.VMMs[0], cfg.Image)
		if c, ok := readCache(cfg.Cache, key); ok {
			r.KVM, r.KVMDetail, r.KVMCached = c.KVM, c.Detail, true
			break
		}
		r.KVM, r.KVMDetail = kvmBootProbe(ctx, cfg)
		writeCache(cfg.Cache, probeCache{Key: key, KVM: r.KVM, Detail: r.KVMDetail, At: time.Now().UTC()})
	}
	return r
}

type probeCache struct {
	Key    string    `json:"key"`
	KVM    bool      `json:"kvm"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}

// cacheKey ties a KVM verdict to this host boot, this QEMU and this image.
func cacheKey(q VMMProbe, img *image.Image) string {
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.Join([]string{strings.TrimSpace(string(boot)), q.Binary, q.Version, img.Hash}, "|")
}

func readCache(path, key string) (probeCache, bool) {
	var c probeCache
	if path == "" {
		return c, false
	}
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &c) != nil || c.Key != key {
		return c, false
	}
	return c, true
}

// writeCache keeps the verdict; a cache that cannot be written only costs
// the next run another probe.
func writeCache(path string, c probeCache) {
	if path == "" {
		return
	}
	b, err := json.Marshal(c)
	if err != nil {
		return
	}
	tmp := path + ".tmp"
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, path)
	}
}

func kvmBootProbe(ctx context.Context, cfg ProbeConfig) (bool, string) {
	timeout := cfg.KVMTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	dir, err := os.MkdirTemp(cfg.Dir, "kvm-probe-")
	if err != nil {
		return false, "boot probe: " + err.Error()
	}
	defer os.RemoveAll(dir)
	v, err := qemu.Start(ctx, qemu.Config{Binary: cfg.QEMU, Image: cfg.Image, Dir: dir, KVM: true, Token: qemu.NewToken(), BootTimeout: timeout,
		Starter: qemu.SeccompStarter(qemu.Launch{Launcher: cfg.Launcher})})
	if errors.Is(err, context.DeadlineExceeded) {
		return false, fmt.Sprintf("a guest did not boot under KVM within %s: %s", timeout, firstLine(err.Error()))
	}
	if err != nil {
		return false, "a guest failed to boot under KVM: " + firstLine(err.Error())
	}
	bt := v.BootTime
	if err := v.Close(); err != nil {
		return false, "boot probe: " + err.Error()
	}
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

// ProbeCacheFile is where, under a state root, Probe keeps its KVM verdict.
func ProbeCacheFile(root string) string { return filepath.Join(root, "vm-probe.json") }
