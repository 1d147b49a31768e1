package daemon

import (
	"context"
	"errors"
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
func (stalledGuest) Network() *network.Net                         { return nil }
func (stalledGuest) Done() <-chan struct{}                         { return make(chan struct{}) }
func (stalledGuest) Close() error                                  { return nil }
func (stalledGuest) UpdateNetwork(context.Context, []string) error { return nil }
func (stalledGuest) stateDir() string                              { return "" }
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
