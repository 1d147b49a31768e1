package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/ironclaw/ironclaw/internal/doctor"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/vm"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// Backends `ironclaw run --backend` accepts.
const (
	backendJail = "jail"
	backendVM   = "vm"
	backendAuto = "auto"
)

// AccelEnv forces the VM accelerator: kvm, tcg, or auto (the default: KVM
// when this boot's probe saw a guest boot under it).
const AccelEnv = "IRONCLAW_VM_ACCEL"

// vmRunFlags are the flags of `ironclaw run` that choose the backend and
// configure a micro-VM.
type vmRunFlags struct {
	backend string
	image   string
	qemu    string
}

func (f *vmRunFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.backend, "backend", EnvOr("IRONCLAW_BACKEND", backendJail),
		"jail (namespaces), vm (a micro-VM: QEMU, KVM when usable) or auto (a VM when KVM boots one here, else the jail) (env IRONCLAW_BACKEND)")
	fl.StringVar(&f.image, "image", os.Getenv("IRONCLAW_IMAGE"),
		"micro-VM image directory from `ironclaw image build` (default: the default image, built on first use) (env IRONCLAW_IMAGE)")
	fl.StringVar(&f.qemu, "qemu", os.Getenv("IRONCLAW_QEMU"), "qemu-system-x86_64 binary (default: on PATH) (env IRONCLAW_QEMU)")
}

// dispatch runs spec in a micro-VM when the flags ask for one (or auto
// finds KVM usable) and reports whether it did; otherwise the caller runs
// the jail.
func (f *vmRunFlags) dispatch(g *Globals, spec sandbox.Spec) (bool, error) {
	ctx := cmdContext()
	switch f.backend {
	case "", backendJail:
		return false, nil
	case backendVM, backendAuto:
	default:
		return true, fmt.Errorf("--backend: %q is not %s, %s or %s", f.backend, backendJail, backendVM, backendAuto)
	}
	accel := EnvOr(AccelEnv, "auto")
	if accel != "auto" && accel != "kvm" && accel != "tcg" {
		return true, fmt.Errorf("%s: %q is not auto, kvm or tcg", AccelEnv, accel)
	}
	root, err := state.Open(g.root)
	if err != nil {
		return true, err
	}
	auto := f.backend == backendAuto
	// auto never builds an image: without one it is the jail's turn.
	img, imgErr := f.resolveImage(ctx, !auto)
	kvm := accel == "kvm"
	if auto || accel == "auto" {
		p := vm.Probe(ctx, vm.ProbeConfig{QEMU: f.qemu, Image: img, ImageErr: imgErr, Cache: vm.ProbeCacheFile(root.Dir())})
		if auto {
			if !p.Accelerated() {
				g.logger.Debug("backend auto: the jail", "reason", AutoReason(p))
				return false, nil
			}
			g.logger.Debug("backend auto: a micro-VM", "kvm", p.KVMDetail)
		}
		kvm = p.KVM
	}
	if imgErr != nil {
		fmt.Fprintf(os.Stderr, "ironclaw: start sandbox %q: image: %s\n", spec.ID, oneLine(imgErr.Error()))
		return true, exitError{125}
	}
	return true, runVM(g, root, spec, vm.Config{Root: root, Image: img, QEMU: f.qemu, KVM: kvm, Logger: g.logger})
}

// AutoReason says why auto chose the jail.
func AutoReason(p vm.ProbeResult) string {
	switch {
	case p.Image == "":
		return "no micro-VM image: " + p.ImageErr
	case !p.Usable():
		return "no usable VMM"
	default:
		return "KVM is not usable (" + p.KVMDetail + "); TCG emulation is not used by auto"
	}
}

// resolveImage returns the --image directory, or the default image (built
// when build is set and it is missing or stale).
func (f *vmRunFlags) resolveImage(ctx context.Context, build bool) (*image.Image, error) {
	if f.image != "" {
		img, err := image.Load(f.image)
		if err != nil {
			return nil, fmt.Errorf("--image: %w", err)
		}
		return img, nil
	}
	d, err := DefaultImage()
	if err != nil {
		return nil, err
	}
	img, err := d.Resolve(ctx, false, io.Discard)
	if errors.Is(err, image.ErrNotBuilt) && build {
		fmt.Fprintln(os.Stderr, "ironclaw: building the default micro-VM image (first use, or its kernel, agent or busybox changed)")
		img, err = d.Resolve(ctx, true, &prefixWriter{w: os.Stderr, prefix: "ironclaw: default image: "})
	}
	if err != nil {
		return nil, fmt.Errorf("%w; build one with `ironclaw image build` (it needs ironclaw-agent next to ironclaw, busybox-static and a guest kernel from scripts/fetch-guest-kernel.sh)", err)
	}
	return img, nil
}

