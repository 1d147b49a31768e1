// Package guest is the init side of ironclaw-agent when it runs as PID 1 of
// a micro-VM: it mounts the API filesystems, loads the kernel modules listed
// in the initramfs (with finit_module, passing "module.param=value" options
// from the kernel command line as modprobe would), mounts the rootfs under
// an overlay, switches root, configures the network from the kernel command
// line through netlink, opens the host channel (virtio-serial port or vsock)
// and powers the VM off cleanly.
//
// Parameters come from the kernel command line (ironclaw.*, see Params);
// the per-sandbox token comes from a file in the initramfs, never from the
// command line, which every guest process can read.
package guest
