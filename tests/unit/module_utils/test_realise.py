"""The planner (``closure.py``) and the realiser (``realise.py``) against caches in memory.

Each path of a small closure is a directory written to disk, serialised with ``nar.dump``
and described by a narinfo signed with a ``SecretKey``; a FakeCache serves them as a
Substituter does, and can be told to stop answering or to serve a spoilt NAR.
"""
import hashlib
import io
import os
import tempfile
import threading

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors, nar, realise
from ansible_collections.nixcache.closure.plugins.module_utils.closure import plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.nixbase32 import encode
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import SecretKey, TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath

KEY = SecretKey('unit-test-1', hashlib.sha256(b'unit test key').digest())
OTHER_KEY = SecretKey('unit-test-2', hashlib.sha256(b'another key').digest())
TRUSTED = TrustedKeys([str(KEY.public_key())])

# name -> names it references: lib and tool are needed by app, data by lib
GRAPH = {'data': [], 'lib': ['data'], 'tool': [], 'app': ['lib', 'tool']}


def store_path(name):
    return StorePath(encode(hashlib.sha256(name.encode()).digest()[:20]), name)


class Closure(object):
    """NARs and signed narinfos of GRAPH, built from directories under ``where``."""

    def __init__(self, where, key=KEY):
        self.paths = dict((name, store_path(name)) for name in GRAPH)
        self.nars, self.infos = {}, {}
        for name, refs in GRAPH.items():
            tree = os.path.join(str(where), name)
            os.makedirs(os.path.join(tree, 'bin'))
            with open(os.path.join(tree, 'bin', name), 'w') as handle:
                handle.write('#!/bin/sh\necho %s\n' % name)
            os.chmod(os.path.join(tree, 'bin', name), 0o755)
            with open(os.path.join(tree, 'refs'), 'w') as handle:
                handle.write(''.join(str(self.paths[ref]) + '\n' for ref in refs))
            chunks = []
            nar.dump(tree, chunks.append)
            data = b''.join(chunks)
            url = 'nar/%s.nar' % name
            info = NarInfo(self.paths[name], url, format_base32(hashlib.sha256(data).digest()),
                           len(data), compression='none', file_size=len(data),
                           references=[self.paths[ref] for ref in refs])
            info.sigs = [key.sign(info.fingerprint(STORE_DIR))]
            self.nars[url], self.infos[self.paths[name]] = data, info

    def closure_of(self, name):
        names, pending = set(), [name]
        while pending:
            current = pending.pop()
            if current not in names:
                names.add(current)
                pending.extend(GRAPH[current])
        return set(self.paths[n] for n in names)


class FakeCache(object):
    """A Substituter serving a Closure from memory.  Its downloads are logged in a file,
    so that those made by worker processes count too."""

    fork_friendly = False   # the ``store`` fixture's worker processes mode makes it True

    def __init__(self, url, closure, broken=(), spoilt=(), missing=()):
        self.url = url
        self.store_dir = STORE_DIR
        self.unavailable = None
        self.closure = closure
        self.broken = set(broken)      # names whose NAR download fails
        self.spoilt = set(spoilt)      # names whose NAR has a flipped byte
        self.missing = set(missing)    # names this cache does not have
        self._log = tempfile.TemporaryFile(mode='a+b', buffering=0)

    @property
    def downloads(self):
        return [line.split()[0] for line in self._download_log()]

    @property
    def download_pids(self):
        """The ids of the processes that downloaded."""
        return set(int(line.split()[1]) for line in self._download_log())

    def _download_log(self):
        size = os.fstat(self._log.fileno()).st_size
        return os.pread(self._log.fileno(), size, 0).decode().splitlines()

    def narinfo(self, path):
        if path.name in self.missing:
            return None
        return self.closure.infos.get(path)

    def open_nar(self, url, store_path=None, nar_size=None):
        name = store_path.name
        self._log.write(('%s %d\n' % (name, os.getpid())).encode())
        if name in self.broken:
            raise errors.CacheUnavailable('the cache stopped answering', cache=self.url)
        data = bytearray(self.closure.nars[url])
        if name in self.spoilt:
            data[data.index(b'echo')] ^= 0x20   # the NAR stays well-formed
        return io.BytesIO(bytes(data))

    def cache_info(self):
        return {'StoreDir': STORE_DIR}

    def take_connections(self, share, shares):
        pass

    def let_go_of_connections(self):
        pass

    def priority(self):
        return 50


