package daemon

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ironclaw/ironclaw/internal/agentapi"
	"github.com/ironclaw/ironclaw/internal/cgroup"
	"github.com/ironclaw/ironclaw/internal/network"
	"github.com/ironclaw/ironclaw/internal/sandbox"
)

// stalledGuest is a running sandbox whose guest accepts the agent
// connection and never answers the handshake: connect returns only when
// its context ends, as agentapi.Connect does against such a guest.
type stalledGuest struct{ dialing chan struct{} }

func (stalledGuest) PID() int { return 1 }
func (stalledGuest) Group() *cgroup.Group {
	return (&cgroup.Host{Version: cgroup.V1}).Load("/ironclaw-test/stalled", sandbox.Resources{})
}
func (stalledGuest) Network() *network.Net                               { return nil }
func (stalledGuest) Done() <-chan struct{}                               { return make(chan struct{}) }
func (stalledGuest) Close() error                                        { return nil }
func (stalledGuest) UpdateNetwork(context.Context, []string) error       { return nil }
func (stalledGuest) UpdateUnusedNetwork(context.Context, []string) error { return nil }
func (stalledGuest) stateDir() string                                    { return "" }
func (g stalledGuest) connect(ctx context.Context, _ []byte) (*agentapi.Client, error) {
	g.dialing <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestStalledHandshakeBlocksOnlyItsCallers: a micro-VM guest is hostile.
// It can end its agent session at will, and then let the daemon's
// reconnect (up to 30 s a try) hang in the handshake. That wait must hold
// up only the operations that need the agent, never the sandbox's state:
// List, Get and the TTL sweep (which holds the manager's lock while it
// reads every sandbox) would otherwise stop for the whole daemon.
func TestStalledHandshakeBlocksOnlyItsCallers(t *testing.T) {
	g := stalledGuest{dialing: make(chan struct{}, 4)}
	m := &Manager{boxes: map[string]*box{}}
	b := &box{id: "hostile", backendID: "hostile", state: StateRunning, inst: g, gone: make(chan struct{})}
	m.boxes[b.id] = b

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agentErr := make(chan error, 1)
	go func() {
		_, err := b.agent(ctx)
		agentErr <- err
	}()
	<-g.dialing

	done := make(chan struct{})
	go func() {
		defer close(done)
		if l := m.List(context.Background(), nil); len(l) != 1 || l[0].State != StateRunning {
			t.Errorf("List = %+v, want the one running sandbox", l)
		}
		if _, err := m.Get(context.Background(), "hostile"); err != nil {
			t.Errorf("Get: %v", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("List and Get waited for a guest that stalls its agent handshake")
	}

	// A second caller waits for the connect under way, bounded by its
	// own context, without starting another.
	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	if _, err := b.agent(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second caller: %v, want its deadline", err)
	}
	select {
	case <-g.dialing:
		t.Error("a second connect started while one was under way")
	default:
	}
	cancel()
	if err := <-agentErr; err == nil {
		t.Error("the stalled connect succeeded")
	}
}

// retargetGuest is a pool member whose network update waits for release
// and then returns err; connect reports whether the update had finished.
type retargetGuest struct {
	stalledGuest
	release   chan struct{}
	err       error
	updated   atomic.Bool
	connected chan bool
}

func (g *retargetGuest) UpdateUnusedNetwork(context.Context, []string) error {
	<-g.release
	g.updated.Store(true)
	return g.err
}

func (g *retargetGuest) connect(context.Context, []byte) (*agentapi.Client, error) {
	g.connected <- g.updated.Load()
	return nil, errors.New("no agent here")
}

// TestClaimedPolicyGatesTheAgent: a claimed member takes its user's allow
// rules while the create's answer goes out. Nothing reaches its agent (no
// exec, no file operation) before they are in force, and when they could
// not be applied, every caller gets an error saying so, never the agent.
func TestClaimedPolicyGatesTheAgent(t *testing.T) {
	for _, fail := range []bool{false, true} {
		g := &retargetGuest{release: make(chan struct{}), connected: make(chan bool, 4)}
		if fail {
			g.err = errors.New("injected apply failure")
		}
		b := &box{id: "user", backendID: "pool-x", state: StateRunning, inst: g, gone: make(chan struct{}),
			policyDone: make(chan struct{})}
		agentErr := make(chan error, 1)
		go func() {
			_, err := b.agent(context.Background())
			agentErr <- err
		}()
		retargetErr := make(chan error, 1)
		var applied atomic.Bool
		go func() {
			retargetErr <- b.retarget(context.Background(), []string{"198.51.100.7/32:80"}, func(string) {
				if len(g.connected) > 0 {
					t.Error("the agent was reached before the rules were reported applied")
				}
				applied.Store(true)
			})
		}()
		select {
		case <-g.connected:
			t.Fatalf("fail=%v: the agent was reached before the policy was applied", fail)
		case err := <-agentErr:
			t.Fatalf("fail=%v: agent returned before the policy was applied: %v", fail, err)
		case <-time.After(100 * time.Millisecond):
		}
		// A caller with a deadline gives up on its own.
		short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		if _, err := b.agent(short); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("fail=%v: a caller whose deadline passed: %v", fail, err)
		}
		cancel()
		close(g.release)
		if err := <-retargetErr; (err != nil) != fail || applied.Load() == fail {
			t.Fatalf("fail=%v: retarget: %v (applied reported: %v)", fail, err, applied.Load())
		}
		err := <-agentErr
		if !fail {
			if before := <-g.connected; !before {
				t.Error("the agent was reached before the policy was applied")
			}
			if err == nil || !strings.Contains(err.Error(), "no agent here") {
				t.Errorf("after the policy: %v, want the connect's own error", err)
			}
			continue
		}
		if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "injected apply failure") {
			t.Errorf("a member whose policy failed: %v, want ErrNotRunning naming the cause", err)
		}
		select {
		case <-g.connected:
			t.Error("the agent of a member whose policy failed was reached")
		default:
		}
		// Later callers get the same answer at once.
		if _, err := b.agent(context.Background()); !errors.Is(err, ErrNotRunning) {
			t.Errorf("a later caller: %v", err)
		}
	}
}
