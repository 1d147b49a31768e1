package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unicode"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/firewall"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/state"
	"github.com/ironclaw/ironclaw/internal/vm/image"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
)

// This file is the long-lived side of the backend, the daemon's: a VM
// whose agent serves execs and files for as long as the sandbox lives
// (Launch), and the re-attachment of such a VM by a later process
// (Attach).

// MinTokenLen is the shortest agent token Launch accepts.
const MinTokenLen = 16

// AgentOptions configure a long-lived sandbox.
type AgentOptions struct {
	// Token authenticates every agent connection. It reaches the guest
	// as text inside the per-sandbox initramfs, so it must be printable
	// ASCII without spaces, at least MinTokenLen bytes (qemu.NewToken
	// makes one).
	Token []byte
	// Persistent lets the VM outlive the process that launched it: QEMU
	// gets no parent-death signal and inherits the state directory's
	// lock, so the directory stays claimed (GC leaves it alone) until
	// QEMU exits, and a later process takes the VM over with Attach.
	// Without it QEMU dies with the launching process and GC reclaims
	// what it left. A networked sandbox cannot be persistent: its egress
	// servers live in the launching process.
	Persistent bool
}

// Launch boots a long-lived sandbox for spec: a VM whose agent (PID 1)
// serves execs and files, with no command of its own (spec.Command must
// be empty; spec.Timeout is not used). It returns once the agent answered
// and the guest is prepared; Agent is that connection. On error every
// step already done is undone and the error is a *StartError.
func (b *Backend) Launch(ctx context.Context, spec sandbox.Spec, opts AgentOptions) (*Sandbox, error) {
	if err := spec.Validate(); err != nil {
		return nil, &StartError{Step: "validate", Err: err}
	}
	if len(spec.Command) > 0 {
		return nil, &StartError{Step: "validate", Err: fmt.Errorf("%w: command: a long-lived sandbox runs no command of its own", sandbox.ErrInvalid)}
	}
	if err := checkToken(opts.Token); err != nil {
		return nil, &StartError{Step: "validate", Err: err}
	}
	s, err := b.boot(ctx, spec, bootOptions{token: opts.Token, persistent: opts.Persistent})
	if err != nil {
		return nil, err
	}
	s.log.Debug("long-lived sandbox started", "boot", s.vm.BootTime, "pid", s.vm.PID(), "persistent", opts.Persistent)
	return s, nil
}

func checkToken(tok []byte) error {
	if len(tok) < MinTokenLen {
		return fmt.Errorf("%w: agent token: want at least %d bytes", sandbox.ErrInvalid, MinTokenLen)
	}
	for _, c := range tok {
		if c > unicode.MaxASCII || !unicode.IsPrint(rune(c)) || c == ' ' {
			return fmt.Errorf("%w: agent token: must be printable ASCII without spaces", sandbox.ErrInvalid)
		}
	}
	return nil
}

// Attach takes over the persistent sandbox id (Launch with Persistent)
// started by a process that has since exited: it checks that the
// recorded QEMU still runs and connects QMP. Connect the agent with
// Reconnect. It fails with sandbox.ErrNotFound when the VM does not run
// any more (GC reclaims what it left), and with another error when it
// runs but cannot be taken over (Reclaim its directory then).
func (b *Backend) Attach(ctx context.Context, id string) (*Sandbox, error) {
	k := sandbox.KeyOf(id)
	dir := b.cfg.Root.SandboxDir(k)
	var rec record
	if err := state.ReadJSON(filepath.Join(dir, RecordFile), &rec); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("attach %q: %w", id, sandbox.ErrNotFound)
		}
		return nil, fmt.Errorf("attach %q: %w", id, err)
	}
	if !rec.Persistent || rec.CgroupRel == "" {
		return nil, fmt.Errorf("attach %q: not a persistent micro-VM sandbox", id)
	}
	// The group handle is rebuilt from CgroupRel, and Close destroys it,
	// killing whatever runs in it: it must be the sandbox's own.
	if rel := cgroup.SandboxRelOf(dir); rec.CgroupRel != rel {
		return nil, fmt.Errorf("attach %q: record names cgroup %q, not the sandbox's %s", id, rec.CgroupRel, rel)
	} else if err := cgroup.CheckRecorded(rec.Cgroups, rel); err != nil {
		return nil, fmt.Errorf("attach %q: %w", id, err)
	}
	log := b.cfg.Logger.With("sandbox", id)
	v, err := qemu.Attach(ctx, qemu.Config{Dir: dir, Logger: log})
	if errors.Is(err, qemu.ErrGone) {
		return nil, fmt.Errorf("attach %q: %w: %w", id, sandbox.ErrNotFound, err)
	}
	if err != nil {
		return nil, fmt.Errorf("attach %q: %w", id, err)
	}
	s := &Sandbox{ID: id, Key: k, Dir: dir, root: b.cfg.Root, log: log, vm: v,
		group: b.cfg.Cgroups.Load(rec.CgroupRel, rec.Resources), timedOut: make(chan struct{})}
	s.undo = []func() error{s.group.Destroy, v.Destroy}
	return s, nil
}

