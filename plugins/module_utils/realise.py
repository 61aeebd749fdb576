# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Realise a closure: plan, fetch, verify, commit and register, then report.

Each NAR flows through one pipeline, in one pass and bounded memory:
cache stream -> count -> decompress -> sha256 and size -> safe unpack into a temporary
directory beside the final path, in parallel and without any lock (for a large NAR the
steps before the unpacker run in a thread of their own, a few chunks ahead of it).  Only when NarHash
and NarSize match, and the path's references are valid, is the directory renamed into
place and registered, under the path's lock, so a path is either fully valid in the
store or absent.  Decompression and unpacking stop as soon as the stream goes beyond the
NarSize the signed narinfo declares.
"""

import collections
import concurrent.futures
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

from ansible_collections.nixcache.closure.plugins.module_utils.closure import Plan, find_narinfo, plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    CacheUnavailable,
    HashMismatch,
    InsufficientSpace,
    InvalidNar,
    NixCacheError,
    StoreError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import (
    HashingReader,
    format_base32,
)
from ansible_collections.nixcache.closure.plugins.module_utils.progress import Progress
from ansible_collections.nixcache.closure.plugins.module_utils.receipts import receipt_path, write_receipts
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore

MIB = 1024.0 * 1024.0
# NARs at least this large are downloaded, decompressed and hashed in a thread of their
# own while they are unpacked; below it a thread costs more than the overlap gains.
READ_AHEAD_MIN = 4 << 20
# Closures of at least this many paths are fetched by worker processes (see workers.py):
# many small NARs are Python work that threads cannot share out; a few large ones are
# mostly C work (decompression, hashing, writes) that threads already run side by side.
WORKERS_MIN_PATHS = 8


class CountingReader(object):
    """Counts the bytes read from a stream (the download size as it happens).

    With ``nar_size``, a stream going beyond ``compressed_limit(nar_size)`` is refused: a
    compressed NAR is never much larger than the NAR, so a cache cannot keep us
    downloading a stream that inflates to nothing.
    """

    def __init__(self, stream, nar_size=None, on_read=None):
        self._stream = stream
        self._on_read = on_read
        self.count = 0
        self.nar_size = nar_size
        self.limit = None if nar_size is None else compressed_limit(nar_size)

    def read(self, size=-1):
        data = self._stream.read(size)
        self.count += len(data)
        if self._on_read is not None:
            self._on_read(len(data))
        if self.limit is not None and self.count > self.limit:
            raise InvalidNar('the compressed NAR goes on beyond what a NAR size of %d bytes '
                             'allows' % self.nar_size, expected='at most %d bytes' % self.limit,
                             found='more than %d bytes' % self.limit)
        return data


def compressed_limit(nar_size: int) -> int:
    """The most a compressed NAR of ``nar_size`` bytes may take: the size itself, with
    room for the worst expansion of incompressible data and the framing of any method."""
    return nar_size + nar_size // 16 + 65536


class Report(object):
    """What a realisation did, or in check mode would do: the plan, the paths fetched,
    one entry a path of the closure, the receipts written.  ``changed`` and the lists
    of a check-mode report are those the real run reports."""

    def __init__(self, plan: Plan, fetched: List[Any], downloaded: Dict[Any, int], closure: List[Dict[str, Any]], check_mode: bool,
                 seconds: float) -> None:
        self.plan = plan
        self.fetched = fetched            # PlannedPaths installed by this run
        self.downloaded = downloaded      # StorePath -> bytes downloaded
        self.closure = closure
        self.check_mode = check_mode
        self.seconds = seconds
        self.receipts = []
        self.store_created = False
        self.optimised = None             # Savings, when asked to optimise
        self.worker_processes = 0         # how many fetched, 0: threads of this process

    @property
    def changed(self) -> bool:
        fetching = self.plan.to_fetch if self.check_mode else self.fetched
        return bool(fetching or self.receipts or self.store_created)

    @property
    def download_bytes(self) -> int:
        if self.check_mode:
            return self.plan.download_bytes
        return sum(self.downloaded.values())

    @property
    def unpacked_bytes(self) -> int:
        if self.check_mode:
            return self.plan.unpacked_bytes
        return sum(item.narinfo.nar_size for item in self.fetched)

    def sources(self) -> Dict[str, str]:
        """Path text -> the cache each fetched path came from (for the receipts)."""
        return dict((str(item.store_path), item.cache.url) for item in self.fetched)

    def added(self) -> List[Dict[str, Any]]:
        """The entries of paths added to the store (or that would be)."""
        return [entry for entry in self.closure if entry['state'] in ('fetched', 'would fetch')]

    def as_dict(self) -> Dict[str, Any]:
        result = dict(
            changed=self.changed,
            requested=[str(path) for path in self.plan.requested],
            closure=self.closure,
            fetched=[str(item.store_path) for item in self.fetched],
            to_fetch=[str(item.store_path) for item in self.plan.to_fetch] if self.check_mode else [],
            download_bytes=self.download_bytes,
            unpacked_bytes=self.unpacked_bytes,
            download_mb=round(self.download_bytes / MIB, 2),
            unpacked_mb=round(self.unpacked_bytes / MIB, 2),
            seconds=round(self.seconds, 3),
            receipts=list(self.receipts),
            worker_processes=self.worker_processes,
        )
        if self.optimised is not None:
            result['optimised'] = self.optimised.as_dict()
        return result


class Realiser(object):
    """Puts the closure of some store paths into a LocalStore from a list of caches."""

    def __init__(self, store: LocalStore, caches: Sequence[Any], trusted_keys: Any, require_sigs: bool = True, jobs: int = 4, register: bool = True,
                 progress: Optional[Progress] = None, processes: bool = True) -> None:
        self.store = store
        self.progress = progress or Progress()
        self.caches = caches
        self.trusted_keys = trusted_keys
        self.require_sigs = require_sigs
        self.jobs = max(1, jobs)
        self.register = register
        self.processes = processes
        self._workers = None       # the worker processes of the fetch under way (see workers.py)
        self.worker_processes = 0  # how many fetched in this run
        self._planned = {}         # what they fetch: base name -> the PlannedPath

    def present(self, paths: Iterable[Any]) -> Set[Any]:
        """Paths that need no fetching: valid in the database (or on disk, unregistered mode)."""
        if self.register:
            return self.store.valid_subset(paths)
        return set(path for path in paths if self.store.exists(path))

    def plan(self, requested: Iterable[Any]) -> Plan:
        return plan_closure(requested, self.caches, self.trusted_keys, present=self.present,
                            require_sigs=self.require_sigs, jobs=max(self.jobs, 8))

    def check_space(self, plan: Plan) -> None:
        free = self.store.free_bytes()
        if plan.unpacked_bytes > free:
            raise InsufficientSpace(
                'not enough free space under the store for the closure',
                path=self.store.real_store_dir,
                expected='%d bytes (%.1f MiB) unpacked' % (plan.unpacked_bytes, plan.unpacked_bytes / MIB),
                found='%d bytes (%.1f MiB) free' % (free, free / MIB))

    def realise(self, requested: Iterable[Any], check_mode: bool = False, receipts_root: Optional[str] = None) -> Report:
        """Realise ``requested`` (StorePaths); returns a Report.

        With ``receipts_root``, the receipt of every requested path is written (or, in
        check mode, the receipts a real run would write are named) under that root.
        """
        started = time.time()
        plan = self.plan(requested)
        self.check_space(plan)
        fetched = {}
        if plan.to_fetch and not check_mode:
            fetched = self._fetch_and_commit(plan)
        report = self._report(plan, fetched, check_mode, time.time() - started)
        report.worker_processes = self.worker_processes
        if receipts_root is not None and self.register:
            report.receipts = self._receipts(plan, report, receipts_root, check_mode)
        return report

    def _receipts(self, plan, report, root, check_mode):
        """The receipts written, or in check mode those a real run would write: a path
        fetched now always changes its receipts; the others are compared as they are."""
        if not check_mode:
            return write_receipts(self.store, plan.requested, report.sources(), root=root)
        valid = set(plan.valid)
        unchanged = [path for path in plan.requested if path in valid]
        would = set(write_receipts(self.store, unchanged, {}, root=root, check_mode=True))
        return [receipt_path(root, path) for path in plan.requested
                if path not in valid or receipt_path(root, path) in would]

    def _fetch_and_commit(self, plan):
        """Fetch every planned path; return path -> bytes downloaded.

        NARs are downloaded and checked in parallel into private temporary directories,
        holding no lock.  A path is installed (moved into place and registered) once its
        references are valid, under its own lock, which is released right after, as
        Nix does.  A run thus never holds one lock while waiting for another (runs with
        overlapping closures cannot deadlock), holds at most ``jobs`` locks, and whatever
        is valid after a failure is a closed set.  Two runs fetching the same path at
        the same time may both download it; the second finds it valid and drops its copy.
        """
        # The NAR reader and the decompressors (and ctypes, subprocess) load only when
        # something is fetched (a run that finds its closure valid starts faster), here,
        # before the worker threads start: imports racing in threads can fail.
        from ansible_collections.nixcache.closure.plugins.module_utils import allocator, compression, nar, readahead
        allocator.reuse_freed_buffers()   # before the workers fork: they inherit it
        self._open_decompressed = compression.open_decompressed
        self._unpack = nar.unpack
        self._read_ahead = readahead.ReadAhead
        items = dict((item.store_path, item) for item in plan.to_fetch)
        self.store.remove_stale_copies(items)   # one listing of the store, not one a path
        self._workers = self._start_workers(plan.to_fetch)
        self.worker_processes = self._workers.count if self._workers is not None else 0
        try:
            return self._fetch_in_order(plan, items)
        finally:
            if self._workers is not None:
                self._workers.close()
                self._workers = None

    def _start_workers(self, to_fetch):
        """Worker processes for the downloads when they pay (WORKERS_MIN_PATHS paths or
        more, two jobs or more), each path from a cache that can serve a forked process
        (file, HTTP(S), pushed; not S3); else None: threads fetch then."""
        count = min(self.jobs, len(to_fetch))
        if (not self.processes or count < 2 or len(to_fetch) < WORKERS_MIN_PATHS or not hasattr(os, 'fork')
                or not all(getattr(item.cache, 'fork_friendly', False) for item in to_fetch)):
            return None
        from ansible_collections.nixcache.closure.plugins.module_utils.workers import Workers
        self._planned = dict((item.store_path.base, item) for item in to_fetch)
        caches = list(self.caches)

        def started(number):   # each worker takes over its share of our kept-alive connections
            for cache in caches:
                cache.take_connections(number, count)
        try:
            workers = Workers(count, self._download_in_worker, started)
        except OSError:   # no more processes allowed (a crowded host): threads do it
            return None
        for cache in caches:
            cache.let_go_of_connections()
        return workers

    def _fetch_in_order(self, plan, items):
        waiting = dict((path, set(ref for ref in item.references if ref in items))
                       for path, item in items.items())
        dependents = {}
        for path, refs in waiting.items():
            for ref in refs:
                dependents.setdefault(ref, []).append(path)
        unpacked = {}                # path -> (PlannedPath used, temp dir, bytes), to install
        downloaded, used, failures = {}, [], []
        self.progress.start(len(plan.to_fetch), plan.download_bytes)
        threads = self.jobs if self._workers is None else self._workers.count + 2   # + installs
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            running = {}             # future -> (what it does, path)

            def install_if_ready(path):
                if path in unpacked and not waiting[path]:
                    running[pool.submit(self._install, *unpacked.pop(path))] = ('install', path)

            def now_valid(path):
                for dependent in dependents.get(path, ()):
                    waiting[dependent].discard(path)
                    install_if_ready(dependent)

            queued = collections.deque(plan.to_fetch)   # references first
            downloading = [0]

            # downloads submitted at a time, not the whole closure: each wait goes over
            # every future submitted; with workers, one for each
            in_flight = self._workers.count if self._workers is not None else 2 * self.jobs

            def start_downloads():
                while queued and not failures and downloading[0] < in_flight:
                    item = queued.popleft()
                    running[pool.submit(self._unpack_one, item)] = ('unpack', item.store_path)
                    downloading[0] += 1

            start_downloads()
            try:
                while running:
                    done, _pending = concurrent.futures.wait(
                        list(running), return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        step, path = running.pop(future)
                        if step == 'unpack':
                            downloading[0] -= 1
                        if future.cancelled():
                            continue
                        try:
                            result = future.result()
                        except Exception as error:
                            if not failures:   # start no more downloads
                                for other, (other_step, _path) in running.items():
                                    if other_step == 'unpack':
                                        other.cancel()
                            failures.append(error)
                            continue
                        if step == 'unpack':   # downloaded and checked (or valid already)
                            self.progress.path_done(str(path), result[2] if result else 0)
                            if result is not None:
                                unpacked[path] = result
                                install_if_ready(path)
                                continue
                        if step == 'install' and result is not None:
                            used.append(result[0])
                            downloaded[path] = result[1]
                        now_valid(path)
                    start_downloads()
            except BaseException:
                for future in running:
                    future.cancel()
                if self._workers is not None:   # stop the downloads under way at once
                    self._workers.close(kill=True)
                raise
            finally:
                for _item, temp_dir, _count in unpacked.values():   # could not be installed
                    self.store.discard(temp_dir)
        plan.use(used)
        if failures:
            raise failures[0]
        return downloaded

    def _unpack_one(self, item):
        """Download and check one path into a temporary directory, holding no lock.

        Returns (the PlannedPath actually used, the directory, bytes downloaded), or
        None if the path is already valid.  When its cache stops answering, another
        cache that has a trustworthy copy serves the path instead.
        """
        if self.store.exists(item.store_path) and self.present([item.store_path]):
            return None
        return self._download_with_failover(item)

    def _install(self, item, temp_dir, count):
        """Move a checked path into place and register it, under its lock.

        Returns (item, count), or None when the path became valid meanwhile (another run,
        or Nix, added it); our copy is dropped then.
        """
        store_path = item.store_path
        committed = False
        try:
            with self.store.lock_path(store_path):
                if self.store.exists(store_path):
                    if self.present([store_path]):
                        return None
                    # an unregistered leftover (stale copies went at the start)
                    self.store.discard(self.store.real_path(store_path))
                self.store.commit(temp_dir, store_path)
                committed = True
                if self.register:
                    try:
                        self.store.register([item.narinfo])
                    except BaseException:
                        self.store.discard(self.store.real_path(store_path))
                        raise
                return item, count
        finally:
            if not committed:
                self.store.discard(temp_dir)

    def _download_with_failover(self, item):
        store_path = item.store_path
        failures, tried = [], []
        while True:
            try:
                return (item,) + self._download_somewhere(item)
            except CacheUnavailable as error:
                failures.append('%s: %s' % (item.cache.url, error.message))
                tried.append(item.cache)
                others = [cache for cache in self.caches
                          if cache not in tried and not cache.unavailable]
                try:
                    item = find_narinfo(store_path, others, self.trusted_keys, self.require_sigs)
                except NixCacheError:
                    if len(failures) == 1:
                        raise error from None
                    raise CacheUnavailable('no cache could deliver the path: %s' % '; '.join(failures),
                                           path=str(store_path)) from None

    def _download_somewhere(self, item):
        """``_download`` in a worker process when there are workers and the item is one
        they know (a copy found by a failover is fetched here): (directory, bytes)."""
        if self._workers is None or self._planned.get(item.store_path.base) is not item:
            return self._download(item, self.store.temp_dir_for(item.store_path), self.progress.add_bytes)
        # named here: the name carries our process id, which keeps other runs off it
        temp_dir = self.store.temp_dir_for(item.store_path)
        try:
            count = self._workers.call((item.store_path.base, temp_dir), self.progress.add_bytes)
        except BaseException as error:
            if isinstance(error, CacheUnavailable) and not item.cache.unavailable:
                item.cache.unavailable = getattr(error, 'cache_unavailable', None)
            self.store.discard(temp_dir)   # a worker that was killed leaves its copy
            raise
        return temp_dir, count

    def _download_in_worker(self, job, add_bytes):
        """What a worker process does with a job: (base name, directory) -> bytes."""
        base, temp_dir = job
        item = self._planned[base]
        try:
            return self._download(item, temp_dir, add_bytes)[1]
        except CacheUnavailable as error:   # the parent's failover skips a cache gone quiet
            error.cache_unavailable = item.cache.unavailable
            raise

    def _download(self, item, temp_dir, add_bytes):
        """Stream one NAR into ``temp_dir`` and check it: (directory, bytes downloaded);
        ``add_bytes(count)`` hears of every chunk downloaded."""
        store_path = item.store_path
        try:
            raw = item.cache.open_nar(item.narinfo.url, store_path, item.narinfo.nar_size)
            try:
                counted = CountingReader(raw, item.narinfo.nar_size, add_bytes)
                decompressed = self._open_decompressed(item.narinfo.compression, counted)
                try:   # closed at once: a decompressor process or thread stops with the NAR
                    hashed = HashingReader(decompressed)
                    if item.narinfo.nar_size >= READ_AHEAD_MIN:
                        with self._read_ahead(hashed) as ahead:
                            self._unpack(ahead, temp_dir, max_size=item.narinfo.nar_size)
                    else:
                        self._unpack(hashed, temp_dir, max_size=item.narinfo.nar_size)
                finally:
                    decompressed.close()
            finally:
                raw.close()
            if hashed.size != item.narinfo.nar_size:
                raise HashMismatch('NAR size differs from the narinfo', path=str(store_path),
                                   cache=item.cache.url, expected=str(item.narinfo.nar_size),
                                   found=str(hashed.size))
            if hashed.digest() != item.narinfo.nar_digest:
                raise HashMismatch('NAR hash differs from the narinfo', path=str(store_path),
                                   cache=item.cache.url, expected=item.narinfo.nar_hash,
                                   found=format_base32(hashed.digest()))
        except NixCacheError as error:
            self.store.discard(temp_dir)
            error.path = error.path or str(store_path)
            error.cache = error.cache or item.cache.url
            raise
        except BaseException:
            self.store.discard(temp_dir)
            raise
        return temp_dir, counted.count

    def _report(self, plan, downloaded, check_mode, seconds):
        fetched = [item for item in plan.to_fetch if item.store_path in downloaded]
        closure = [self._planned_entry(item, downloaded, check_mode) for item in plan.to_fetch]
        closure.extend(self._valid_entries(plan.valid))
        return Report(plan, fetched, downloaded, closure, check_mode, seconds)

    @staticmethod
    def _planned_entry(item, downloaded, check_mode):
        if check_mode:
            state = 'would fetch'
        else:
            state = 'fetched' if item.store_path in downloaded else 'valid'
        return dict(path=str(item.store_path), nar_size=item.narinfo.nar_size,
                    download_size=downloaded.get(item.store_path, item.narinfo.file_size),
                    cache=item.cache.url, state=state, signed_by=item.signed_by)

    def _valid_entries(self, valid):
        """Report entries for the already-valid part of the closure, from the local database."""
        if not self.register:
            return [dict(path=str(path), nar_size=None, download_size=0, cache=None,
                         state='valid', signed_by=None) for path in sorted(valid)]
        sizes = self.store.closure_sizes(sorted(valid))
        return [dict(path=str(path), nar_size=sizes[path], download_size=0, cache=None,
                     state='valid', signed_by=None) for path in sorted(sizes)]


def realise_closure(root: str, requested: Iterable[Any], caches: Sequence[Any], trusted_keys: Any, require_sigs: bool = True, jobs: int = 4,
                    register: bool = True, receipts: bool = True, progress: Optional[Progress] = None, check_mode: bool = False,
                    optimise: bool = False) -> Report:
    """Realise ``requested`` into the store under ``root`` (made if need be; not in check
    mode) and write their receipts; returns the Report.  With ``optimise``, the paths
    fetched are deduplicated (``optimise.py``) once valid, before the store is let go."""
    if optimise and not register:
        raise StoreError('optimise needs register: only valid paths are deduplicated',
                         expected='register: true', found='register: false')
    store = LocalStore(root=root, create=not check_mode)
    store_is_new = not os.path.exists(store.db_path)
    with store:
        realiser = Realiser(store, caches, trusted_keys, require_sigs=require_sigs, jobs=jobs,
                            register=register, progress=progress)
        report = realiser.realise(requested, check_mode=check_mode,
                                  receipts_root=root if receipts else None)
        if optimise:
            from ansible_collections.nixcache.closure.plugins.module_utils.optimise import Optimiser, Savings
            report.optimised = Savings() if check_mode else Optimiser(store).optimise_paths(
                item.store_path for item in report.fetched)
    report.store_created = store_is_new
    return report
