"""Push mode against pull for N hosts: bytes the cache serves, and time.

    .venv/bin/python benchmarks/push.py --hosts 4 [--compression zstd] [--runs 1]

One play realises the PostgreSQL fixture closure on N hosts at once (forks N) from a
loopback HTTP cache, into a fresh root per host.  The hosts are N inventory hosts reached
over SSH through one private sshd on 127.0.0.1 (the module runs there on a bare Python), so
every byte of push mode goes through a real SSH connection per host.

  pull          each host reads the cache itself (fetch_on: host)
  push, cold    fetch_on: controller with an empty controller cache: the controller reads
                each NAR once for all hosts and sends it over each host's connection
  push, warm    the same with the controller cache filled by the cold run: the cache is
                asked for narinfos only

Printed for each: bytes the cache served (NARs and narinfos, from the server's log), that
as a multiple of the closure's compressed size, and the playbook's wall seconds.  Every
store is judged by nix-store --verify --check-contents.  No target: the figures are for
reading side by side, and vary with the machine's disk.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, REPO)  # first: the repository's conftest links the collection

import conftest  # noqa: E402,F401  pylint: disable=unused-import
from nixtest import fixtures, nix  # noqa: E402
from nixtest.ansible import run_playbook  # noqa: E402
from nixtest.http import CacheServer  # noqa: E402
from nixtest.sshd import Sshd  # noqa: E402

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: Realise
      nixcache.closure.realise:
        paths: ["{{ top }}"]
        root: "{{ bench_root }}/{{ inventory_hostname }}"
        substituters: ["{{ url }}"]
        trusted_public_keys: ["{{ key }}"]
        fetch_on: "{{ fetch_on }}"
        controller_cache_dir: "{{ controller_cache }}"
      register: realised
'''
MIB = 1024.0 * 1024.0
NO_COMPRESSION = '-o ControlMaster=auto -o ControlPersist=60s'


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--hosts', type=int, default=4, help='hosts in the play (default 4)')
    parser.add_argument('--compression', default='zstd', choices=['xz', 'zstd'])
    parser.add_argument('--runs', type=int, default=1, help='repetitions (medians printed)')
    return parser.parse_args()


def one_run(mode, sshd, server, cache, closure, work, hosts, controller_cache):
    roots = os.path.join(work, 'roots')
    shutil.rmtree(roots, ignore_errors=True)
    os.makedirs(roots)
    # push mode sends compressed NARs: ssh's own compression (-C, in Ansible's default
    # ssh_args) would only cost time, so it is left out, as the README advises
    ssh = dict(ansible_ssh_args=NO_COMPRESSION) if mode.startswith('push') else {}
    inventory = '\n'.join(sshd.inventory('host%d' % number, **ssh) for number in range(hosts)) + '\n'
    server.clear_log()
    started = time.monotonic()
    run_playbook(PLAY, inventory, args=['--forks', str(hosts)], extra_vars=dict(
        top=closure.top, bench_root=roots, url=server.url_for(cache.compression),
        key=cache.public_key, controller_cache=controller_cache,
        fetch_on='controller' if mode.startswith('push') else 'host')).assert_ok()
    seconds = time.monotonic() - started
    served = sum(request.bytes_sent for request in server.requests_for('*', 'GET'))
    for number in range(hosts):
        nix.verify_store(os.path.join(roots, 'host%d' % number))
    shutil.rmtree(roots)
    return served, seconds


def main():
    args = parse_args()
    print('building fixtures (once; kept under build/fixtures)', flush=True)
    keys = fixtures.keys()
    closure = fixtures.pg_closure('a')
    caches = fixtures.caches(keys, [closure], compressions=(args.compression,),
                             root=os.path.join(fixtures.FIXTURES_BUILD_DIR, 'caches-push-bench'))
    cache = caches[args.compression]
    compressed = 0
    for name in os.listdir(os.path.join(cache.directory, 'nar')):
        compressed += os.path.getsize(os.path.join(cache.directory, 'nar', name))
    work = tempfile.mkdtemp(prefix='push-bench-', dir=os.path.join(REPO, 'build'))
    results = dict((mode, []) for mode in ('pull', 'push, cold', 'push, warm'))
    try:
        with Sshd() as sshd, CacheServer(caches.root) as server:
            for _repetition in range(args.runs):
                controller_cache = os.path.join(work, 'controller-cache')
                shutil.rmtree(controller_cache, ignore_errors=True)
                for mode in results:
                    results[mode].append(one_run(mode, sshd, server, cache, closure, work,
                                                 args.hosts, controller_cache))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print('PostgreSQL closure, %s: %d paths, %.1f MiB compressed; %d hosts, forks %d, %d run(s)'
          % (args.compression, len(closure.paths), compressed / MIB, args.hosts, args.hosts,
             args.runs))
    print()
    print('| mode | cache served | x closure | seconds |')
    print('|---|---|---|---|')
    for mode, runs in results.items():
        served = median(run[0] for run in runs)
        seconds = median(run[1] for run in runs)
        print('| %s | %.1f MiB | %.2fx | %.1f s |' % (mode, served / MIB, served / compressed, seconds))


if __name__ == '__main__':
    main()
