package vm

import (
	"fmt"

	"github.com/ironclaw/ironclaw/internal/doctor"
)

// Checks turns a probe into `ironclaw doctor` lines: one per VMM (binary
// and version), KVM (from a boot probe, never from /dev/kvm alone) and the
// image.
func Checks(p ProbeResult) []doctor.Check {
	var out []doctor.Check
	for _, v := range p.VMMs {
		c := doctor.Check{Name: "vmm " + v.Name}
		switch {
		case v.Error == "":
			c.Status, c.Detail = doctor.OK, fmt.Sprintf("%s: %s", v.Binary, v.Version)
		case v.Name == "firecracker":
			c.Status, c.Detail = doctor.Warn, v.Error
			c.Fix = "install Firecracker v1.16 (and jailer) on a KVM host for the fastest VMs; QEMU is used otherwise"
		default:
			c.Status, c.Detail = doctor.Missing, v.Error
			c.Fix = "apt-get install qemu-system-x86 for --backend vm"
		}
		out = append(out, c)
	}
	k := doctor.Check{Name: "kvm", Detail: p.KVMDetail}
	if p.KVMCached {
		k.Detail += " (cached for this boot)"
	}
	if p.KVM {
		k.Status = doctor.OK
	} else {
		k.Status = doctor.Warn
		k.Fix = "micro-VMs run under TCG emulation (seconds per boot); --backend auto uses the jail. Use a host where KVM boots a stock kernel"
	}
	out = append(out, k)
	img := doctor.Check{Name: "vm image"}
	if p.Image != "" {
		img.Status, img.Detail = doctor.OK, p.Image
	} else {
		img.Status, img.Detail = doctor.Missing, p.ImageErr
		img.Fix = "ironclaw image build (needs a guest kernel: scripts/fetch-guest-kernel.sh, busybox-static, and ironclaw-agent next to ironclaw)"
	}
	return append(out, img)
}
