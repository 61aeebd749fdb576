#!/bin/sh
# Makes the new root bootable on EC2; surrogate-build.sh runs it inside the chroot (with
# /dev, /proc, /sys and /boot/efi mounted) with the volume's disk as $1: an init system,
# the cloud kernel, GRUB (BIOS on x86_64, UEFI on arm64), cloud-init for the login key and
# the network, and sshd.
set -eu
disk=$1
export DEBIAN_FRONTEND=noninteractive
arch=$(dpkg --print-architecture)
case "$arch" in
    amd64) boot="linux-image-cloud-amd64 grub-pc" ;;
    arm64) boot="linux-image-cloud-arm64 grub-efi-arm64" ;;
    *) echo "chroot-boot: no boot recipe for $arch" >&2; exit 1 ;;
esac
apt-get update -qq
# shellcheck disable=SC2086 # a list of packages
apt-get install -y -qq --no-install-recommends systemd-sysv udev ifupdown isc-dhcp-client \
    cloud-init openssh-server sudo $boot
cat > /etc/default/grub.d/50-ec2.cfg <<'CFG'
GRUB_TIMEOUT=0
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 nvme_core.io_timeout=4294967295"
CFG
case "$arch" in
    amd64) grub-install --target=i386-pc "$disk" ;;
    # --removable: EFI/BOOT/BOOTAA64.EFI, which the firmware finds without NVRAM entries
    arm64) grub-install --target=arm64-efi --efi-directory=/boot/efi --removable --no-nvram ;;
esac
update-grub
# Host keys are made on the first boot of each instance, not baked into the image.
rm -f /etc/ssh/ssh_host_*
