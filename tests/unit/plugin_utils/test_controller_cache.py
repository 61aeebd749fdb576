"""The controller cache of push mode, and the host's view of what it sends.

A small signed ``file://`` cache is written from directories with ``nar.dump``; the
controller cache reads it (each NAR once, even from several processes at once, verified
before it is kept, within its size bound); a bundle made from it the way the action plugin
makes one is realised into a LocalStore by the host-side code, which checks everything
again.
"""
import hashlib
import multiprocessing
import os
import tarfile
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors, nar
from ansible_collections.nixcache.closure.plugins.module_utils.closure import plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.nixbase32 import encode
from ansible_collections.nixcache.closure.plugins.module_utils.pushed import BUNDLE, PushedFiles, pushed_caches
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import SecretKey, TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import FileSubstituter
from ansible_collections.nixcache.closure.plugins.plugin_utils.controller_cache import ControllerCache

KEY = SecretKey('push-test-1', hashlib.sha256(b'push test key').digest())
OTHER = SecretKey('push-test-2', hashlib.sha256(b'other key').digest())
TRUSTED = TrustedKeys([str(KEY.public_key())])
GRAPH = {'data': [], 'lib': ['data'], 'app': ['lib']}
SIZES = {'data': 300000, 'lib': 2000, 'app': 100}


def store_path(name):
    return StorePath(encode(hashlib.sha256(name.encode()).digest()[:20]), name)


def write_cache(where, key=KEY):
    """A file:// cache of GRAPH (uncompressed NARs) under ``where``; returns its directory."""
    cache = os.path.join(str(where), 'cache')
    os.makedirs(os.path.join(cache, 'nar'))
    for name, refs in GRAPH.items():
        tree = os.path.join(str(where), 'trees', name)
        os.makedirs(tree)
        with open(os.path.join(tree, 'payload'), 'wb') as handle:
            handle.write(hashlib.sha256(name.encode()).digest() * (SIZES[name] // 32))
        with open(os.path.join(tree, 'refs'), 'w') as handle:
            handle.write(''.join(str(store_path(ref)) + '\n' for ref in refs))
        chunks = []
        nar.dump(tree, chunks.append)
        data = b''.join(chunks)
        url = 'nar/%s.nar' % name
        with open(os.path.join(cache, url), 'wb') as handle:
            handle.write(data)
        info = NarInfo(store_path(name), url, format_base32(hashlib.sha256(data).digest()),
                       len(data), compression='none', file_size=len(data),
                       references=[store_path(ref) for ref in refs])
        info.sigs = [key.sign(info.fingerprint(STORE_DIR))]
        with open(os.path.join(cache, store_path(name).hash_part + '.narinfo'), 'w') as handle:
            handle.write(info.to_text())
    return cache


class CountingCache(FileSubstituter):
    """A file:// cache that appends one line a file it opens to ``log`` (across processes)."""

    def __init__(self, directory, log):
        super(CountingCache, self).__init__('file://' + directory)
        self.log = log

    def _note(self, what):
        with open(self.log, 'a') as handle:
            handle.write(what + '\n')

    def _read(self, relative_url, limit):
        self._note(relative_url)
        return super(CountingCache, self)._read(relative_url, limit)

    def _open(self, relative_url):
        self._note(relative_url)
        return super(CountingCache, self)._open(relative_url)


def opened(log):
    if not os.path.exists(log):
        return []
    with open(log) as handle:
        return handle.read().split()


def plan(controller, cache, requested=('app',)):
    return plan_closure([store_path(name) for name in requested], controller.wrap([cache]),
                        TRUSTED)


@pytest.fixture
def source(tmp_path):
    return CountingCache(write_cache(tmp_path), str(tmp_path / 'opened.log'))


def test_each_file_is_read_once_and_kept_verified(tmp_path, source):
    controller = ControllerCache(str(tmp_path / 'controller'), 1 << 30)
    first = plan(controller, source)
    files = [controller.nar(item) for item in first.to_fetch]
    for item, path in zip(first.to_fetch, files):
        with open(path, 'rb') as handle:
            assert hashlib.sha256(handle.read()).digest() == item.narinfo.nar_digest
    assert controller.bytes_from_caches == sum(item.narinfo.nar_size for item in first.to_fetch)
    reads = opened(source.log)
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 2 * len(GRAPH)

    again = ControllerCache(str(tmp_path / 'controller'), 1 << 30)
    second = plan(again, source)
    assert [again.nar(item) for item in second.to_fetch] == files
    assert opened(source.log) == reads and again.bytes_from_caches == 0


def test_a_spoilt_nar_is_not_kept(tmp_path, source):
    with open(os.path.join(source.directory, 'nar', 'data.nar'), 'r+b') as handle:
        handle.seek(-300, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-300, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 1]))
    controller = ControllerCache(str(tmp_path / 'controller'), 1 << 30)
    data = [item for item in plan(controller, source).to_fetch if item.store_path.name == 'data']
    with pytest.raises(errors.HashMismatch) as caught:
        controller.nar(data[0])
    assert caught.value.path == str(store_path('data')) and caught.value.cache == source.url
    assert os.listdir(controller.nar_dir) == []


def test_a_narinfo_signed_by_another_key_is_refused_on_the_controller(tmp_path):
    cache = FileSubstituter('file://' + write_cache(tmp_path, key=OTHER))
    controller = ControllerCache(str(tmp_path / 'controller'), 1 << 30)
    with pytest.raises(errors.UntrustedPath):
        plan(controller, cache)


