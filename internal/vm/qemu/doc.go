// Package qemu runs a micro-VM with qemu-system-x86_64 -M microvm: the
// rootfs on virtio-blk (virtio-mmio), the agent channel on a virtio-serial
// port whose host side is a chardev Unix socket, optional virtio-net on a
// tap inside the sandbox's network namespace, QMP for control. KVM is used
// only when the caller says a boot probe passed; otherwise TCG, whose
// guests are handed the host's TSC rate (tsc_early_khz, see HostTSCkHz)
// so that they never calibrate against the emulated PIT and hang on a
// loaded host.
//
// QEMU is started by a Starter on a thread inside the sandbox's netns; the
// default, SeccompStarter, goes through seccomp.LaunchVMM: the launcher
// installs IronClaw's outer filter and execs QEMU with its own -sandbox
// filter, and the host reads /proc/<pid>/status back (Seccomp 2,
// NoNewPrivs 1) before anything else happens. Before it runs the guest
// QEMU chroots into an empty directory of the sandbox (-chroot) and drops
// to seccomp.VMMUID(pid) (-runas, added by the launcher); the driver
// checks both from /proc once QMP answers (dropped). A QEMU that is not
// Detached dies with its owner through the launcher's watchdog
// (seccomp.VMMConfig.Watchdog): -runas clears a parent-death signal.
// The driver writes qemu.json
// before QEMU starts and completes it with QEMU's PID and start time;
// Reclaim works from it alone.
//
// Snapshot and Restore move a VM's state through a file with QEMU's
// migration stream (an fd handed over QMP), and rekey the clone's agent.
//
// vsock (vhost-vsock-device) is not used even where /dev/vhost-vsock
// exists: the agent channel is virtio-serial everywhere, which needs no
// host kernel module and no guest CID allocation. A vsock channel would
// save little under QEMU; Firecracker (package firecracker) uses vsock.
package qemu
