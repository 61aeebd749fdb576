# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's own cache of narinfos and NARs for ``fetch_on: controller``.

Ansible runs an action plugin in one worker process per host, so every host of a play
asks this directory first: a narinfo or a NAR is read from the binary cache once, by the
first worker that needs it, under a lock of its own (other workers wait for it and then
read the finished file: files are written beside their final name and renamed into
place, so none is ever read half-written).  A NAR is kept only once it decompresses to
the NarHash and NarSize of its narinfo, whose signature the planner checked; its
download stops at the size the signed NarSize allows.  NARs are keyed by NarHash (and
compression), so closures and caches that share a path share its file.

Layout: ``narinfo/<cache key>/<hash>.narinfo`` (kept for NARINFO_TTL seconds, as Nix
keeps its narinfo cache), ``nar/<NarHash>.nar-<compression>``.  The NARs are bounded by
``max_bytes``: the least recently used are removed to make room, but not those used in
the last PIN_SECONDS (another host of the same run may still be sending them).
"""

import hashlib
import os
import tempfile
import time
import uuid
from typing import Any, Optional, Sequence, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    HashMismatch,
    InsufficientSpace,
    NixCacheError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.pushed import file_name
from ansible_collections.nixcache.closure.plugins.module_utils.realise import (
    MIB,
    CountingReader,
    compressed_limit,
)
from ansible_collections.nixcache.closure.plugins.module_utils.store import _PathLock as PathLock

NARINFO_TTL = 3600
PIN_SECONDS = 3600
CHUNK = 1 << 18
TEMP_PREFIX = '.part-'


def default_directory() -> str:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'nixcache', 'controller')


class ControllerCache(object):
    """A verified, size-bounded directory of narinfos and NARs shared by the workers."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = os.path.abspath(directory)
        self.max_bytes = max_bytes
        self.nar_dir = os.path.join(self.directory, 'nar')
        self.bytes_from_caches = 0    # what this worker read from the binary caches
        for sub in (self.directory, self.nar_dir, os.path.join(self.directory, 'narinfo')):
            os.makedirs(sub, 0o700, exist_ok=True)

    # -- narinfos ---------------------------------------------------------------------------

    def wrap(self, caches: Sequence[Any]) -> list:
        """The caches, each answering narinfo look-ups through this directory."""
        return [CachedNarinfos(cache, self) for cache in caches]

    def narinfo(self, cache: Any, store_path: Any) -> Optional[NarInfo]:
        directory = os.path.join(self.directory, 'narinfo',
                                 hashlib.sha256(cache.url.encode('utf-8')).hexdigest()[:24])
        os.makedirs(directory, 0o700, exist_ok=True)
        path = os.path.join(directory, store_path.hash_part + '.narinfo')
        with PathLock(path + '.lock'):
            text = _read_fresh(path, NARINFO_TTL)
            if text is None:
                narinfo = cache.narinfo(store_path)
                if narinfo is None:
                    return None       # not remembered: the path may be pushed later
                text = narinfo.to_text(cache.store_dir)
                _write_atomically(path, text.encode('utf-8'))
        return NarInfo.parse(text, store_dir=cache.store_dir, source=cache.url)

    # -- NARs -------------------------------------------------------------------------------

    def check_room(self, items: Sequence[Any]) -> None:
        """Refuse a closure whose NARs could not fit in the cache at all."""
        needed = sum(_room(item.narinfo) for item in items
                     if not os.path.exists(self.nar_path(item.narinfo)))
        held = sum(os.path.getsize(self.nar_path(item.narinfo)) for item in items
                   if os.path.exists(self.nar_path(item.narinfo)))
        if needed + held > self.max_bytes:
            raise InsufficientSpace(
                'the closure does not fit in the controller cache: raise controller_cache_max_mb',
                path=self.directory, expected='up to %.1f MiB' % ((needed + held) / MIB),
                found='controller_cache_max_mb %.1f' % (self.max_bytes / MIB))

    def nar_path(self, narinfo: NarInfo) -> str:
        return os.path.join(self.nar_dir, file_name(narinfo.nar_hash, narinfo.compression))

    def nar(self, item: Any) -> str:
        """The path of the verified NAR of a PlannedPath, downloaded first if need be."""
        final = self.nar_path(item.narinfo)
        with PathLock(final + '.lock'):
            if os.path.exists(final):
                os.utime(final)
                return final
            self._make_room(_room(item.narinfo))
            self._download(item, final)
        return final

    def _download(self, item, final):
        info = item.narinfo
        from ansible_collections.nixcache.closure.plugins.module_utils.compression import open_decompressed
        temporary = os.path.join(self.nar_dir, '%s%s' % (TEMP_PREFIX, uuid.uuid4().hex))
        raw = item.cache.open_nar(info.url, item.store_path, info.nar_size)
        try:
            with open(temporary, 'wb') as out:
                counted = CountingReader(raw, info.nar_size)
                tee = _Tee(counted, out)
                decompressed = open_decompressed(info.compression, tee)
                try:
                    digest, size = _hash_stream(decompressed, info.nar_size, item)
                finally:
                    decompressed.close()
                while tee.read(CHUNK):     # keep what follows the compressed stream too
                    pass
            self.bytes_from_caches += counted.count
            if size != info.nar_size:
                raise HashMismatch('NAR size differs from the narinfo', path=str(item.store_path),
                                   cache=item.cache.url, expected=str(info.nar_size), found=str(size))
            if digest != info.nar_digest:
                raise HashMismatch('NAR hash differs from the narinfo', path=str(item.store_path),
                                   cache=item.cache.url, expected=info.nar_hash,
                                   found=format_base32(digest))
            os.rename(temporary, final)
        except NixCacheError as error:
            error.path = error.path or str(item.store_path)
            error.cache = error.cache or item.cache.url
            raise
        finally:
            raw.close()
            if os.path.exists(temporary):
                os.unlink(temporary)

    def _make_room(self, incoming):
        with PathLock(os.path.join(self.directory, 'size.lock')):
            entries = []
            for name in os.listdir(self.nar_dir):
                if name.endswith('.lock'):
                    continue
                try:
                    stat = os.stat(os.path.join(self.nar_dir, name))
                except FileNotFoundError:
                    continue
                entries.append((stat.st_mtime, stat.st_size, name))
            total = sum(size for _mtime, size, _name in entries)
            pinned_after = time.time() - PIN_SECONDS
            for mtime, size, name in sorted(entries):
                if total + incoming <= self.max_bytes:
                    break
                if mtime >= pinned_after or name.startswith(TEMP_PREFIX):
                    continue
                if self._evict(name, pinned_after):
                    total -= size
            if total + incoming > self.max_bytes:
                raise InsufficientSpace(
                    'the controller cache is full with NARs in use by this run: raise '
                    'controller_cache_max_mb', path=self.directory,
                    expected='%.1f MiB more' % (incoming / MIB),
                    found='%.1f of %.1f MiB used' % (total / MIB, self.max_bytes / MIB))

    def _evict(self, name, pinned_after):
        """Remove one NAR unless a worker used it since it was listed: under its own lock,
        which a worker holds while it finds (and touches) or downloads it.  No deadlock:
        a worker that downloads holds the lock of a NAR that is not there to be listed."""
        path = os.path.join(self.nar_dir, name)
        with PathLock(path + '.lock'):
            try:
                if os.path.getmtime(path) >= pinned_after:
                    return False
                os.unlink(path)
            except FileNotFoundError:
                pass
        return True


