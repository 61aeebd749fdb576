"""Run PostgreSQL out of a store written under an alternate root.

``run_postgres_smoke(root, top)`` makes ``ROOT/nix/store`` appear at ``/nix/store`` in a
private mount namespace (``unshare --mount``), so only the paths in that root are
visible there, and then, as the unprivileged ``postgres`` user: ``initdb``,
``pg_ctl start``, ``psql -c 'select 1'`` and ``select version()``, ``pg_ctl stop``.

It also checks that nothing outside the store is linked: the executables are asked
for their libraries through their own loader (``LD_TRACE_LOADED_OBJECTS``), and the
running postmaster's ``/proc/PID/maps`` must map no file outside ``/nix/store``.
"""
import os
import pwd
import shutil
import subprocess
import tempfile

# Runs as root inside the new mount namespace.
_OUTER = r'''
set -eu
if [ -n "$ROOT" ]; then
    mkdir -p /nix/store
    mount --make-rprivate / 2>/dev/null || true
    mount --bind "$ROOT/nix/store" /nix/store
fi
exec runuser -u "$PGUSER_NAME" -- env -i PATH=/usr/bin:/bin HOME="$WORK" LC_ALL=C \
    TOP="$TOP" WORK="$WORK" /bin/sh -c "$INNER"
'''

# Runs as the unprivileged user.
_INNER = r'''
set -eu
data="$WORK/data"; sock="$WORK/run"; log="$WORK/postgres.log"
mkdir -m 0700 "$sock"
stop() { [ -f "$data/postmaster.pid" ] && "$TOP/bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true; }
trap stop EXIT
for tool in postgres initdb pg_ctl psql; do
    LD_TRACE_LOADED_OBJECTS=1 "$TOP/bin/$tool" | sed "s|^|LIB $tool |"
done
"$TOP/bin/initdb" -D "$data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; exit 1; }
"$TOP/bin/pg_ctl" -D "$data" -l "$log" -w -t 60 \
    -o "-c listen_addresses= -c unix_socket_directories=$sock" start >/dev/null \
    || { cat "$log" >&2; exit 1; }
pid=$(head -n 1 "$data/postmaster.pid")
awk '$6 ~ /^\// { print "MAP " $6 }' "/proc/$pid/maps" | sort -u
echo "ONE $("$TOP/bin/psql" -h "$sock" -U postgres -d postgres -XAtc 'select 1')"
echo "VERSION $("$TOP/bin/psql" -h "$sock" -U postgres -d postgres -XAtc 'select version()')"
"$TOP/bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
'''

# Mappings that are not libraries: shared memory and the like.
_HARMLESS_MAPS = ('/dev/', '/SYSV', '/memfd:', '/anon_hugepage')


class PostgresSmokeError(AssertionError):
    pass


def run_postgres_smoke(root, pg_top_path, user='postgres', timeout=120):
    """Start PostgreSQL from ``pg_top_path`` as it is stored under ``root``.

    ``root`` is an alternate root (its ``nix/store`` is bind-mounted over ``/nix/store``
    in a private mount namespace) or None / ``'/'`` for the machine's own store.
    Returns the server's ``select version()``.  Raises PostgresSmokeError with the output
    when anything fails or when a library outside ``/nix/store`` gets loaded.
    """
    if os.geteuid() != 0:
        raise PostgresSmokeError('run_postgres_smoke needs root (mount namespace, runuser)')
    if root is not None and os.path.abspath(str(root)) != '/':
        root = os.path.abspath(str(root))
        store = os.path.join(root, 'nix', 'store')
        top = os.path.join(store, os.path.basename(pg_top_path))
        if not os.path.isdir(top):
            raise PostgresSmokeError('%s is not in %s' % (pg_top_path, store))
    else:
        root = ''
    account = pwd.getpwnam(user)
    work = tempfile.mkdtemp(prefix='nixtest-pg-')
    try:
        os.chmod(work, 0o755)
        os.chown(work, account.pw_uid, account.pw_gid)
        environment = {
            'PATH': '/usr/sbin:/usr/bin:/sbin:/bin',
            'ROOT': root, 'TOP': pg_top_path, 'WORK': work,
            'PGUSER_NAME': user, 'INNER': _INNER,
        }
        proc = subprocess.run(['unshare', '--mount', '--', '/bin/sh', '-c', _OUTER],
                              env=environment, capture_output=True, text=True, timeout=timeout,
                              check=False)
        shown = '\n'.join(line for line in proc.stdout.splitlines() if not line.startswith('LIB '))
        output = 'stdout:\n%s\nstderr:\n%s' % (shown, proc.stderr)
        if proc.returncode != 0:
            raise PostgresSmokeError('PostgreSQL smoke test failed (exit code %d)\n%s'
                                     % (proc.returncode, output))
        return _judge(proc.stdout, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _judge(stdout, output):
    version = one = None
    outside = []
    for line in stdout.splitlines():
        kind, dummy, rest = line.partition(' ')
        if kind == 'VERSION':
            version = rest.strip()
        elif kind == 'ONE':
            one = rest.strip()
        elif kind == 'MAP':
            if not rest.startswith('/nix/store/') and not rest.startswith(_HARMLESS_MAPS):
                outside.append('postmaster maps ' + rest)
        elif kind == 'LIB':
            tool, dummy, lib = rest.partition(' ')
            if 'linux-vdso' in lib:
                continue
            target = lib.split('=>')[-1].strip().split(' (')[0].strip()
            if not target.startswith('/nix/store/'):
                outside.append('%s links %s' % (tool, lib.strip()))
    if outside:
        raise PostgresSmokeError('libraries from outside /nix/store:\n  %s\n%s'
                                 % ('\n  '.join(outside), output))
    if one != '1' or not version or not version.startswith('PostgreSQL '):
        raise PostgresSmokeError('unexpected answers from psql\n%s' % output)
    return version
