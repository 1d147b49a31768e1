// Package qemu runs a micro-VM with qemu-system-x86_64 -M microvm: the
// rootfs on virtio-blk (virtio-mmio), the agent channel on a virtio-serial
// port whose host side is a chardev Unix socket, optional virtio-net on a
// tap inside the sandbox's network namespace, QMP for control, and QEMU's
// own -sandbox seccomp filter plus the caller's launcher (the seam for an
// outer seccomp filter). KVM is used only when the caller says a boot probe
// passed; otherwise TCG.
package qemu
