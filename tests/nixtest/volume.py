"""A build volume as an image file, and what its root holds afterwards.

``new_volume(directory)`` makes a sparse image file to stand in for an attached EBS volume;
``loops_of(image)`` lists the loop devices still attached to it; ``inspect(image, workdir,
top)`` mounts its root partition (the third, as packer/scripts/surrogate-build.sh lays it
out) in a private mount namespace and reports, line by line: the fstab entries, real
``nix-store --store ROOT --verify --check-contents``, the store's ``.links`` (deduplication,
read by ``store_links``), the closure of ``top`` as real Nix reads it, and Postgres started
inside the root as the postgres user (initdb, pg_ctl start, 1000 rows written and counted,
``select version()``), and the postgres user's profile.
"""
import os
import subprocess

from .packer import show

VOLUME_SIZE = 2 * 1024 ** 3

# Runs in a private mount namespace: the volume's root partition mounted as on first boot,
# the store judged by real Nix, then Postgres started inside the root as the postgres user.
_INSPECT = r'''
set -eu
read -r start sectors < <(partx -g -n 3 -o START,SECTORS "$VOLUME")
loop=$(losetup --find --show --offset $((start * 512)) --sizelimit $((sectors * 512)) "$VOLUME")
trap 'umount -R "$R" 2>/dev/null; losetup -d "$loop"' EXIT
mount "$loop" "$R"
echo "FSTAB $(grep -c '^UUID=' "$R/etc/fstab")"
nix-store --store "$R" --verify --check-contents 2>&1 | sed 's/^/VERIFY /'
echo "VERIFY-RC ${PIPESTATUS[0]}"
# .links entries: all of them, those a store file shares (2+ names), those 2+ files share
links_with() { find "$R/nix/store/.links" -mindepth 1 -maxdepth 1 "$@" 2>/dev/null | wc -l; }
echo "LINKS $(links_with) $(links_with -links +1) $(links_with -links +2)"
NIX_CONFIG="experimental-features = nix-command" nix --store "$R" path-info -r "$TOP" | sed 's/^/CLOSURE /'
mount -t proc proc "$R/proc"
mount --rbind /dev "$R/dev"
as_postgres() { chroot --userspec=postgres:postgres "$R" env -i PATH=/usr/bin:/bin HOME=/var/lib/postgresql LC_ALL=C "$@"; }
as_postgres /usr/lib/postgresql/bin/initdb -D /tmp/pgcheck -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
as_postgres /usr/lib/postgresql/bin/pg_ctl -D /tmp/pgcheck -l /tmp/pgcheck.log -w \
    -o "-c listen_addresses= -c unix_socket_directories=/tmp" start >/dev/null
psql() { as_postgres /usr/lib/postgresql/bin/psql -h /tmp -U postgres -d postgres -XAtc "$1"; }
psql 'create table rows (i int); insert into rows select generate_series(1, 1000)' >/dev/null
echo "ROWS $(psql 'select count(*) from rows')"
echo "VERSION $(psql 'select version()')"
as_postgres /usr/lib/postgresql/bin/pg_ctl -D /tmp/pgcheck -m fast -w stop >/dev/null
echo "PROFILE $(chroot "$R" readlink -f /var/lib/postgresql/.nix-profile)"
'''


def new_volume(directory):
    path = os.path.join(str(directory), 'volume.img')
    with open(path, 'wb') as f:
        f.truncate(VOLUME_SIZE)
    return path


def loops_of(volume):
    return subprocess.run(['losetup', '-n', '-O', 'NAME', '-j', volume], capture_output=True,
                          text=True, check=True).stdout.split()


def inspect(volume, workdir, top):
    """What the volume's root holds, seen after the build: lines by kind."""
    root = os.path.join(str(workdir), 'inspect')
    os.makedirs(root, exist_ok=True)
    proc = subprocess.run(['unshare', '--mount', '--propagation', 'private', '--',
                           'bash', '-c', _INSPECT],
                          env=dict(os.environ, VOLUME=volume, R=root, TOP=top),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, show(proc)
    found = {}
    for line in proc.stdout.splitlines():
        kind, _sep, rest = line.partition(' ')
        found.setdefault(kind, []).append(rest)
    return found, proc


def assert_postgres_on(volume, workdir, closure):
    """The volume's root holds ``closure`` (a PgClosure) as real Nix sees a good store,
    Postgres from it serves, and the postgres user's profile points at it."""
    found, inspected = inspect(volume, workdir, closure.top)
    assert found['FSTAB'] == ['2'], show(inspected)
    assert found['VERIFY-RC'] == ['0'], show(inspected)
    assert not any('modified' in line or 'error' in line for line in found.get('VERIFY', [])), \
        show(inspected)
    assert sorted(found['CLOSURE']) == sorted(closure.paths), show(inspected)
    assert found['ROWS'] == ['1000'], show(inspected)
    assert found['VERSION'][0].startswith('PostgreSQL %s' % closure.version), show(inspected)
    assert found['PROFILE'] == [closure.top], show(inspected)
    return found


def store_links(found):
    """From ``inspect``'s findings: the store's .links entries, how many of them a store file
    is linked to, and how many at least two store files share (the space saved)."""
    (line,) = found['LINKS']
    entries, linked, shared = (int(word) for word in line.split())
    return entries, linked, shared
