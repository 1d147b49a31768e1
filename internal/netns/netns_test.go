package netns_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ironclaw/ironclaw/internal/netns"
	"github.com/ironclaw/ironclaw/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.HostNetNSMain(m, func() error {
		if l, err := testutil.LeakedLinks("ic"); err != nil || len(l) > 0 {
			return fmt.Errorf("links left: %v %v", l, err)
		}
		if m, err := testutil.LeakedMounts(""); err != nil || len(m) > 0 {
			return fmt.Errorf("netns mounts left: %v %v", m, err)
		}
		return nil
	})
}

func TestCreateRemove(t *testing.T) {
	testutil.RequireHostNetNS(t)
	dir := t.TempDir()
	ns, err := netns.Create(dir, "ic-test")
	if err != nil {
		t.Fatal(err)
	}
	path := ns.Path()
	if !netns.Mounted(path) {
		t.Fatal("namespace is not mounted")
	}
	if _, err := netns.Create(dir, "ic-test"); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second Create: %v, want ErrExist", err)
	}
	self, _ := netns.Current()
	defer self.Close()
	// The namespace is a different one, and Do runs inside it.
	var inside string
	if err := ns.Do(func() error {
		b, err := os.Readlink("/proc/thread-self/ns/net")
		inside = string(b)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	outside, _ := os.Readlink("/proc/thread-self/ns/net")
	if inside == outside {
		t.Fatalf("Do did not enter the namespace (%s)", inside)
	}
	if _, err := netns.Open(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("Open of a missing path worked")
	}
	if _, err := netns.Open("/proc/self/ns/mnt"); err == nil {
		t.Fatal("Open accepted a mount namespace")
	}
	for _, bad := range []string{"", "a/b", "..", "."} {
		if _, err := netns.Create(dir, bad); err == nil {
			t.Errorf("Create accepted name %q", bad)
		}
	}
	ns.Close()
	if err := netns.Remove(path); err != nil {
		t.Fatal(err)
	}
	if netns.Mounted(path) {
		t.Fatal("still mounted after Remove")
	}
	if err := netns.Remove(path); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestVeth(t *testing.T) {
	testutil.RequireHostNetNS(t)
	host, _ := netns.Current()
	defer host.Close()
	peer := testutil.NewNetNS(t)
	v := netns.Veth{HostName: "ictestveth01234", PeerName: "eth0",
		HostAddr: netip.MustParsePrefix("10.250.0.1/30"), PeerAddr: netip.MustParsePrefix("10.250.0.2/30")}
	if err := netns.CreateVeth(host, peer, v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.DeleteLink(host, v.HostName) })
	if ok, _ := netns.LinkExists(host, v.HostName); !ok {
		t.Fatal("host side missing")
	}
	if ok, _ := netns.LinkExists(host, "eth0"); ok {
		t.Fatal("peer side was created in the host namespace")
	}
	addrs, _ := netns.Addrs(peer)
	if len(addrs) != 2 || addrs[1] != v.PeerAddr.Addr() && addrs[0] != v.PeerAddr.Addr() {
		t.Fatalf("peer addresses %v", addrs)
	}
	// Traffic crosses the pair (the peer pings the host side).
	if err := (&testutil.Probe{NS: peer}).Ping(v.HostAddr.Addr()); err != nil {
		t.Fatalf("ping across the pair: %v", err)
	}
	if err := netns.DeleteLink(host, v.HostName); err != nil {
		t.Fatal(err)
	}
	if ok, _ := netns.LinkExists(peer, "eth0"); ok {
		t.Fatal("deleting the host side left the peer side")
	}
	if err := netns.DeleteLink(host, v.HostName); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	for _, bad := range []netns.Veth{{HostName: "sixteen-chars-xx", PeerName: "eth0", HostAddr: v.HostAddr, PeerAddr: v.PeerAddr},
		{HostName: "a", PeerName: "eth0", HostAddr: v.HostAddr, PeerAddr: netip.MustParsePrefix("10.251.0.2/30")}} {
		if err := netns.CreateVeth(host, peer, bad); err == nil {
			t.Errorf("CreateVeth accepted %+v", bad)
		}
	}
}

func TestAddrPool(t *testing.T) {
	pool := netns.AddrPool{Prefix: netip.MustParsePrefix("10.200.0.0/28"), Dir: t.TempDir()}
	if pool.Size() != 4 {
		t.Fatalf("size %d", pool.Size())
	}
	l := pool.At(1)
	if l.Subnet.String() != "10.200.0.4/30" || l.Host.String() != "10.200.0.5/30" || l.Sandbox.String() != "10.200.0.6/30" {
		t.Fatalf("lease 1: %+v", l)
	}
	// Concurrent takers never share a subnet; the fifth finds the pool full.
	var mu sync.Mutex
	got := map[int]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("owner-%d", i)
			var recorded []int
			l, err := pool.Take(owner, func(c netns.Lease) error { recorded = append(recorded, c.Index); return nil })
			if err != nil {
				errs <- err
				return
			}
			if recorded[len(recorded)-1] != l.Index {
				errs <- fmt.Errorf("lease %d taken without being recorded first", l.Index)
			}
			mu.Lock()
			defer mu.Unlock()
			if prev, dup := got[l.Index]; dup {
				errs <- fmt.Errorf("subnet %d given to %s and %s", l.Index, prev, owner)
			}
			got[l.Index] = owner
		}()
	}
	wg.Wait()
	close(errs)
	full := 0
	for err := range errs {
		if errors.Is(err, netns.ErrPoolFull) {
			full++
			continue
		}
		t.Error(err)
	}
	if full != 1 || len(got) != 4 {
		t.Fatalf("%d leases, %d full errors", len(got), full)
	}
	// Release only by the owner.
	for idx, owner := range got {
		path := pool.At(idx).Path
		if err := netns.Release(path, "someone-else"); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatal("lease released by a stranger")
		}
		if err := netns.Release(path, owner); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatal("lease not released by its owner")
		}
	}
	if err := (netns.AddrPool{Prefix: netip.MustParsePrefix("10.0.0.1/31"), Dir: "x"}).Validate(); err == nil {
		t.Error("a /31 pool was accepted")
	}
}

