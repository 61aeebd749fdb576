"""One measurement each: what run.py times.  Every function returns wall seconds (and what
it needs to check or report); each realises into a fresh root that the caller removes.

``Host``       ansible-playbook runs on localhost (``ansible_connection=local``) whose
               module Python is the bare /usr/bin/python3 behind benchmarks/maxrss.py
``nix_copy``   ``nix copy --from URL --to ROOT``, with an empty narinfo cache
``floor``      every NAR decompressed by ``xz``/``zstd``, hashed by ``openssl dgst`` and
               unpacked by ``nix-store --restore``, JOBS NARs at a time
``library``    benchmarks/realise_once.py: the library in the test virtualenv
"""
import collections
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ansible_collections.nixcache.closure.plugins.module_utils.hashes import parse_hash
from nixtest import interpreters, nix
from nixtest.ansible import realise_play, run_playbook
from workloads import BENCH_DIR, HERE

PING_PLAY = '''- hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
'''
DECOMPRESSORS = {'xz': 'xz', 'zstd': 'zstd'}
# OpenSSL's SHA-256, as Python's hashlib has it: Debian's sha256sum does not use the CPU's
# SHA instructions and hashes about 4 times slower, which would make the floor no floor.
HASHER = ['openssl', 'dgst', '-sha256', '-r']


ROOTS = os.path.join(BENCH_DIR, 'roots')


def settle(cache_dir):
    """Give the next timed run the machine as the previous one found it: write back what
    earlier runs left dirty (otherwise its writeback takes a core from the next run), drop
    the clean page cache where we may (root), since on this kind of machine a run whose
    page cache must grow into memory not used since boot pays up to twice the kernel time
    of one that reuses freed pages, and read the cache's files back in, so that every
    run is served from memory alike."""
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as handle:
            handle.write('1\n')
    except OSError:
        pass    # not root: the sync alone
    for directory, _dirs, files in os.walk(cache_dir):
        for name in files:
            with open(os.path.join(directory, name), 'rb') as handle:
                while handle.read(1 << 20):
                    pass


def fresh_root(name, cache_dir=None):
    """A new, empty root under ROOTS, as on a fresh host; with ``cache_dir``, the machine
    is settled first (see settle), as before every timed run.

    On an ext4 without a journal (as this machine's) creating a file skips, one by one,
    the free inodes of its block group that were freed in the last minutes, which costs
    more than the file itself after thousands of removals nearby (other roots, other
    work on the machine).  So ROOTS is marked as a top of directory hierarchies
    (``chattr +T``): the file system puts each root in a block group of its own choosing,
    away from recent removals; and roots stay until ``remove_roots()`` at the end."""
    if cache_dir is not None:
        settle(cache_dir)
    if not os.path.isdir(ROOTS):
        os.makedirs(ROOTS)
        subprocess.run(['chattr', '+T', ROOTS], check=False, stderr=subprocess.DEVNULL)
    root = os.path.join(ROOTS, name)
    if os.path.lexists(root):
        raise SystemExit('%s exists: remove_roots() first' % root)
    os.makedirs(root)
    return root


def remove_roots():
    """Remove every root (those of an earlier, interrupted benchmark too)."""
    remove(ROOTS)


def remove(path):
    """Remove a root, and wait until the file system has written the removal out: the
    next measurement must not pay for this one's clean-up."""
    if os.path.lexists(path):
        subprocess.run(['chmod', '-R', 'u+w', path], check=False)
        shutil.rmtree(path)
        os.sync()


ChildRun = collections.namedtuple('ChildRun', 'seconds rss out cpu')
ChildRun.__doc__ = ('A finished command: wall seconds, peak RSS in MiB, stdout, and CPU seconds '
                    '(user and system, its own and those of the processes it waited for).')