@pytest.fixture
def closure(tmp_path):
    return Closure(tmp_path / 'trees')


@pytest.fixture(params=['inline', 'read ahead', 'worker processes'])
def store(request, tmp_path, monkeypatch):
    """The store to realise into; each test runs with NARs unpacked as they are read, again
    with every NAR read ahead in a thread of its own (as large NARs are), and again with
    the downloads in worker processes (as from HTTP caches)."""
    if request.param == 'read ahead':
        monkeypatch.setattr(realise, 'READ_AHEAD_MIN', 0)
    if request.param == 'worker processes':
        monkeypatch.setattr(FakeCache, 'fork_friendly', True)
        monkeypatch.setattr(realise, 'WORKERS_MIN_PATHS', 2)
    with LocalStore(root=str(tmp_path / 'root')) as opened:
        yield opened


def closed(store):
    """Every valid path's references are valid too."""
    valid = store.valid_subset(list(store_path(name) for name in GRAPH))
    return store.closure(sorted(valid)) == valid


# the planner

def test_plan_walks_the_closure_references_first(closure):
    cache = FakeCache('mem://one', closure)
    plan = plan_closure([closure.paths['app']], [cache], TRUSTED)
    order = [item.store_path.name for item in plan.to_fetch]
    assert sorted(order) == sorted(GRAPH)
    for index, name in enumerate(order):
        assert set(GRAPH[name]) <= set(order[:index]), order
    assert plan.valid == set()
    assert plan.unpacked_bytes == sum(info.nar_size for info in closure.infos.values())


def test_plan_skips_what_is_present_and_its_references(closure):
    cache = FakeCache('mem://one', closure)
    present = closure.closure_of('lib')
    plan = plan_closure([closure.paths['app']], [cache], TRUSTED,
                        present=lambda paths: set(paths) & present)
    assert sorted(item.store_path.name for item in plan.to_fetch) == ['app', 'tool']
    assert plan.valid == {closure.paths['lib']}   # its references are never asked for


def test_plan_asks_the_next_cache_for_a_missing_path(closure):
    first = FakeCache('mem://one', closure, missing=['data'])
    second = FakeCache('mem://two', closure)
    plan = plan_closure([closure.paths['app']], [first, second], TRUSTED)
    sources = dict((item.store_path.name, item.cache.url) for item in plan.to_fetch)
    assert sources == {'data': 'mem://two', 'lib': 'mem://one', 'tool': 'mem://one',
                       'app': 'mem://one'}


def test_plan_names_the_path_no_cache_has(closure):
    caches = [FakeCache('mem://one', closure, missing=['tool']),
              FakeCache('mem://two', closure, missing=['tool'])]
    with pytest.raises(errors.PathNotInCaches) as raised:
        plan_closure([closure.paths['app']], caches, TRUSTED)
    assert raised.value.path == str(closure.paths['tool'])
    assert 'mem://one: not found' in raised.value.message
    assert 'mem://two: not found' in raised.value.message


def test_plan_refuses_an_untrusted_signature(tmp_path):
    foreign = Closure(tmp_path / 'foreign', key=OTHER_KEY)
    with pytest.raises(errors.UntrustedPath) as raised:
        plan_closure([foreign.paths['data']], [FakeCache('mem://one', foreign)], TRUSTED)
    assert raised.value.cache == 'mem://one'
    plan = plan_closure([foreign.paths['data']], [FakeCache('mem://one', foreign)], TRUSTED,
                        require_sigs=False)
    assert [item.store_path for item in plan.to_fetch] == [foreign.paths['data']]


# the realiser

def test_realise_fetches_the_closure_and_reports_it(closure, store):
    cache = FakeCache('mem://one', closure)
    report = Realiser(store, [cache], TRUSTED, jobs=2).realise([closure.paths['app']])
    everything = set(closure.paths.values())
    assert store.valid_subset(list(everything)) == everything
    assert set(item.store_path for item in report.fetched) == everything
    assert report.changed
    assert report.sources() == dict((str(path), 'mem://one') for path in everything)
    app = store.real_path(closure.paths['app'])
    assert os.access(os.path.join(app, 'bin', 'app'), os.X_OK)
    again = Realiser(store, [cache], TRUSTED).realise([closure.paths['app']])
    assert not again.changed and again.fetched == []
    # the valid closure is reported from the database, each path with its NarSize
    assert sorted((entry['path'], entry['nar_size'], entry['state']) for entry in again.closure) == sorted(
        (str(path), info.nar_size, 'valid') for path, info in closure.infos.items())
    assert sorted(cache.downloads) == sorted(GRAPH)   # nothing downloaded twice
    in_workers = FakeCache.fork_friendly
    assert (os.getpid() not in cache.download_pids) is in_workers