// TestNoThreadLeftInANamespace: Create and Do hand their threads back in
// the namespace they started in. With one P the goroutines they start
// mostly run on the main thread, which the runtime cannot end: left in a
// sandbox's namespace, it would keep that namespace alive for the
// process's whole life.
func TestNoThreadLeftInANamespace(t *testing.T) {
	testutil.RequireHostNetNS(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	home, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		ns, err := netns.Create(t.TempDir(), fmt.Sprintf("n%d", i))
		if err != nil {
			t.Fatal(err)
		}
		for range 4 {
			if err := ns.Do(func() error { return nil }); err != nil {
				t.Fatal(err)
			}
		}
		ns.Close()
		if err := netns.Remove(ns.Path()); err != nil {
			t.Fatal(err)
		}
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		if l, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net"); err == nil && l != home {
			t.Errorf("thread %s is in %s, not in the test's own %s", task.Name(), l, home)
		}
	}
}

// TestAddrsWhileAddressesChange: reading a namespace's addresses while
// another process adds and removes some (a pool maintainer at work) gives
// a complete list, never the kernel's "dump interrupted".
func TestAddrsWhileAddressesChange(t *testing.T) {
	testutil.RequireHostNetNS(t)
	ns, err := netns.Create(t.TempDir(), "ic-churn")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ns.Close(); netns.Remove(ns.Path()) }()
	h, err := ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	// Enough addresses that one dump takes several netlink messages.
	for i := range 400 {
		a, _ := netlink.ParseAddr(fmt.Sprintf("10.%d.%d.1/32", 1+i/250, i%250))
		if err := h.AddrAdd(lo, a); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	churned := make(chan error, 1)
	go func() {
		a, _ := netlink.ParseAddr("10.99.0.1/32")
		for {
			select {
			case <-stop:
				churned <- nil
				return
			default:
			}
			if err := h.AddrAdd(lo, a); err != nil {
				churned <- err
				return
			}
			if err := h.AddrDel(lo, a); err != nil {
				churned <- err
				return
			}
		}
	}()
	defer func() {
		close(stop)
		if err := <-churned; err != nil {
			t.Errorf("churn: %v", err)
		}
	}()
	for range 300 {
		as, err := netns.Addrs(ns)
		if err != nil {
			t.Fatalf("Addrs while addresses change: %v", err)
		}
		if len(as) < 400 {
			t.Fatalf("Addrs returned %d addresses, want at least 400", len(as))
		}
	}
}