def run_child(command, env=None):
    """Run a command; a ChildRun."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit('%s failed:\n%s' % (' '.join(command), err.read().decode()[-4000:]))
        return ChildRun(seconds, usage.ru_maxrss / 1024.0, out.read().decode(),
                        usage.ru_utime + usage.ru_stime)


PlayRun = collections.namedtuple('PlayRun', 'seconds result rss module_seconds module_cpu pss')
PlayRun.__doc__ = ('One ansible-playbook run: its wall seconds, its PlaybookResult, and the '
                   'peak RSS (MiB), wall seconds and CPU seconds of the one module process it ran, '
                   'and the peak PSS (MiB) of that process with its children (worker processes).')


class Host:
    """The managed host as users have it: Debian's /usr/bin/python3 with its standard
    library only (a virtualenv without pip or site packages, as the tests make them), run
    through a copy of benchmarks/maxrss.py that records each module's peak RSS and wall
    time."""

    def __init__(self, jobs):
        python = '/usr/bin/python3'
        self.python = interpreters.bare(interpreters.version_of(python), python)
        directory = os.path.join(BENCH_DIR, 'host')
        os.makedirs(directory, exist_ok=True)
        self.log = os.path.join(directory, 'maxrss.log')
        self.interpreter = os.path.join(directory, 'python')
        with open(os.path.join(HERE, 'maxrss.py')) as handle:
            text = handle.read()
        text = text.replace('PYTHON = None', 'PYTHON = %r' % self.python, 1)
        text = text.replace('LOG = None', 'LOG = %r' % self.log, 1)
        with open(self.interpreter, 'w') as handle:
            handle.write('#!/usr/bin/python3 -IS\n' + text)
        os.chmod(self.interpreter, 0o755)
        self.inventory = 'localhost ansible_connection=local ansible_python_interpreter=%s\n' % (
            self.interpreter)
        self.realise_play = realise_play(jobs=jobs)

    def _play(self, play, extra_vars=None):
        """A PlayRun of one ansible-playbook run of ``play``."""
        if os.path.exists(self.log):
            os.unlink(self.log)
        started = time.monotonic()
        result = run_playbook(play, self.inventory, extra_vars=extra_vars,
                              interpreter=self.interpreter)
        seconds = time.monotonic() - started
        result.assert_ok()
        with open(self.log) as handle:
            modules = [line.split() for line in handle]
        if len(modules) != 1:
            raise SystemExit('expected one module run, the interpreter ran %d times' % len(modules))
        rss_kib, module_seconds, module_cpu, pss_kib = modules[0]
        return PlayRun(seconds, result, int(rss_kib) / 1024.0, float(module_seconds),
                       float(module_cpu), int(pss_kib) / 1024.0)

    def ping(self):
        """The baseline: the same ansible-playbook run with only ``ansible.builtin.ping``."""
        return self._play(PING_PLAY)

    def realise(self, url, key, top, root):
        """One run of the realise task (its result registered as ``realised``)."""
        return self._play(self.realise_play, dict(paths=[top], root=root, substituters=[url],
                                                  keys=[key]))

    def wrapper_overhead(self, runs=10):
        """Seconds maxrss.py adds to one start of the bare Python (fastest of ``runs``
        starts each, the least disturbed by other load)."""
        def fastest_start(command):
            return min(run_child(command).seconds for _run in range(runs))
        return (fastest_start([self.interpreter, '-c', 'pass'])
                - fastest_start([self.python, '-c', 'pass']))


def nix_copy(url, key, top, root):
    """The ChildRun of ``nix copy`` into ``root``."""
    cache_home = tempfile.mkdtemp(prefix='nix-cache-home-')  # no narinfo cache between runs
    try:
        env = nix.env({'XDG_CACHE_HOME': cache_home})
        command = ['nix', 'copy', '--from', url, '--to', root,
                   '--option', 'trusted-public-keys', key, top]
        return run_child(command, env)
    finally:
        shutil.rmtree(cache_home, ignore_errors=True)


def restore(nar, store):
    """``DECOMPRESSOR -dc FILE | tee /dev/fd/N | nix-store --restore STORE/NAME`` with
    HASHER reading fd N; return the SHA-256 of the NAR stream (bytes)."""
    read_end, write_end = os.pipe()
    with subprocess.Popen(HASHER, stdin=read_end, stdout=subprocess.PIPE) as hasher:
        os.close(read_end)
        decompress = subprocess.Popen([DECOMPRESSORS[nar.compression], '-dc', nar.file],
                                      stdout=subprocess.PIPE)
        tee = subprocess.Popen(['tee', '/dev/fd/%d' % write_end], stdin=decompress.stdout,
                               stdout=subprocess.PIPE, pass_fds=(write_end,))
        os.close(write_end)
        decompress.stdout.close()
        unpack = subprocess.Popen(['nix-store', '--restore',
                                   os.path.join(store, os.path.basename(nar.store_path))],
                                  stdin=tee.stdout)
        tee.stdout.close()
        digest = hasher.stdout.read().split()[0]
        codes = [process.wait() for process in (decompress, tee, unpack, hasher)]
    if any(codes):
        raise SystemExit('floor pipeline for %s failed: exit codes %s' % (nar.store_path, codes))
    return bytes.fromhex(digest.decode())


def floor(nars, root, jobs):
    """Seconds to restore every NAR into ROOT/nix/store, ``jobs`` at a time (largest
    first); raises when a stream's SHA-256 is not its narinfo's NarHash."""
    store = os.path.join(root, 'nix', 'store')
    os.makedirs(store)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        digests = list(pool.map(lambda nar: restore(nar, store), nars))
    seconds = time.monotonic() - started
    for nar, digest in zip(nars, digests):
        if digest != parse_hash(nar.nar_hash):
            raise SystemExit('floor: %s unpacked a NAR whose hash is not %s'
                             % (nar.store_path, nar.nar_hash))
    return seconds


def library(url, key, top, root, jobs):
    """(seconds, peak RSS in MiB, report) of benchmarks/realise_once.py in this Python."""
    command = [sys.executable, os.path.join(HERE, 'realise_once.py'), '--root', root,
               '--cache', url, '--key', key, '--jobs', str(jobs), top]
    run = run_child(command)
    return run.seconds, run.rss, json.loads(run.out)


def per_path(host, workload, url, key):
    """The table of benchmarks/per_path.py, run on the module's bare Python."""
    root = fresh_root('per-path')
    return run_child([host.python, os.path.join(HERE, 'per_path.py'),
                      os.path.join(BENCH_DIR, workload.cache_dir), url, key, root]).out