def test_check_mode_reports_what_the_real_run_does_and_changes_nothing(closure, store):
    cache = FakeCache('mem://one', closure)
    store_present = closure.closure_of('lib')
    Realiser(store, [cache], TRUSTED).realise([closure.paths['lib']])
    predicted = Realiser(store, [cache], TRUSTED).realise([closure.paths['app']], check_mode=True)
    assert store.valid_subset(list(closure.paths.values())) == store_present
    real = Realiser(store, [cache], TRUSTED).realise([closure.paths['app']])
    assert predicted.changed is True and real.changed is True
    predicted_dict, real_dict = predicted.as_dict(), real.as_dict()
    assert sorted(predicted_dict['to_fetch']) == sorted(real_dict['fetched'])
    assert predicted.unpacked_bytes == real.unpacked_bytes
    assert [e['state'] for e in predicted.closure if e['state'] != 'valid'] == ['would fetch'] * 2


def test_download_fails_over_to_another_cache(closure, store):
    first = FakeCache('mem://one', closure, broken=['lib'])
    second = FakeCache('mem://two', closure)
    report = Realiser(store, [first, second], TRUSTED).realise([closure.paths['app']])
    sources = report.sources()
    assert sources[str(closure.paths['lib'])] == 'mem://two'
    assert sources[str(closure.paths['app'])] == 'mem://one'
    assert second.downloads == ['lib']
    assert closed(store) and len(store.valid_subset(list(closure.paths.values()))) == 4


def test_after_a_failure_what_is_valid_is_a_closed_set(closure, store):
    cache = FakeCache('mem://one', closure, spoilt=['lib'])
    with pytest.raises(errors.HashMismatch) as raised:
        Realiser(store, [cache], TRUSTED, jobs=4).realise([closure.paths['app']])
    assert raised.value.path == str(closure.paths['lib'])
    assert raised.value.cache == 'mem://one'
    valid = store.valid_subset(list(closure.paths.values()))
    assert closure.paths['lib'] not in valid and closure.paths['app'] not in valid
    assert closed(store)
    leftovers = [name for name in os.listdir(store.real_store_dir)
                 if StorePath(name[:32], name[33:]) not in valid] if os.path.isdir(
        store.real_store_dir) else []
    assert leftovers == []


def test_a_read_ahead_nar_that_fails_midway_leaves_nothing_and_no_thread(closure, store):
    """A NAR read ahead that the cache cuts off: the error is the cache's, no temporary
    copy remains and the helper thread is gone once the run fails."""
    class Failing(FakeCache):
        def open_nar(self, url, store_path=None, nar_size=None):
            stream = super(Failing, self).open_nar(url, store_path, nar_size)
            if store_path.name != 'lib':
                return stream
            data = stream.read()

            class CutOff(object):
                given = False

                def read(self, size=-1):
                    if self.given:
                        raise errors.CacheUnavailable('connection reset', cache='mem://one')
                    self.given = True
                    return data[:len(data) // 2]

                def close(self):
                    pass
            return CutOff()
    with pytest.raises(errors.CacheUnavailable, match='connection reset'):
        Realiser(store, [Failing('mem://one', closure)], TRUSTED, jobs=2).realise(
            [closure.paths['app']])
    assert closed(store)
    assert not [name for name in os.listdir(store.real_store_dir) if name.startswith('.')]
    assert not [thread for thread in threading.enumerate()
                if thread.name == 'nixcache-read-ahead']


def test_when_every_cache_fails_the_error_names_them_all(closure, store):
    caches = [FakeCache('mem://one', closure, broken=['data']),
              FakeCache('mem://two', closure, broken=['data'])]
    with pytest.raises(errors.CacheUnavailable) as raised:
        Realiser(store, caches, TRUSTED).realise([closure.paths['data']])
    assert 'mem://one' in raised.value.message and 'mem://two' in raised.value.message
    assert store.valid_subset([closure.paths['data']]) == set()
