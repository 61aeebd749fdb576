#!/usr/bin/env bash
# One-stage image build on a surrogate instance: partition and format the attached volume,
# bootstrap a root file system on it, mount /dev, /proc and /sys into it, and run the
# playbook through the chroot connection (ansible-playbook -c community.general.chroot
# -i '/mnt,'), so Postgres lands on the volume, not on the surrogate's own disk.  Everything
# it mounted or attached is undone when it exits, also when a step fails.  Packer's
# amazon-ebssurrogate builder then snapshots the volume and registers the AMI from it.
#
# Run as root.  Settings, from the environment (packer/postgres-ami-surrogate.pkr.hcl sets
# them; the defaults suit a Debian or Ubuntu surrogate):
#
#   NIXCACHE_VOLUME        the volume's device as the template attaches it (/dev/xvdf); on
#                          Nitro instances the NVMe device EBS names so is found.  A regular
#                          file works too (an image: its partitions get loop devices).
#   NIXCACHE_MOUNT         where the new root is mounted (/mnt)
#   NIXCACHE_ROOTFS        "debootstrap" (the default), or a tarball of a root file system
#                          to unpack instead
#   NIXCACHE_SUITE, NIXCACHE_MIRROR, NIXCACHE_INCLUDE
#                          debootstrap's suite (bookworm), mirror and --include list
#   NIXCACHE_BOOT          a script run in the chroot with the volume's device as argument
#                          before the playbook, to make the root bootable (kernel, boot
#                          loader, cloud-init, sshd); empty: none
#   NIXCACHE_COLLECTIONS   collection tarballs (Galaxy artifacts), space-separated, to
#                          install on the surrogate for ansible-playbook
#   NIXCACHE_PLAYBOOK      the playbook: a file, or a collection's playbook by name
#                          (nixcache.closure.postgres, the default: playbooks/postgres.yml
#                          of the installed collection)
#   NIXCACHE_EXTRA_VARS    a file of extra variables (JSON or YAML) for it
#   NIXCACHE_EXTRA_VARS_JSON  extra variables as JSON text
#   NIXCACHE_ANSIBLE_ARGS  further arguments for ansible-playbook (word-split)
#   NIXCACHE_WORK          the surrogate's work directory (/var/tmp/nixcache-build)
#   NIXCACHE_ARTIFACTS     where the new root's receipts and SBOM are copied before the
#                          volume is unmounted, as receipts/ and sbom/, for Packer to
#                          download ($NIXCACHE_WORK/artifacts)
#   NIXCACHE_WIPE          "yes": format the volume even if it already holds data
#   ANSIBLE_PLAYBOOK, ANSIBLE_GALAXY
#                          the commands (ansible-playbook and ansible-galaxy on PATH)
#
# The playbook must not set the realise modules' `root:` option: through the chroot
# connection the modules already run inside the new root, so `root: /mnt` would write
# /mnt/mnt/nix.  `root:` is for the SSH way (connection to the surrogate itself).
set -euo pipefail

