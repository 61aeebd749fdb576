#!/bin/sh
# What packer/scripts/surrogate-build.sh needs on a Debian or Ubuntu surrogate, each only
# when missing: sfdisk (fdisk), mkfs.vfat (dosfstools), debootstrap, nvme-cli (to find the
# volume on Nitro instances), and ansible-core in a virtual environment of its own
# ($NIXCACHE_ANSIBLE_DIR, from PyPI: the distributions' ansible-core may be older than the
# collection's 2.15).  Run as root.
set -eu
DIR=${NIXCACHE_ANSIBLE_DIR:-/opt/nixcache-ansible}
CORE=${NIXCACHE_ANSIBLE_CORE:-ansible-core>=2.15}

missing=""
want() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
want sfdisk fdisk
want mkfs.vfat dosfstools
want debootstrap debootstrap
# only on instances with NVMe disks (Nitro), where the volume is not named /dev/xvdf
if [ -n "$(ls /sys/class/nvme 2>/dev/null)" ]; then want nvme nvme-cli; fi
if [ ! -x "$DIR/bin/ansible-playbook" ]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
fi
if [ -n "$missing" ]; then
    # cloud-init may still hold the package lists on a just booted instance.
    if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null || true; fi
    echo "surrogate-tools: installing$missing" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086 # a list of packages
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
if [ ! -x "$DIR/bin/ansible-playbook" ]; then
    echo "surrogate-tools: installing $CORE into $DIR" >&2
    python3 -m venv "$DIR"
    "$DIR/bin/python" -m pip install -q "$CORE"
fi
"$DIR/bin/ansible-playbook" --version | head -n 1