class CachedNarinfos(object):
    """A cache whose narinfo look-ups go through the controller cache; the rest is its own."""

    def __init__(self, cache: Any, controller: ControllerCache) -> None:
        self._cache = cache
        self._controller = controller

    def narinfo(self, store_path: Any) -> Optional[NarInfo]:
        return self._controller.narinfo(self._cache, store_path)

    def __getattr__(self, name):
        return getattr(self._cache, name)


class _Tee(object):
    """A reader that also writes what it reads to ``out``."""

    def __init__(self, stream, out):
        self._stream = stream
        self._out = out

    def read(self, size=-1):
        data = self._stream.read(size)
        if data:
            self._out.write(data)
        return data


def _hash_stream(stream, nar_size, item) -> Tuple[bytes, int]:
    """sha256 and size of a decompressed NAR, stopped one byte beyond ``nar_size``."""
    digest, size = hashlib.sha256(), 0
    while True:
        data = stream.read(CHUNK)
        if not data:
            return digest.digest(), size
        size += len(data)
        if size > nar_size:
            raise HashMismatch('the NAR goes on beyond the NarSize of its narinfo',
                               path=str(item.store_path), cache=item.cache.url,
                               expected=str(nar_size), found='more')
        digest.update(data)


def _room(narinfo: NarInfo) -> int:
    """The room to make for a NAR: its announced FileSize, else the most its signed
    NarSize allows (the download itself never goes beyond that)."""
    bound = compressed_limit(narinfo.nar_size)
    return min(narinfo.file_size, bound) if narinfo.file_size else bound


def _read_fresh(path, ttl) -> Optional[str]:
    try:
        if time.time() - os.path.getmtime(path) > ttl:
            return None
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _write_atomically(path, data):
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=TEMP_PREFIX)
    try:
        with os.fdopen(handle, 'wb') as stream:
            stream.write(data)
        os.rename(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
