package daemoncli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ironclaw/ironclaw/internal/cli"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/vm"
	"github.com/ironclaw/ironclaw/internal/vm/image"
)

// vmFlags are the flags of serve that configure micro-VMs: --image and
// --qemu, as `ironclaw run` takes them.
type vmFlags struct {
	image string
	qemu  string
}

// daemonBackend makes the daemon's micro-VM backend. The image and the
// accelerator are resolved at the first VM create, not at start: the
// default image is built then if it is missing (progress in the log), and
// KVM is used when this boot's probe saw a guest boot under it (or as
// IRONCLAW_VM_ACCEL says). autoVM answers backend "auto" from the same
// cached probe, once per daemon run; it never builds an image.
func (f *vmFlags) daemonBackend(root *state.Root, log *slog.Logger) (*vm.Backend, func(context.Context) (bool, string), error) {
	accel := cli.EnvOr(cli.AccelEnv, "auto")
	if accel != "auto" && accel != "kvm" && accel != "tcg" {
		return nil, nil, fmt.Errorf("%s: %q is not auto, kvm or tcg", cli.AccelEnv, accel)
	}
	probe := func(ctx context.Context, img *image.Image, imgErr error) vm.ProbeResult {
		return vm.Probe(ctx, vm.ProbeConfig{QEMU: f.qemu, Image: img, ImageErr: imgErr, Cache: vm.ProbeCacheFile(root.Dir())})
	}
	b, err := vm.New(vm.Config{
		Root: root, QEMU: f.qemu, Logger: log, Network: network.Config{Root: root.Dir(), Logger: log},
		Resolve: func(ctx context.Context) (*image.Image, bool, error) {
			img, err := f.daemonImage(ctx, log, true)
			if err != nil {
				return nil, false, err
			}
			kvm, detail := accel == "kvm", "forced by "+cli.AccelEnv
			if accel == "auto" {
				p := probe(ctx, img, nil)
				kvm, detail = p.KVM, p.KVMDetail
			}
			log.Info("micro-VM backend ready", "image", img.Dir, "kvm", kvm, "kvm_detail", detail)
			return img, kvm, nil
		},
	})
	if err != nil {
		return nil, nil, err
	}
	var (
		once sync.Once
		ok   bool
		why  string
	)
	auto := func(ctx context.Context) (bool, string) {
		once.Do(func() {
			// The verdict is kept for the daemon's life: a request that
			// goes away must not leave a half-made one behind.
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			img, imgErr := f.daemonImage(pctx, log, false)
			p := probe(pctx, img, imgErr)
			ok, why = p.Accelerated(), cli.AutoReason(p)
			if ok {
				why = p.KVMDetail
			}
			log.Info("backend auto decided", "vm", ok, "reason", why)
		})
		return ok, why
	}
	return b, auto, nil
}

// daemonImage is resolveImage with the build's progress in the daemon's
// log rather than on its stderr.
func (f *vmFlags) daemonImage(ctx context.Context, log *slog.Logger, build bool) (*image.Image, error) {
	if f.image != "" {
		img, err := image.Load(f.image)
		if err != nil {
			return nil, fmt.Errorf("--image: %w", err)
		}
		return img, nil
	}
	d, err := cli.DefaultImage()
	if err != nil {
		return nil, err
	}
	img, err := d.Resolve(ctx, false, io.Discard)
	if errors.Is(err, image.ErrNotBuilt) && build {
		log.Info("building the default micro-VM image (first use, or its kernel, agent or busybox changed)")
		w := logWriter(log)
		img, err = d.Resolve(ctx, true, w)
		w.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("%w; build one with `ironclaw image build` (it needs ironclaw-agent next to ironclaw, busybox-static and a guest kernel from scripts/fetch-guest-kernel.sh)", err)
	}
	return img, nil
}

// logWriter returns a writer whose lines become log records.
func logWriter(log *slog.Logger) io.WriteCloser {
	r, w := io.Pipe()
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				log.Info("default image: " + l)
			}
		}
		_ = r.CloseWithError(sc.Err())
	}()
	return w
}
