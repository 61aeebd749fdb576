"""A wide closure (41 paths, tests/fixtures/wide.nix), which realise fetches with worker
processes: through ansible-playbook over SSH by a bare Python, judged by real Nix; a
worker killed in the middle, and the whole module killed in the middle, leave a store
that is a closed set and that the next run completes."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.common import caches_from_options
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import nix
from nixtest.ansible import realise_play, run_playbook
from nixtest.http import CacheServer

PLAY = realise_play(jobs=4)


class Wide(object):
    def __init__(self, top, paths, infos, server, public_key):
        self.top, self.paths, self.infos = top, paths, infos
        self.server, self.public_key = server, public_key


@pytest.fixture(scope='module')
def wide(nix_keys, tmp_path_factory):
    top = nix.build('wide.nix')[0]
    paths = nix.closure([top])
    directory = tmp_path_factory.mktemp('wide-caches')
    for compression in ('xz', 'zstd'):
        nix.make_file_cache(str(directory / compression), [top], compression,
                            nix_keys.trusted.secret_file)
    with CacheServer(str(directory)) as server:
        yield Wide(top, paths, nix.path_info(None, paths, recursive=False), server,
                   nix_keys.trusted.public)


@pytest.fixture
def cache(wide):
    wide.server.reset()
    yield wide
    wide.server.reset()


def realise(root, wide, compressions=('zstd',), jobs=4, **options):
    caches, keys = caches_from_options(dict(
        substituters=[wide.server.url_for(c) for c in compressions],
        trusted_public_keys=[wide.public_key], use_nix_conf=False, timeout=10, **options),
        root=str(root))
    with LocalStore(root=str(root)) as store:
        return Realiser(store, caches, keys, jobs=jobs).realise([StorePath.parse(wide.top)])


def assert_complete(root, wide):
    """Real Nix finds every path valid, with the cache's metadata, and nothing else."""
    nix.verify_store(str(root))
    realised = nix.path_info(str(root), [wide.top])
    assert set(realised) == set(wide.paths)
    for path, info in realised.items():
        assert info['narHash'] == wide.infos[path]['narHash'], path
        assert sorted(info['references']) == sorted(wide.infos[path]['references']), path
    assert nix.unregistered_entries(str(root)) == []


def assert_closed_and_clean(root):
    """What is valid after a failure passes real Nix's check, and no copy is left."""
    if nix.valid_paths(str(root)):
        nix.verify_store(str(root))
    assert nix.unregistered_entries(str(root)) == []


def children(pid):
    """The ids of the processes ``pid`` forked (from every one of its threads)."""
    found = set()
    for task in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/children' % (pid, task)) as listing:
                found.update(int(child) for child in listing.read().split())
        except (IOError, OSError):
            pass
    return found


def wait_for(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError('still not true after %d s' % seconds)


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (IOError, OSError):
        return False


@pytest.mark.slow
def test_wide_closure_over_ssh_by_a_bare_python_with_worker_processes(cache, sshd_target, alt_root):
    """xz over loopback HTTP, by a stdlib-only host Python: four workers, few connections,
    a store real Nix accepts, and nothing to do on the second run."""
    inventory = sshd_target.inventory('target')
    extra_vars = dict(paths=[cache.top], root=str(alt_root), keys=[cache.public_key],
                      substituters=[cache.server.url_for('xz')])
    result = run_playbook(PLAY, inventory, extra_vars=extra_vars)
    result.assert_ok()
    realised = result.registered('realised')
    assert realised['changed'] is True and realised['worker_processes'] == 4
    assert sorted(realised['fetched']) == sorted(cache.paths)
    assert_complete(alt_root, cache)
    requests = cache.server.requests_for('/xz/*', 'GET')
    assert len(requests) >= 2 * len(cache.paths)                # narinfos and NARs
    assert cache.server.connections <= 8 + 4                     # look-up threads + workers

    again = run_playbook(PLAY, inventory, extra_vars=extra_vars)
    again.assert_ok()
    second = again.registered('realised')
    assert second['changed'] is False and second['worker_processes'] == 0


def test_a_worker_killed_in_the_middle_fails_the_run_cleanly(cache, alt_root):
    cache.server.fault('/zstd/nar/*', delay=0.3)   # slow NARs: the kill lands mid-run
    before = children(os.getpid())
    outcome = {}

    def run():
        try:
            outcome['report'] = realise(alt_root, cache)
        except errors.NixCacheError as error:
            outcome['error'] = error
    runner = threading.Thread(target=run)
    runner.start()
    workers = wait_for(lambda: children(os.getpid()) - before)
    time.sleep(0.5)
    os.kill(sorted(workers)[0], signal.SIGKILL)
    runner.join(60)
    assert not runner.is_alive()
    assert isinstance(outcome.get('error'), errors.StoreError), outcome
    assert 'worker process ended in the middle of its job (killed by signal 9)' in str(outcome['error'])
    assert not any(alive(pid) for pid in workers)
    assert len(nix.valid_paths(str(alt_root))) < len(cache.paths)
    assert_closed_and_clean(alt_root)

    cache.server.reset()
    report = realise(alt_root, cache)
    assert report.worker_processes == 4 and report.changed
    assert_complete(alt_root, cache)


def test_nars_a_cache_fails_to_send_to_workers_come_from_the_next_cache(cache, alt_root):
    """Every NAR download from the first cache fails in a worker; each path then comes
    from the second cache, and the first is not asked again once it stopped answering."""
    cache.server.fault('/zstd/nar/*', status=500)
    report = realise(alt_root, cache, compressions=('zstd', 'xz'), retries=0)
    assert report.worker_processes == 4
    assert set(report.sources().values()) == {cache.server.url_for('xz')}
    assert_complete(alt_root, cache)


def test_workers_die_with_a_module_killed_in_the_middle(cache, alt_root):
    """kill -9 of the realising process (as a timed-out or interrupted task is): its workers
    go at once, and the next run removes their copies and completes the closure."""
    cache.server.fault('/zstd/nar/*', delay=0.3)
    script = (
        'import sys\n'
        'sys.path[:0] = %r\n'
        'from ansible_collections.nixcache.closure.plugins.module_utils.common import caches_from_options\n'
        'from ansible_collections.nixcache.closure.plugins.module_utils.realise import realise_closure\n'
        'from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath\n'
        'caches, keys = caches_from_options(dict(substituters=[%r], trusted_public_keys=[%r],\n'
        '                                        use_nix_conf=False), root=%r)\n'
        'realise_closure(%r, [StorePath.parse(%r)], caches, keys, jobs=4)\n'
        % (sys.path, cache.server.url_for('zstd'), cache.public_key, str(alt_root),
           str(alt_root), cache.top))
    module = subprocess.Popen([sys.executable, '-c', script])
    try:
        workers = wait_for(lambda: len(children(module.pid)) == 4 and children(module.pid))
        time.sleep(0.8)
    finally:
        module.kill()
        module.wait(30)
    wait_for(lambda: not any(alive(pid) for pid in workers), 5)
    assert len(nix.valid_paths(str(alt_root))) < len(cache.paths)

    cache.server.reset()
    report = realise(alt_root, cache)
    assert report.changed and report.worker_processes == 4
    assert_complete(alt_root, cache)
