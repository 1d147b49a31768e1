package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/jail"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
	"github.com/ironclaw/ironclaw/internal/vm"
	"github.com/ironclaw/ironclaw/internal/vm/qemu"
)

// instance is a running sandbox of either backend, as the manager uses
// it. Both run the guest agent as their init and speak internal/agentapi.
type instance interface {
	// PID is the sandbox's init (jail) or the VMM (vm) on the host.
	PID() int
	// Group is the cgroup holding the sandbox (a VM: QEMU).
	Group() *cgroup.Group
	// Network is the sandbox's network handle, nil for loopback only
	// or when re-attached.
	Network() *network.Net
	// Done is closed when the sandbox's init (or VMM) has exited.
	Done() <-chan struct{}
	// Close destroys the sandbox and removes everything it had.
	Close() error
	UpdateNetwork(ctx context.Context, allow []string) error
	// UpdateUnusedNetwork is UpdateNetwork before the first command:
	// it cuts no connections, as there can be none.
	UpdateUnusedNetwork(ctx context.Context, allow []string) error
	// stateDir is the sandbox's state directory.
	stateDir() string
	// connect returns a new agent connection authenticated with token.
	connect(ctx context.Context, token []byte) (*agentapi.Client, error)
}

// jailInstance is a jail sandbox whose init serves the agent on a Unix
// socket in its state directory.
type jailInstance struct{ *jail.Sandbox }

func (j jailInstance) stateDir() string { return j.Dir }

func (j jailInstance) connect(ctx context.Context, tok []byte) (*agentapi.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := agentapi.DialUnix(ctx, j.AgentSocket())
	if err != nil {
		return nil, err
	}
	return agentapi.Connect(ctx, conn, tok)
}

// vmInstance is a micro-VM sandbox whose agent (the guest's PID 1) is
// reached over virtio-serial through QEMU.
type vmInstance struct{ *vm.Sandbox }

func (v vmInstance) stateDir() string { return v.Dir }

func (v vmInstance) connect(ctx context.Context, tok []byte) (*agentapi.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return v.Reconnect(ctx, tok)
}

// newToken makes a sandbox's agent token: 32 random bytes for a jail
// (handed to init over its control socket), their hex form for a VM (it
// travels as text in the guest's initramfs).
func newToken(backend string) ([]byte, error) {
	if backend == BackendVM {
		return qemu.NewToken(), nil
	}
	tok := make([]byte, tokenLen)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("make agent token: %w", err)
	}
	return tok, nil
}

// launch starts b's sandbox with the backend it asks for and returns it
// with a connected agent. On error nothing is left of it.
//
// Persistence: a loopback-only sandbox of either backend survives a
// daemon restart (a jail's init, a VM's QEMU, holds its state directory's
// lock) and is re-attached. A networked one cannot yet: its egress proxy,
// DNS stub and pool slot lock live in this process, so it dies with the
// daemon (the jail's init and QEMU get a parent-death signal) and the
// next daemon reclaims it.
func (m *Manager) launch(ctx context.Context, b *box, spec sandbox.Spec, tok []byte) (instance, *agentapi.Client, error) {
	persistent := len(spec.Network.Allow) == 0
	if b.opts.Backend == BackendVM {
		if m.cfg.VM == nil {
			return nil, nil, &jail.StartError{Step: "validate", Err: errNoVM}
		}
		sb, err := m.cfg.VM.Launch(ctx, spec, vm.AgentOptions{Token: tok, Persistent: persistent})
		if err != nil {
			return nil, nil, err
		}
		return vmInstance{sb}, sb.Agent(), nil
	}
	sb, err := m.cfg.Jail.Start(ctx, spec, jail.Options{
		Agent:      &jail.AgentOptions{Token: tok, MaxFileSize: m.cfg.MaxFileSize},
		Persistent: persistent,
	})
	if err != nil {
		return nil, nil, err
	}
	inst := jailInstance{sb}
	c, err := inst.connect(ctx, tok)
	if err != nil {
		if cerr := sb.Close(); cerr != nil {
			m.log.Error("roll back sandbox", "sandbox", b.id, "err", cerr)
		}
		return nil, nil, &jail.StartError{Step: "agent", Err: err}
	}
	return inst, c, nil
}

var errNoVM = fmt.Errorf("backend vm: this daemon has no micro-VM backend: %w", sandbox.ErrUnsupported)

// startStep names the setup step a failed start failed at.
func startStep(err error) string {
	var se *sandbox.StartError
	if errors.As(err, &se) {
		return se.Step
	}
	return "start"
}

// attach takes over a sandbox of backend that a previous daemon started
// under backendID. It fails with sandbox.ErrNotFound when the sandbox no
// longer runs.
func (m *Manager) attach(ctx context.Context, backend, backendID string) (instance, error) {
	if backend == BackendVM {
		if m.cfg.VM == nil {
			return nil, errNoVM
		}
		sb, err := m.cfg.VM.Attach(ctx, backendID)
		if err != nil {
			return nil, err
		}
		return vmInstance{sb}, nil
	}
	sb, err := m.cfg.Jail.Attach(backendID)
	if err != nil {
		return nil, err
	}
	return jailInstance{sb}, nil
}

// resolveBackend turns o's backend into the one to start: "" is the jail;
// "auto" is a micro-VM when the daemon's cached KVM boot probe passed and
// the spec fits a VM (no host paths), else the jail; "vm" needs the
// micro-VM backend.
func (m *Manager) resolveBackend(ctx context.Context, o *CreateOptions) error {
	switch o.Backend {
	case "", BackendJail:
		o.Backend = BackendJail
	case BackendVM:
		if m.cfg.VM == nil {
			return errNoVM
		}
	case BackendAuto:
		o.Backend = BackendJail
		if m.cfg.VM == nil || m.cfg.AutoVM == nil {
			return nil
		}
		if err := vmFits(o.Spec); err != nil {
			m.log.Debug("backend auto: the jail", "reason", err.Error())
			return nil
		}
		if ok, why := m.cfg.AutoVM(ctx); ok {
			o.Backend = BackendVM
		} else {
			m.log.Debug("backend auto: the jail", "reason", why)
		}
	}
	return nil
}