// DefaultImage says what the default image is made of: the agent next to
// this binary (or $IRONCLAW_AGENT), the static busybox, the kernel in
// $IRONCLAW_GUEST_KERNEL_DIR or /var/lib/ironclaw/kernel, cached in
// $IRONCLAW_CACHE or /var/lib/ironclaw/images.
func DefaultImage() (image.Default, error) {
	agent := os.Getenv("IRONCLAW_AGENT")
	if agent == "" {
		self, err := os.Executable()
		if err != nil {
			return image.Default{}, fmt.Errorf("find ironclaw-agent: %w", err)
		}
		agent = filepath.Join(filepath.Dir(self), "ironclaw-agent")
	}
	return image.Default{
		Agent:     agent,
		Busybox:   os.Getenv("IRONCLAW_BUSYBOX"),
		KernelDir: os.Getenv(image.KernelDirEnv),
		CacheDir:  EnvOr("IRONCLAW_CACHE", image.DefaultCacheDir),
	}, nil
}

// runVM runs spec in a micro-VM with the caller's terminal and signals
// wired through, and exits with the command's status like the jail does.
func runVM(g *Globals, root *state.Root, spec sandbox.Spec, cfg vm.Config) error {
	if n, err := root.Collect(Reclaim); err != nil {
		g.logger.Warn("reclaim leftovers of dead sandboxes", "err", err)
	} else if n > 0 {
		g.logger.Info("reclaimed leftovers of dead sandboxes", "count", n)
	}
	b, err := vm.New(cfg)
	if err != nil {
		return err
	}
	sigs := catchSignals()
	if spec.TTY && term.IsTerminal(int(os.Stdin.Fd())) {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err != nil {
			return fmt.Errorf("set terminal raw mode: %w", err)
		}
		defer term.Restore(int(os.Stdin.Fd()), old)
	}
	sb, err := b.Start(cmdContext(), spec, vm.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
	if err != nil {
		return vmStartFailure(spec.ID, err)
	}
	stop := forwardSignals(sigs, spec.TTY, sb)
	res, err := sb.Wait()
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ironclaw: sandbox %q: %s\n", spec.ID, oneLine(err.Error()))
	}
	if res.TimedOut {
		fmt.Fprintf(os.Stderr, "ironclaw: sandbox %q timed out after %s: destroyed its VM\n", spec.ID, spec.Timeout)
		return exitError{124}
	}
	if res.ExitCode != 0 {
		return exitError{res.ExitCode}
	}
	return nil
}

// vmStartFailure prints a failed start as one line and picks the exit
// status: 127 for a command the guest does not have, 125 otherwise.
func vmStartFailure(id string, err error) error {
	fmt.Fprintf(os.Stderr, "ironclaw: start sandbox %q: %s\n", id, oneLine(err.Error()))
	if errors.Is(err, vm.ErrCommandNotFound) {
		return exitError{127}
	}
	return exitError{125}
}

// oneLine folds a multi-line message (a guest console tail) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// prefixWriter prefixes each line written to w.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l == "" {
			continue
		}
		if _, err := io.WriteString(p.w, p.prefix+l); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// vmProbe is doctor's micro-VM check: VMM binaries and versions, the KVM
// boot probe (cached for this host boot under the state root) and the
// default image (looked up, never built).
func (g *Globals) vmProbe(ctx context.Context) []doctor.Check {
	var f vmRunFlags
	f.image, f.qemu = os.Getenv("IRONCLAW_IMAGE"), os.Getenv("IRONCLAW_QEMU")
	img, imgErr := f.resolveImage(ctx, false)
	cfg := vm.ProbeConfig{QEMU: f.qemu, Image: img, ImageErr: imgErr}
	if root, err := state.Open(g.root); err == nil {
		cfg.Cache = vm.ProbeCacheFile(root.Dir())
	}
	return vm.Checks(vm.Probe(ctx, cfg))
}
