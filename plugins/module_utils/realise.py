# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Realise a closure: plan, fetch, verify, commit and register, then report.

Each NAR flows through one pipeline, in one pass and bounded memory:
cache stream -> count -> decompress -> sha256 and size -> safe unpack into a temporary
directory beside the final path.  Only when NarHash and NarSize match is the directory
renamed into place.  All fetched paths are registered in one transaction, references
first, while their per-path locks are still held, so a path is either fully valid in
the store or absent.
"""

import concurrent.futures
import contextlib
import time

from ansible_collections.nixcache.closure.plugins.module_utils.closure import find_narinfo, plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.compression import open_decompressed
from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    CacheUnavailable,
    HashMismatch,
    InsufficientSpace,
    NixCacheError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import (
    HashingReader,
    format_base32,
)
from ansible_collections.nixcache.closure.plugins.module_utils import nar
from ansible_collections.nixcache.closure.plugins.module_utils.progress import Progress

MIB = 1024.0 * 1024.0


class CountingReader(object):
    """Counts the bytes read from a stream (the download size as it happens)."""

    def __init__(self, stream, on_read=None):
        self._stream = stream
        self._on_read = on_read
        self.count = 0

    def read(self, size=-1):
        data = self._stream.read(size)
        self.count += len(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data


class Realiser(object):
    """Puts the closure of some store paths into a LocalStore from a list of caches."""

    def __init__(self, store, caches, trusted_keys, require_sigs=True, jobs=4, register=True,
                 progress=None):
        self.store = store
        self.progress = progress or Progress()
        self.caches = caches
        self.trusted_keys = trusted_keys
        self.require_sigs = require_sigs
        self.jobs = max(1, jobs)
        self.register = register

    def present(self, paths):
        """Paths that need no fetching: valid in the database (or on disk, unregistered mode)."""
        if self.register:
            return self.store.valid_subset(paths)
        return set(path for path in paths if self.store.exists(path))

    def plan(self, requested):
        return plan_closure(requested, self.caches, self.trusted_keys, present=self.present,
                            require_sigs=self.require_sigs, jobs=max(self.jobs, 8))

    def check_space(self, plan):
        free = self.store.free_bytes()
        if plan.unpacked_bytes > free:
            raise InsufficientSpace(
                'not enough free space under the store for the closure',
                path=self.store.real_store_dir,
                expected='%d bytes (%.1f MiB) unpacked' % (plan.unpacked_bytes, plan.unpacked_bytes / MIB),
                found='%d bytes (%.1f MiB) free' % (free, free / MIB))

    def realise(self, requested, check_mode=False):
        """Realise ``requested`` (StorePaths); returns the report dict."""
        started = time.time()
        plan = self.plan(requested)
        self.check_space(plan)
        fetched = {}
        if plan.to_fetch and not check_mode:
            fetched = self._fetch_and_commit(plan)
        return self._report(plan, fetched, check_mode, time.time() - started)

    def _fetch_and_commit(self, plan):
        """Fetch every planned path; register the lot; return path -> bytes downloaded."""
        downloaded = {}
        committed = []
        self.progress.start(len(plan.to_fetch), plan.download_bytes)
        with contextlib.ExitStack() as locks:
            try:
                with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
                    futures = [pool.submit(self._fetch_one, item, locks) for item in plan.to_fetch]
                    try:
                        for future in concurrent.futures.as_completed(futures):
                            result = future.result()
                            if result is not None:
                                used, count = result
                                downloaded[used.store_path] = count
                                committed.append(used)
                                self.progress.path_done(str(used.store_path), count)
                    except BaseException:
                        for future in futures:
                            future.cancel()
                        # the ones already running finish (or fail) on their own
                        for future in futures:
                            if not future.cancelled():
                                try:
                                    result = future.result()
                                    if result is not None and result[0] not in committed:
                                        committed.append(result[0])
                                except Exception:
                                    pass
                        raise
                plan.use(committed)
                if self.register:
                    self.store.register([item.narinfo for item in plan.to_fetch
                                         if item.store_path in downloaded])
            except BaseException:
                self._keep_closed_subset(committed)
                raise
        return downloaded

    def _fetch_one(self, item, locks):
        """Fetch, verify and commit one path under its lock.

        Returns (the PlannedPath actually used, bytes downloaded), or None if the path
        became valid meanwhile.  When its cache stops answering, another cache that has
        a trustworthy copy serves the path instead.
        """
        store_path = item.store_path
        locks.enter_context(self.store.lock_path(store_path))
        if self.store.exists(store_path) and self.present([store_path]):
            return None
        failures, tried = [], []
        while True:
            try:
                return item, self._download(item)
            except CacheUnavailable as error:
                failures.append('%s: %s' % (item.cache.url, error.message))
                tried.append(item.cache)
                others = [cache for cache in self.caches
                          if cache not in tried and not cache.unavailable]
                try:
                    item = find_narinfo(store_path, others, self.trusted_keys, self.require_sigs)
                except NixCacheError:
                    if len(failures) == 1:
                        raise error
                    raise CacheUnavailable('no cache could deliver the path: %s' % '; '.join(failures),
                                           path=str(store_path))

    def _download(self, item):
        """Stream one NAR into a temporary directory, check it, and move it into place."""
        store_path = item.store_path
        self.store.remove_invalid(store_path)
        temp_dir = self.store.temp_dir_for(store_path)
        try:
            raw = item.cache.open_nar(item.narinfo.url, store_path)
            try:
                counted = CountingReader(raw, self.progress.add_bytes)
                hashed = HashingReader(open_decompressed(item.narinfo.compression, counted))
                nar.unpack(hashed, temp_dir)
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
            self.store.commit(temp_dir, store_path)
        except NixCacheError as error:
            self.store.discard(temp_dir)
            error.path = error.path or str(store_path)
            error.cache = error.cache or item.cache.url
            raise
        except BaseException:
            self.store.discard(temp_dir)
            raise
        return counted.count

    def _keep_closed_subset(self, committed):
        """After a failure: register what is complete with its references, delete the rest."""
        done = dict((item.store_path, item) for item in committed)
        keep = set(done)
        changed = True
        while changed:  # drop paths with a reference that is neither valid nor kept
            changed = False
            for path in list(keep):
                missing = [ref for ref in done[path].references
                           if ref not in keep and not self.present([ref])]
                if missing:
                    keep.discard(path)
                    changed = True
        try:
            if self.register and keep:
                self.store.register([item.narinfo for item in committed if item.store_path in keep])
        except NixCacheError:
            keep = set()
        for path in set(done) - keep:
            self.store.discard(self.store.real_path(path))

    def _report(self, plan, downloaded, check_mode, seconds):
        fetched = [item for item in plan.to_fetch if item.store_path in downloaded]
        if check_mode:
            download_bytes, unpacked_bytes = plan.download_bytes, plan.unpacked_bytes
        else:
            download_bytes = sum(downloaded.values())
            unpacked_bytes = sum(item.narinfo.nar_size for item in fetched)
        closure = [self._planned_entry(item, downloaded, check_mode) for item in plan.to_fetch]
        closure.extend(self._valid_entries(plan.valid))
        return dict(
            changed=bool(plan.to_fetch if check_mode else fetched),
            requested=[str(path) for path in plan.requested],
            closure=closure,
            fetched=[str(item.store_path) for item in fetched],
            to_fetch=[str(item.store_path) for item in plan.to_fetch] if check_mode else [],
            download_bytes=download_bytes,
            unpacked_bytes=unpacked_bytes,
            download_mb=round(download_bytes / MIB, 2),
            unpacked_mb=round(unpacked_bytes / MIB, 2),
            seconds=round(seconds, 3),
        )

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
        entries = []
        for path in sorted(self.store.closure(sorted(valid))):
            info = self.store.path_info(path)
            entries.append(dict(path=str(path), nar_size=info['nar_size'], download_size=0,
                                cache=None, state='valid', signed_by=None))
        return entries
