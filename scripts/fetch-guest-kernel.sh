#!/bin/sh
# fetch-guest-kernel.sh [DIR] — download Debian's cloud kernel for micro-VM
# guests and unpack it into DIR (default /var/lib/ironclaw/kernel), as
# `ironclaw image build` does when no --kernel is given. Needs apt lists
# (apt-get update) and dpkg-deb; downloads two .deb files from Debian.
set -eu
dir=${1:-/var/lib/ironclaw/kernel}
meta=linux-image-cloud-amd64
mkdir -p "$dir/debs"
pkg=$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-.*\)$/\1/p' | head -n1)
if [ -z "$pkg" ]; then
	echo "fetch-guest-kernel: $meta has no linux-image dependency (run apt-get update)" >&2
	exit 1
fi
if ls "$dir"/boot/vmlinuz-"${pkg#linux-image-}" >/dev/null 2>&1; then
	echo "fetch-guest-kernel: $pkg already unpacked in $dir"
	exit 0
fi
cd "$dir/debs"
# apt-get download as root warns that _apt cannot write here; harmless.
apt-get download "$pkg" 2>&1 | grep -v 'unsandboxed' || true
deb=$(ls "$pkg"_*.deb | head -n1)
dpkg-deb -x "$deb" "$dir"
ls "$dir"/boot/vmlinuz-* >/dev/null
echo "fetch-guest-kernel: unpacked $deb into $dir"
