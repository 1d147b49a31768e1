package state

import (
	"fmt"
	"sync"
	"testing"
)

// TestClaimRacesWithCollect claims fresh IDs while another goroutine
// collects leftovers: a collector that locks a just-made directory for a
// moment must not make the claim fail as "already exists".
func TestClaimRacesWithCollect(t *testing.T) {
	r := tempRoot(t)
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
			r.Collect(func(string) error { return nil })
		}
	}()
	var claims []*Claim
	for i := 0; i < 100; i++ {
		c, leftover, err := r.Claim(fmt.Sprintf("race-%d", i))
		if err != nil || leftover != nil {
			t.Errorf("claim %d: %v (leftover %v)", i, err, leftover)
			continue
		}
		claims = append(claims, c)
	}
	close(stop)
	wg.Wait()
	for _, c := range claims {
		c.Release()
	}
}
