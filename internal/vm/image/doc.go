// Package image builds the three files a micro-VM boots from and caches them
// by content hash: the guest kernel (a given vmlinuz, or Debian's
// linux-image-cloud-amd64 unpacked from apt), an initramfs (cpio newc,
// written in Go) holding ironclaw-agent as /init and the kernel modules the
// guest needs in dependency order, and an ext4 rootfs made from a directory
// or a tarball with `mkfs.ext4 -d`.
//
// An unchanged input set hashes to the same key, so `ironclaw image build`
// does nothing the second time.
package image
