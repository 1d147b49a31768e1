package guest

import (
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	p, err := ParseCmdline("console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio-mmio.device=4K@0xd0001000:6 ironclaw.root=/dev/vda ironclaw.net=eth0,10.0.0.2/30,10.0.0.1 ironclaw.channel=vsock:1024 ironclaw.poweroff=reboot ironclaw.owner=1000:1001 quiet")
	if err != nil {
		t.Fatal(err)
	}
	if p.Root != "/dev/vda" || p.Net == nil || p.Net.String() != "eth0,10.0.0.2/30,10.0.0.1" || p.Channel.String() != "vsock:1024" || !p.Reboot {
		t.Fatalf("parsed %+v", p)
	}
	if p.Owner == nil || *p.Owner != (Owner{1000, 1001}) || p.Owner.String() != "1000:1001" {
		t.Fatalf("owner %+v", p.Owner)
	}
	if got := p.ModParams["virtio_mmio"]; len(got) != 2 || got[0] != "device=4K@0xd0000000:5" {
		t.Fatalf("module params %v", got)
	}
	for _, bad := range []string{
		"ironclaw.bogus=1", "ironclaw.root=vda", "ironclaw.net=eth0", "ironclaw.net=eth0,10.0.0.2/30,192.168.1.1",
		"ironclaw.net=eth0,nonsense", "ironclaw.channel=vsock:x", "ironclaw.channel=tcp:1", "ironclaw.poweroff=maybe",
		"ironclaw.owner=1000", "ironclaw.owner=a:b", "ironclaw.owner=1:-1", "ironclaw.owner=4294967296:0",
	} {
		if _, err := ParseCmdline(bad); err == nil || !strings.Contains(err.Error(), "ironclaw.") {
			t.Errorf("%s: err = %v, want an error naming the parameter", bad, err)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add("ironclaw.net=eth0,10.0.0.2/30,10.0.0.1 ironclaw.channel=virtio-serial:org.ironclaw.agent")
	f.Add("a.b=c ironclaw.root=/dev/vda ironclaw.rw=/dev/vdb")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCmdline(s)
		if err != nil {
			return
		}
		if p.Net != nil {
			if n, err := ParseNet(p.Net.String()); err != nil || n != *p.Net {
				t.Fatalf("net %v does not round-trip: %v", p.Net, err)
			}
		}
	})
}
