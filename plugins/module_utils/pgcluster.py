# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a PostgreSQL cluster on disk tells about itself, read without a server.

``pg_controldata`` output, ``postmaster.pid`` (is a server running, on which port and
socket), ``postmaster.opts`` (the command line of its last start), ``PG_VERSION``, and
the version of a directory of PostgreSQL programs.  Commands run through a ``Host``
(``host.run(argv, user=..., env=..., cwd=...)``), so tests can stand in for the machine.
"""

import os
import pwd
import re
import shlex
import subprocess
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError


class ClusterError(NixCacheError):
    """A cluster or a PostgreSQL build that cannot be read or used as asked."""


class Host(object):
    """Runs commands on this machine, as another user when asked (the postgres user)."""

    def run(self, argv: Sequence[str], user: Optional[str] = None, env: Optional[Dict[str, str]] = None,
            cwd: Optional[str] = None, timeout: Optional[float] = None) -> Tuple[int, str, str]:
        preexec = _become(user) if user else None
        environment = dict(os.environ)
        if user:
            entry = pwd.getpwnam(user)
            environment.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
        environment.update(env or {})
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=environment, cwd=cwd,
                              preexec_fn=preexec, timeout=timeout, check=False)
        return (proc.returncode, proc.stdout.decode('utf-8', 'replace'),
                proc.stderr.decode('utf-8', 'replace'))


def _become(user):
    entry = pwd.getpwnam(user)

    def become():
        os.setgid(entry.pw_gid)
        os.initgroups(user, entry.pw_gid)
        os.setuid(entry.pw_uid)
    return become


def major_of(version: str) -> int:
    """The major version of "15.18", "17.11", "9.6.24" (as 9.6 -> 9)."""
    match = re.match(r'^(\d+)', version.strip())
    if not match:
        raise ClusterError('not a PostgreSQL version', found=version)
    return int(match.group(1))


def bindir_version(host: Host, bindir: str) -> str:
    """The version of the programs in ``bindir`` ("17.11"), from ``postgres --version``."""
    program = os.path.join(bindir, 'postgres')
    if not os.path.isfile(program):
        raise ClusterError('no PostgreSQL server in this directory', path=program)
    rc, out, err = host.run([program, '--version'])
    match = re.search(r'\(PostgreSQL\) (\d+(?:\.\d+)*)', out)
    if rc != 0 or not match:
        raise ClusterError('postgres --version did not answer', path=program,
                           found=(out + err).strip())
    return match.group(1)


def data_version(data_dir: str) -> int:
    """The major version of the cluster in ``data_dir`` (its PG_VERSION file)."""
    try:
        with open(os.path.join(data_dir, 'PG_VERSION')) as f:
            return major_of(f.read())
    except OSError:
        raise ClusterError('no PostgreSQL cluster here (no PG_VERSION)', path=data_dir) from None


def parse_controldata(text: str) -> Dict[str, str]:
    """``pg_controldata`` output as {label: value}."""
    fields = {}
    for line in text.splitlines():
        if ':' in line:
            label, value = line.split(':', 1)
            fields[label.strip()] = value.strip()
    return fields


def controldata(host: Host, bindir: str, data_dir: str, user: str) -> Dict[str, Any]:
    """The settings of a cluster that pg_upgrade needs to agree: ``checksums`` (the data
    page checksum version, 0 for off), ``wal_segment_size`` (bytes), ``state``."""
    rc, out, err = host.run([os.path.join(bindir, 'pg_controldata'), '-D', data_dir], user=user,
                            env={'LC_ALL': 'C'})
    if rc != 0:
        raise ClusterError('pg_controldata failed', path=data_dir, found=(err or out).strip())
    fields = parse_controldata(out)
    try:
        return dict(checksums=int(fields['Data page checksum version']),
                    wal_segment_size=int(fields['Bytes per WAL segment']),
                    state=fields.get('Database cluster state', ''))
    except (KeyError, ValueError):
        raise ClusterError('pg_controldata gave no checksum setting or WAL segment size',
                           path=data_dir, found=out.strip()[:400]) from None


def running_server(data_dir: str) -> Optional[Dict[str, Any]]:
    """The server of ``data_dir`` from its postmaster.pid, when one is alive: pid, port,
    socket_dir, and exe (the program it runs); None when none runs."""
    try:
        with open(os.path.join(data_dir, 'postmaster.pid')) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    try:
        exe = os.readlink('/proc/%d/exe' % pid)
    except OSError:
        return None   # a stale file: no such process
    if not os.path.basename(exe).startswith('postgres'):
        return None   # the PID was reused by something else
    return dict(pid=pid, exe=exe, port=int(lines[3]) if len(lines) > 3 and lines[3] else 5432,
                socket_dir=lines[4] if len(lines) > 4 and lines[4] else '/tmp')


def start_options(data_dir: str) -> Tuple[Optional[str], List[str]]:
    """The program and the options of the server's last start (postmaster.opts), without
    ``-D`` and its value: ("/usr/lib/postgresql/bin/postgres", ["-c", "listen_addresses="])."""
    try:
        with open(os.path.join(data_dir, 'postmaster.opts')) as f:
            words = shlex.split(f.read())
    except (OSError, ValueError):
        return None, []
    if not words:
        return None, []
    options, skip = [], False
    for word in words[1:]:
        if skip:
            skip = False
        elif word == '-D':
            skip = True
        elif not word.startswith('-D'):
            options.append(word)
    return words[0], options


def quote_options(options: Sequence[str]) -> str:
    """Options as one ``pg_ctl -o`` string (pg_ctl passes it to a shell)."""
    return ' '.join(shlex.quote(option) for option in options)
