package network

import (
	"sync"
	"testing"

	"github.com/ironclaw/ironclaw/internal/firewall"
)

// TestAccessorsConcurrentWithUpdateAndClose reads a Net's accessors while
// Update and Close change it. It proves nothing without the race detector:
// run it with -race (the race detector reports the unsynchronised reads).
func TestAccessorsConcurrentWithUpdateAndClose(t *testing.T) {
	e := newEnv(t)
	dir, key := e.sandboxDir(t, "accessors")
	p, _ := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	n, err := Setup(t.Context(), e.cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = n.Addr()
			_ = n.Gateway()
			_ = n.File()
			_ = n.Path()
			_ = n.ResolvConf()
		}
	}()
	q, _ := firewall.ParsePolicy([]string{"203.0.113.20:8080/tcp"})
	for range 3 {
		if err := n.Update(t.Context(), q); err != nil {
			t.Error(err)
		}
		if err := n.Update(t.Context(), p); err != nil {
			t.Error(err)
		}
	}
	if err := n.Close(); err != nil {
		t.Error(err)
	}
	close(stop)
	wg.Wait()
	if n.File() != nil || n.Path() != "" || n.Addr().IsValid() || n.Gateway().IsValid() {
		t.Errorf("a closed Net still reports a namespace or addresses: %q %v %v", n.Path(), n.Addr(), n.Gateway())
	}
}
