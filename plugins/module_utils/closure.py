# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The planner: which store paths a closure needs, and where each one comes from.

Starting from the requested paths, the planner walks references through the caches'
``.narinfo`` files, several look-ups at a time.  A path already valid in the local store
is not looked up at all: Nix's store invariant says its whole closure is valid too.
Each narinfo must describe exactly the path asked for and, unless signatures are not
required, carry a signature by a trusted key.  Caches are asked in order; the first
trustworthy answer wins.
"""

import collections
import concurrent.futures
from typing import Any, Callable, Iterable, Optional, Sequence, Set

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidNarInfo,
    NixCacheError,
    PathNotInCaches,
)
from ansible_collections.nixcache.closure.plugins.module_utils.signing import verify_narinfo
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import references_first


class PlannedPath(object):
    """One path of a closure that has to be fetched."""

    def __init__(self, store_path, narinfo, cache, signed_by):
        self.store_path = store_path
        self.narinfo = narinfo
        self.cache = cache
        self.signed_by = signed_by

    @property
    def references(self):
        """The paths this one needs, itself left out."""
        return [ref for ref in self.narinfo.references if ref != self.store_path]

    def as_dict(self):
        info = self.narinfo
        return dict(store_path=str(self.store_path), url=info.url, compression=info.compression,
                    file_hash=info.file_hash, file_size=info.file_size, nar_hash=info.nar_hash,
                    nar_size=info.nar_size, references=[str(ref) for ref in info.references],
                    deriver=info.deriver, sigs=list(info.sigs), signed_by=self.signed_by,
                    cache=self.cache.url)


class Plan(object):
    """The outcome of planning: paths to fetch (references first) and paths already valid."""

    def __init__(self, requested, to_fetch, valid):
        self.requested = requested
        self.to_fetch = to_fetch
        self.valid = valid

    def use(self, items):
        """Replace planned paths by the copies actually fetched (from another cache, after
        a failover), keeping the order."""
        used = dict((item.store_path, item) for item in items)
        self.to_fetch = [used.get(item.store_path, item) for item in self.to_fetch]

    @property
    def download_bytes(self):
        return sum(item.narinfo.file_size or 0 for item in self.to_fetch)

    @property
    def unpacked_bytes(self):
        return sum(item.narinfo.nar_size for item in self.to_fetch)


def plan_closure(requested: Iterable[Any], caches: Sequence[Any], trusted_keys: Any, present: Optional[Callable[[Any], Set[Any]]] = None,
                 require_sigs: bool = True, jobs: int = 8) -> 'Plan':
    """Plan the closure of ``requested`` (StorePaths).

    ``present(paths) -> set`` tells which paths need no fetching (the local store's
    valid paths); None plans the whole closure.  Raises NixCacheError subclasses that
    name the path, the caches asked and what each answered.
    """
    present = present or (lambda paths: set())
    planned = {}
    valid = set()
    seen = set()

    def look_up(store_path):
        return find_narinfo(store_path, caches, trusted_keys, require_sigs)

    jobs = max(1, jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = set()           # at most ``jobs`` look-ups: each wait goes over them all
        waiting = collections.deque()

        def enqueue(paths):
            fresh = [path for path in paths if path not in seen]
            seen.update(fresh)
            already = present(fresh) if fresh else set()
            valid.update(already)
            waiting.extend(path for path in fresh if path not in already)
            while waiting and len(pending) < jobs:
                pending.add(pool.submit(look_up, waiting.popleft()))

        try:
            enqueue(requested)
            while pending:
                done, _still_pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                discovered = []
                for future in done:
                    pending.discard(future)
                    item = future.result()
                    planned[item.store_path] = item
                    discovered.extend(item.references)
                enqueue(discovered)
        except BaseException:
            for future in pending:
                future.cancel()
            raise

    order = references_first(list(planned), lambda path: planned[path].references)
    return Plan(list(requested), [planned[path] for path in order], valid)


def find_narinfo(store_path: Any, caches: Sequence[Any], trusted_keys: Any, require_sigs: bool = True) -> 'PlannedPath':
    """Ask the caches in order for a trustworthy narinfo of ``store_path``: a PlannedPath."""
    answers = []
    rejections = []
    for cache in caches:
        if cache.unavailable:
            answers.append('%s: skipped, it stopped answering earlier (%s)' % (cache.url, cache.unavailable))
            continue
        try:
            narinfo = cache.narinfo(store_path)
        except NixCacheError as error:
            answers.append('%s: %s' % (cache.url, error.message))
            rejections.append(error)
            continue
        if narinfo is None:
            answers.append('%s: not found' % cache.url)
            continue
        try:
            if narinfo.store_path != store_path:
                raise InvalidNarInfo('narinfo describes another store path than the one asked for',
                                     path=str(store_path), cache=cache.url,
                                     expected=str(store_path), found=str(narinfo.store_path))
            signed_by = None
            if require_sigs:
                signed_by = verify_narinfo(narinfo, trusted_keys, cache.store_dir)
        except NixCacheError as error:
            error.cache = error.cache or cache.url
            error.path = error.path or str(store_path)
            answers.append('%s: %s' % (cache.url, error.message))
            rejections.append(error)
            continue
        return PlannedPath(store_path, narinfo, cache, signed_by)

    if len(rejections) == 1 and len(answers) == 1:
        raise rejections[0]
    if not caches:
        raise PathNotInCaches('no caches configured', path=str(store_path))
    raise PathNotInCaches('no cache has a usable copy of the path; asked: %s' % '; '.join(answers),
                          path=str(store_path), cache=', '.join(c.url for c in caches))
