package network

import (
	"os"
	"strings"
	"testing"

	"github.com/ironclaw/ironclaw/internal/firewall"
)

// TestTapLink sets up a micro-VM's network and reads back what it made:
// the tap in the sandbox's namespace with its address, forwarding on in the
// namespace, the guest's forward and masquerade chains verified, the record
// naming the guest; then Close leaves nothing (the package's leak check).
// Traffic through the tap needs a guest: internal/vm and e2e/vme2e boot one.
func TestTapLink(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg
	cfg.Link = LinkTap
	p, err := firewall.ParsePolicy([]string{"203.0.113.10:8080/tcp"})
	if err != nil {
		t.Fatal(err)
	}
	dir, key := e.sandboxDir(t, "vm-net")
	n, err := Acquire(t.Context(), cfg, dir, key, p)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(n.Path()); !os.IsNotExist(err) {
			t.Errorf("netns %s still there after Close: %v", n.Path(), err)
		}
	}()
	g := n.Guest()
	if g == nil || g.Tap != TapIf || g.Addr != GuestAddr || g.Gateway != TapAddr.Addr() || g.DNS.IsValid() {
		t.Fatalf("Guest() = %+v", g)
	}
	h, err := n.ns.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(TapIf)
	if err != nil {
		t.Fatal(err)
	}
	if l.Type() != "tuntap" {
		t.Errorf("%s is a %s, want tuntap", TapIf, l.Type())
	}
	addrs, err := h.AddrList(l, 2)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != TapAddr.String() {
		t.Errorf("%s addresses %v (%v), want %s", TapIf, addrs, err, TapAddr)
	}
	var fwd []byte
	if err := n.ns.Do(func() error {
		var err error
		fwd, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}); err != nil || strings.TrimSpace(string(fwd)) != "1" {
		t.Errorf("ip_forward in the sandbox namespace = %q (%v)", fwd, err)
	}
	rep, err := n.Verify(t.Context())
	if err != nil || rep.Err != nil {
		t.Fatalf("verify: %v / %v", err, rep.Err)
	}
	var names []string
	for _, c := range rep.Sandbox {
		names = append(names, c.Name)
	}
	if !strings.Contains(strings.Join(names, " "), "postrouting") {
		t.Errorf("sandbox chains %v: no masquerade chain", names)
	}
	rec, err := readRecord(dir, RecordFile)
	if err != nil || rec.Target == nil || rec.Target.Guest == nil || *rec.Target.Guest != *guestOf() {
		t.Fatalf("record %+v (%v): no guest", rec, err)
	}
	// The record alone rebuilds the same target (what `ironclaw net show`
	// verifies against).
	tg, err := rec.target()
	if err != nil || tg.Guest == nil {
		t.Fatalf("target from record: %+v %v", tg, err)
	}
}