// image returns the image guests boot and whether they get KVM,
// resolving them on first use (Config.Resolve).
func (b *Backend) image(ctx context.Context) (*image.Image, bool, error) {
	if b.cfg.Image != nil {
		return b.cfg.Image, b.cfg.KVM, nil
	}
	b.imgMu.Lock()
	defer b.imgMu.Unlock()
	if b.img != nil {
		return b.img, b.kvm, nil
	}
	img, kvm, err := b.cfg.Resolve(ctx)
	if err != nil {
		return nil, false, err
	}
	b.img, b.kvm = img, kvm
	return img, kvm, nil
}

// Agent returns the sandbox's current agent connection (nil when attached
// and not reconnected yet).
func (s *Sandbox) Agent() *agentapi.Client {
	s.agentMu.Lock()
	defer s.agentMu.Unlock()
	return s.vm.Agent
}

// Reconnect replaces the agent connection with a new one authenticated
// with token (after the previous one broke, or after Attach) and returns
// it.
func (s *Sandbox) Reconnect(ctx context.Context, token []byte) (*agentapi.Client, error) {
	s.agentMu.Lock()
	defer s.agentMu.Unlock()
	select {
	case <-s.vm.Exited():
		return nil, fmt.Errorf("reconnect to the agent of %q: the VM has exited", s.ID)
	default:
	}
	if err := s.vm.Reconnect(ctx, token); err != nil {
		return nil, fmt.Errorf("reconnect to the agent of %q: %w", s.ID, err)
	}
	return s.vm.Agent, nil
}

// PID is QEMU's process ID.
func (s *Sandbox) PID() int { return s.vm.PID() }

// Group is QEMU's cgroup: its usage is the VM's, its OOM kills end the
// VM (a process killed by the guest kernel's OOM killer is not counted).
func (s *Sandbox) Group() *cgroup.Group { return s.group }

// Done is closed when QEMU has exited.
func (s *Sandbox) Done() <-chan struct{} { return s.vm.Exited() }

// UpdateNetwork replaces the egress policy of a running networked
// sandbox atomically (the guest's forwarding rules with it); connections
// the new policy does not allow are cut. A loopback-only sandbox has no
// link to give rules to.
func (s *Sandbox) UpdateNetwork(ctx context.Context, allow []string) error {
	return s.updateNetwork(ctx, allow, (*network.Net).Update)
}

// UpdateUnusedNetwork is UpdateNetwork for a sandbox that has run no
// command yet, such as a warm pool member being handed out: there are no
// connections to cut (see network.Net.UpdateUnused).
func (s *Sandbox) UpdateUnusedNetwork(ctx context.Context, allow []string) error {
	return s.updateNetwork(ctx, allow, (*network.Net).UpdateUnused)
}

func (s *Sandbox) updateNetwork(ctx context.Context, allow []string, update func(*network.Net, context.Context, firewall.Policy) error) error {
	policy, err := firewall.ParsePolicy(allow)
	if err != nil {
		return err
	}
	if s.net == nil {
		return fmt.Errorf("%w: update network of %q: it was started without network allow rules (loopback only); its VM has no network device", sandbox.ErrUnsupported, s.ID)
	}
	return update(s.net, ctx, policy)
}

// takeOver claims the state directory of an attached sandbox once QEMU,
// which held its lock, is gone.
func (s *Sandbox) takeOver() (*state.Claim, error) {
	if s.root == nil {
		return nil, errors.New("no state root")
	}
	return s.root.TakeOver(s.Key, 10*time.Second)
}