def _fetch_all(directory, cache_dir, log, barrier):
    controller = ControllerCache(directory, 1 << 30)
    cache = CountingCache(cache_dir, log)
    items = plan(controller, cache).to_fetch
    barrier.wait()
    for item in items:
        path = controller.nar(item)
        with open(path, 'rb') as handle:
            if hashlib.sha256(handle.read()).digest() != item.narinfo.nar_digest:
                raise SystemExit(3)


def test_workers_at_once_download_each_file_once(tmp_path, source):
    directory = str(tmp_path / 'controller')
    context = multiprocessing.get_context('fork')
    barrier = context.Barrier(4)
    workers = [context.Process(target=_fetch_all, args=(directory, source.directory, source.log,
                                                        barrier)) for _worker in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * 4
    reads = opened(source.log)
    assert sorted(reads) == sorted(set(reads)), reads     # narinfos and NARs: once each
    assert len([read for read in reads if read.startswith('nar/')]) == len(GRAPH)


def test_the_cache_stays_within_its_bound(tmp_path, source):
    directory = str(tmp_path / 'controller')
    controller = ControllerCache(directory, 1 << 30)
    items = plan(controller, source).to_fetch
    big = [item for item in items if item.store_path.name == 'data'][0]
    small = [item for item in items if item.store_path.name != 'data']
    # A bound below the closure: refused before anything is downloaded.
    tight = ControllerCache(directory, big.narinfo.nar_size // 2)
    with pytest.raises(errors.InsufficientSpace):
        tight.check_room(items)
    assert os.listdir(tight.nar_dir) == []

    # Room for the small NARs only once the big one has gone: a recent one stays...
    controller.nar(big)
    bounded = ControllerCache(directory, big.narinfo.nar_size + 10)
    with pytest.raises(errors.InsufficientSpace):
        bounded.nar(small[0])
    # ...one used long ago goes to make room.
    long_ago = time.time() - 2 * 3600
    os.utime(controller.nar_path(big.narinfo), (long_ago, long_ago))
    for item in small:
        bounded.nar(item)
    assert not os.path.exists(controller.nar_path(big.narinfo))
    held = sum(os.path.getsize(os.path.join(bounded.nar_dir, name))
               for name in os.listdir(bounded.nar_dir))
    assert held <= bounded.max_bytes


def bundle_for(controller, items, directory, large=()):
    """What the action plugin sends: NARs named as in the controller cache, the small ones
    in bundle.tar, ``large`` (names) beside it."""
    os.makedirs(directory)
    entries = []
    with tarfile.open(os.path.join(directory, BUNDLE), 'w') as archive:
        for item in items:
            local = controller.nar(item)
            name = os.path.basename(local)
            if item.store_path.name in large:
                os.link(local, os.path.join(directory, name))
            else:
                archive.add(local, arcname=name)
            entries.append(dict(narinfo=item.narinfo.to_text(), cache=item.cache.url, file=name))
    return entries


def realise(entries, directory, root, trusted=TRUSTED):
    store = LocalStore(root=str(root))
    with store:
        realiser = Realiser(store, pushed_caches(entries, directory), trusted)
        return realiser.realise([store_path('app')]), store.valid_subset(
            [store_path(name) for name in GRAPH])


def test_the_host_realises_what_was_pushed(tmp_path, source):
    controller = ControllerCache(str(tmp_path / 'controller'), 1 << 30)
    items = plan(controller, source).to_fetch
    entries = bundle_for(controller, items, str(tmp_path / 'pushed'), large=('data',))
    report, valid = realise(entries, str(tmp_path / 'pushed'), tmp_path / 'root')
    assert sorted(str(item.store_path) for item in report.fetched) == \
        sorted(str(store_path(name)) for name in GRAPH)
    assert valid == set(store_path(name) for name in GRAPH)
    assert all(entry['cache'] == source.url for entry in report.closure)


def test_the_host_checks_hashes_and_signatures_again(tmp_path, source):
    controller = ControllerCache(str(tmp_path / 'controller'), 1 << 30)
    items = plan(controller, source).to_fetch
    entries = bundle_for(controller, items, str(tmp_path / 'pushed'))
    # A NAR changed after the controller checked it (in its cache, or on the way).
    with open(controller.nar_path(items[0].narinfo), 'r+b') as handle:
        handle.seek(-300, os.SEEK_END)
        handle.write(b'\xff')
    spoilt = str(tmp_path / 'spoilt')
    bundle_for(controller, items, spoilt)
    with pytest.raises((errors.HashMismatch, errors.InvalidNar)):
        realise(entries, spoilt, tmp_path / 'root1')
    # A host that trusts another key refuses the controller's narinfos.
    with pytest.raises(errors.UntrustedPath):
        realise(entries, str(tmp_path / 'pushed'), tmp_path / 'root2',
                trusted=TrustedKeys([str(OTHER.public_key())]))
    # A narinfo altered on the controller no longer matches its signature.
    altered = [dict(entry, narinfo=entry['narinfo'].replace('NarSize: ', 'NarSize: 1'))
               for entry in entries]
    with pytest.raises(errors.UntrustedPath):
        realise(altered, str(tmp_path / 'pushed'), tmp_path / 'root3')


def test_pushed_files_are_read_by_plain_names_only(tmp_path):
    directory = tmp_path / 'pushed'
    directory.mkdir()
    (tmp_path / 'outside').write_bytes(b'secret')
    (directory / 'a.nar-none').write_bytes(b'nar')
    files = PushedFiles(str(directory))
    assert files.open('a.nar-none').read() == b'nar'
    for name in ('../outside', '/etc/passwd', '', '..'):
        with pytest.raises(errors.CacheUnavailable):
            files.open(name)
    (directory / BUNDLE).write_bytes(b'not a tar' * 100)
    with pytest.raises(errors.CacheUnavailable):
        PushedFiles(str(directory))