VOLUME=${NIXCACHE_VOLUME:-}
MNT=${NIXCACHE_MOUNT:-/mnt}
ROOTFS=${NIXCACHE_ROOTFS:-debootstrap}
SUITE=${NIXCACHE_SUITE:-bookworm}
MIRROR=${NIXCACHE_MIRROR:-http://deb.debian.org/debian}
INCLUDE=${NIXCACHE_INCLUDE:-python3,sudo,locales,ca-certificates}
BOOT=${NIXCACHE_BOOT:-}
COLLECTIONS=${NIXCACHE_COLLECTIONS:-}
PLAYBOOK=${NIXCACHE_PLAYBOOK:-nixcache.closure.postgres}
EXTRA_VARS=${NIXCACHE_EXTRA_VARS:-}
EXTRA_VARS_JSON=${NIXCACHE_EXTRA_VARS_JSON:-}
ANSIBLE_ARGS=${NIXCACHE_ANSIBLE_ARGS:-}
WORK=${NIXCACHE_WORK:-/var/tmp/nixcache-build}
ARTIFACTS=${NIXCACHE_ARTIFACTS:-$WORK/artifacts}
WIPE=${NIXCACHE_WIPE:-no}
ANSIBLE_PLAYBOOK=${ANSIBLE_PLAYBOOK:-ansible-playbook}
ANSIBLE_GALAXY=${ANSIBLE_GALAXY:-ansible-galaxy}

# The volume's layout (GPT): BIOS boot for GRUB on x86_64, the EFI system partition for
# UEFI boot (arm64, and x86_64 where chosen), then the root file system.
BIOS_BOOT_TYPE=21686148-6449-6E6F-744E-656564454649
EFI_TYPE=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
LINUX_TYPE=0FC63DAF-8483-4772-8E79-3D69D8477DE4

LOOPS=()

log() { printf 'surrogate-build: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Undo, innermost first, whatever got mounted under $MNT and every loop device attached.
cleanup() {
    local rc=$? target
    set +e
    if [ -n "${MNT_REAL:-}" ]; then
        for target in $(findmnt -rn -o TARGET -R "$MNT_REAL" 2>/dev/null | sort -r); do
            umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null \
                || log "could not unmount $target"
        done
        if findmnt -rn -R "$MNT_REAL" >/dev/null 2>&1; then
            log "still mounted under $MNT_REAL: $(findmnt -rn -o TARGET -R "$MNT_REAL" | tr '\n' ' ')"
            [ "$rc" -ne 0 ] || rc=1
        fi
    fi
    for loop in "${LOOPS[@]}"; do
        losetup -d "$loop" 2>/dev/null || log "could not detach $loop"
    done
    if [ "$rc" -eq 0 ]; then
        log "done in ${SECONDS}s: the volume holds the new root and nothing is mounted"
    else
        log "failed (exit code $rc); everything mounted or attached was undone"
    fi
    exit "$rc"
}

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is missing on the surrogate"
    done
}

# The device EBS attached as $1 (/dev/xvdf, /dev/sdf): itself, or on a Nitro instance the
# NVMe namespace whose controller names that device in its vendor data (nvme-cli).
find_device() {
    local want=${1##*/} dev name
    [ -b "$1" ] && { printf '%s\n' "$1"; return; }
    if command -v nvme >/dev/null 2>&1; then
        for dev in /dev/nvme*n1; do
            [ -b "$dev" ] || continue
            # EBS keeps the requested name at bytes 3072-3103 of Identify Controller.
            name=$(nvme id-ctrl --raw-binary "$dev" 2>/dev/null \
                   | dd bs=1 skip=3072 count=32 status=none | tr -d '\0 ')
            name=${name##*/}
            if [ "${name/#xvd/sd}" = "${want/#xvd/sd}" ]; then
                printf '%s\n' "$dev"
                return
            fi
        done
    fi
    die "no device $1 (nor an NVMe volume attached as ${want}): is the volume attached?"
}

# PART: the device of partition $2 of disk $1.  For an image file: a loop device over its
# extent, remembered for the cleanup (so not run in a subshell).
partition() {
    local disk=$1 number=$2 start sectors tries
    if [ -f "$disk" ]; then
        read -r start sectors < <(partx -g -n "$number" -o START,SECTORS "$disk")
        PART=$(losetup --find --show --offset $((start * 512)) --sizelimit $((sectors * 512)) "$disk")
        LOOPS+=("$PART")
        return
    fi
    case "$disk" in *[0-9]) PART="${disk}p${number}" ;; *) PART="${disk}${number}" ;; esac
    for tries in $(seq 50); do
        [ -b "$PART" ] && return
        command -v udevadm >/dev/null 2>&1 && udevadm settle
        sleep 0.2
    done
    die "partition $number of $disk did not appear as $PART (after $tries tries)"
}

[ "$(id -u)" -eq 0 ] || die "run as root: mounts, chroot and the chroot connection need it"
[ -n "$VOLUME" ] || die "NIXCACHE_VOLUME is not set: name the attached volume's device (e.g. /dev/xvdf)"
case "$PLAYBOOK" in
    */*|*.yml|*.yaml) [ -f "$PLAYBOOK" ] || die "no playbook at $PLAYBOOK" ;;
esac
[ -z "$EXTRA_VARS" ] || [ -f "$EXTRA_VARS" ] || die "no extra variables file at $EXTRA_VARS"
[ -z "$BOOT" ] || [ -f "$BOOT" ] || die "no boot script at $BOOT"
need sfdisk partx mkfs.ext4 mkfs.vfat blkid wipefs findmnt losetup chroot "$ANSIBLE_PLAYBOOK" "$ANSIBLE_GALAXY"
[ "$ROOTFS" = debootstrap ] && need debootstrap
[ "$ROOTFS" = debootstrap ] || [ -f "$ROOTFS" ] || die "NIXCACHE_ROOTFS: no tarball at $ROOTFS"

if [ -f "$VOLUME" ]; then DISK=$VOLUME; else DISK=$(find_device "$VOLUME"); fi
mkdir -p "$MNT"
MNT_REAL=$(realpath "$MNT")
[ "$MNT_REAL" != / ] || die "NIXCACHE_MOUNT must not be /"
if findmnt -rn -R "$MNT_REAL" >/dev/null 2>&1 || findmnt -rn -M "$MNT_REAL" >/dev/null 2>&1; then
    die "$MNT is already a mount point: unmount it first"
fi
[ -z "$(ls -A "$MNT_REAL")" ] || die "$MNT is not empty"
ARTIFACTS_REAL=$(realpath -m "$ARTIFACTS")
[ "$ARTIFACTS_REAL" != / ] || die "NIXCACHE_ARTIFACTS must not be /"
case "$ARTIFACTS_REAL/" in
    "$MNT_REAL"/*) die "NIXCACHE_ARTIFACTS ($ARTIFACTS) must be outside $MNT: the volume is unmounted before Packer downloads them" ;;
esac

# Refuse to overwrite data: a fresh volume has no partition table and no file system.
if [ -b "$DISK" ] && lsblk -nro MOUNTPOINT "$DISK" 2>/dev/null | grep -q .; then
    die "$DISK (or a partition of it) is mounted: it is not the empty volume to build on"
fi
if [ "$WIPE" != yes ] && [ -n "$(wipefs -n "$DISK" 2>/dev/null)" ]; then
    die "$DISK already holds a partition table or file system; set NIXCACHE_WIPE=yes to overwrite it"
fi
trap cleanup EXIT

log "partitioning $DISK"
sfdisk --quiet --wipe always --label gpt "$DISK" <<EOF
size=1MiB, type=$BIOS_BOOT_TYPE, name=bios-boot
size=100MiB, type=$EFI_TYPE, name=efi
type=$LINUX_TYPE, name=root
EOF
[ -b "$DISK" ] && { partx -u "$DISK" 2>/dev/null || true; }
partition "$DISK" 2; EFI_DEV=$PART
partition "$DISK" 3; ROOT_DEV=$PART
mkfs.vfat -F 32 -n EFI "$EFI_DEV" >/dev/null
mkfs.ext4 -q -L root "$ROOT_DEV"
mount -o noatime "$ROOT_DEV" "$MNT_REAL"

if [ "$ROOTFS" = debootstrap ]; then
    log "debootstrap $SUITE from $MIRROR"
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$MNT_REAL" "$MIRROR"
else
    log "unpacking $ROOTFS"
    tar -C "$MNT_REAL" --numeric-owner --xattrs --acls -xpf "$ROOTFS"
fi
for tool in /bin/sh /usr/bin/python3 /usr/bin/sudo /bin/dd; do
    [ -x "$MNT_REAL$tool" ] || die "the new root has no $tool (the chroot connection and the roles need it)"
done

cat > "$MNT_REAL/etc/fstab" <<EOF
UUID=$(blkid -s UUID -o value "$ROOT_DEV") / ext4 defaults,noatime 0 1
UUID=$(blkid -s UUID -o value "$EFI_DEV") /boot/efi vfat umask=0077 0 2
EOF
# Name resolution inside the chroot for apt and the caches: the surrogate's resolver.
rm -f "$MNT_REAL/etc/resolv.conf"
cp -L /etc/resolv.conf "$MNT_REAL/etc/resolv.conf"

# As the seed's scripts do, but as slaves: unmounting them later must not unmount the
# surrogate's own /dev/pts or /sys/fs/cgroup (their mounts are shared under systemd).
for fs in dev proc sys; do
    mkdir -p "$MNT_REAL/$fs"
    mount --rbind "/$fs" "$MNT_REAL/$fs"
    mount --make-rslave "$MNT_REAL/$fs"
done

if [ -n "$BOOT" ]; then
    log "making the root bootable with $BOOT"
    # The EFI system partition, for GRUB's UEFI image (mounted only here: the build
    # itself needs no vfat).
    mkdir -p "$MNT_REAL/boot/efi"
    mount "$EFI_DEV" "$MNT_REAL/boot/efi"
    cp "$BOOT" "$MNT_REAL/tmp/nixcache-boot.sh"
    chroot "$MNT_REAL" /bin/sh /tmp/nixcache-boot.sh "$DISK"
    rm -f "$MNT_REAL/tmp/nixcache-boot.sh"
fi

mkdir -p "$WORK/collections"
export ANSIBLE_COLLECTIONS_PATH="$WORK/collections${ANSIBLE_COLLECTIONS_PATH:+:$ANSIBLE_COLLECTIONS_PATH}"
if [ -n "$COLLECTIONS" ]; then
    log "installing the collections: $COLLECTIONS"
    # shellcheck disable=SC2086 # a list of tarballs
    "$ANSIBLE_GALAXY" collection install --force --offline -p "$WORK/collections" $COLLECTIONS
fi
"$ANSIBLE_GALAXY" collection list community.general >/dev/null 2>&1 \
    || die "community.general (its chroot connection) is not installed: add its tarball (ansible-galaxy collection download community.general) to NIXCACHE_COLLECTIONS"
# Evaluated inside the chroot: the new root's /tmp, emptied below.
export ANSIBLE_REMOTE_TEMP=/tmp
export ANSIBLE_HOST_KEY_CHECKING=False

log "running $PLAYBOOK through the chroot connection on $MNT_REAL"
args=(-c community.general.chroot -i "$MNT_REAL," "$PLAYBOOK")
[ -z "$EXTRA_VARS" ] || args+=(-e "@$EXTRA_VARS")
[ -z "$EXTRA_VARS_JSON" ] || args+=(-e "$EXTRA_VARS_JSON")
# shellcheck disable=SC2206 # further arguments, word-split as documented
args+=($ANSIBLE_ARGS)
"$ANSIBLE_PLAYBOOK" "${args[@]}"

# The volume is unmounted when this script ends: what the build reports about the image
# comes out of it first.  Receipts are written by every realisation; the SBOM may be
# switched off (postgres_sbom: false), and then its directory stays empty.
log "copying the receipts and the SBOM of the new root to $ARTIFACTS"
[ -d "$MNT_REAL/nix/var/nixcache/receipts" ] \
    || die "the playbook left no receipts in $MNT/nix/var/nixcache/receipts: did it realise anything?"
rm -rf "$ARTIFACTS/receipts" "$ARTIFACTS/sbom"
mkdir -p "$ARTIFACTS/receipts" "$ARTIFACTS/sbom"
cp -R "$MNT_REAL/nix/var/nixcache/receipts/." "$ARTIFACTS/receipts/"
if [ -d "$MNT_REAL/nix/var/nixcache/sbom" ]; then
    cp -R "$MNT_REAL/nix/var/nixcache/sbom/." "$ARTIFACTS/sbom/"
else
    log "the new root has no SBOM (/nix/var/nixcache/sbom): nothing to copy"
fi
# Packer downloads them as the surrogate's login user, not as root.
chmod -R a+rX "$ARTIFACTS"

log "cleaning up the new root"
chroot "$MNT_REAL" /bin/sh -c 'command -v apt-get >/dev/null && apt-get clean || true'
find "$MNT_REAL/tmp" "$MNT_REAL/var/tmp" -mindepth 1 -delete
# Each instance makes its own machine id on first boot.
[ ! -e "$MNT_REAL/etc/machine-id" ] || : > "$MNT_REAL/etc/machine-id"
