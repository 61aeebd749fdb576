# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller pushed (``fetch_on: controller``), read as a cache like any other.

The controller sends the ``.narinfo`` texts of a closure in the module's arguments and the
NARs the host lacks in one directory of the host's temporary space: small NARs packed in
one uncompressed ``bundle.tar`` (one transfer for many paths), large ones as files of their
own.  Each entry names the cache the controller read the path from; the host trusts none
of it more than that cache: every narinfo is checked against the host's trusted keys and
every NAR against its signed NarHash and NarSize, by the same code as for a pulled path.
"""

import os
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    CacheUnavailable,
    InvalidNarInfo,
)
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.nixconf import (
    NIX_CONF,
    read_nix_conf,
    setting_list,
)
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    CacheOptions,
    Substituter,
)

BUNDLE = 'bundle.tar'
# NARs at least this large are sent as files of their own (no copy into the bundle).
LARGE_NAR = 4 * 1024 * 1024
READ_CHUNK = 1 << 18


def file_name(nar_hash: str, compression: str) -> str:
    """The name a pushed NAR has in the bundle or the directory: one per NarHash and
    compression, so a NAR several caches or closures share is sent once."""
    return '%s.nar-%s' % (nar_hash.partition(':')[2] or nar_hash, compression)


def is_plain_name(name: str) -> bool:
    return bool(name) and '/' not in name and '\0' not in name and name not in ('.', '..')


class PushedFiles(object):
    """The pushed directory: members of ``bundle.tar`` (read in place, never extracted)
    and files beside it, opened by name."""

    def __init__(self, directory: Optional[str]) -> None:
        self.directory = directory
        self._members = {}    # name -> (offset, size) in the bundle
        bundle = os.path.join(directory, BUNDLE) if directory else None
        if bundle and os.path.exists(bundle):
            try:
                with tarfile.open(bundle, 'r:') as archive:
                    for member in archive:
                        if member.isfile() and is_plain_name(member.name):
                            self._members[member.name] = (member.offset_data, member.size)
            except tarfile.TarError as error:
                raise CacheUnavailable('the bundle the controller sent is not a tar archive: %s'
                                       % error, path=bundle) from error
        self._bundle = bundle

    def open(self, name: str) -> Any:
        if not is_plain_name(name) or not self.directory:
            raise CacheUnavailable('the controller sent no file %r' % name)
        if name in self._members:
            offset, size = self._members[name]
            return _Slice(self._bundle, offset, size)
        try:
            return open(os.path.join(self.directory, name), 'rb')
        except (IOError, OSError) as error:
            raise CacheUnavailable('the controller did not send %s: %s' % (name, error)) from error


class _Slice(object):
    """A read-only stream over ``size`` bytes of a file from ``offset``."""

    def __init__(self, path, offset, size):
        self._handle = open(path, 'rb')
        self._handle.seek(offset)
        self._left = size

    def read(self, size=-1):
        if size is None or size < 0:
            size = READ_CHUNK
        data = self._handle.read(min(size, self._left)) if self._left > 0 else b''
        self._left -= len(data)
        return data

    def close(self):
        self._handle.close()


class PushedSubstituter(Substituter):
    """The paths the controller read from one cache (``url``): their narinfos from the
    module's arguments, their NARs from the pushed files."""

    def __init__(self, url: str, files: PushedFiles, store_dir: str = STORE_DIR) -> None:
        super(PushedSubstituter, self).__init__(url, CacheOptions(retries=0), store_dir)
        self._files = files
        self._narinfos = {}   # hash part -> narinfo text
        self._names = {}      # narinfo URL -> pushed file name

    def add(self, hash_part: str, text: str, name: Optional[str]) -> None:
        self._narinfos[hash_part] = text
        if name:
            url = NarInfo.parse(text, store_dir=self.store_dir, source=self.url).url
            self._names[url] = name

    def _read(self, relative_url, limit):
        if relative_url == 'nix-cache-info':
            return ('StoreDir: %s\n' % self.store_dir).encode('utf-8')
        hash_part, dot, extension = relative_url.partition('.')
        if dot and extension == 'narinfo' and hash_part in self._narinfos:
            return self._narinfos[hash_part].encode('utf-8')
        return None

    def _open(self, relative_url):
        name = self._names.get(relative_url)
        if name is None:
            raise CacheUnavailable('the controller sent no NAR for %s' % relative_url, cache=self.url)
        return self._files.open(name)


def pushed_caches(entries: Sequence[Dict[str, Any]], directory: Optional[str] = None,
                  store_dir: str = STORE_DIR) -> List[PushedSubstituter]:
    """One PushedSubstituter for each cache the entries name, in the order first named.

    ``entries``: dicts with ``narinfo`` (its text), ``cache`` (the URL it was read from) and
    ``file`` (the pushed file holding its NAR, or none when the host was not sent it)."""
    files = PushedFiles(directory)
    caches = {}
    for number, entry in enumerate(entries, 1):
        text, url = entry.get('narinfo'), entry.get('cache')
        if not isinstance(text, str) or not isinstance(url, str) or not url:
            raise InvalidNarInfo('pushed entry %d lacks its narinfo text or its cache' % number)
        narinfo = NarInfo.parse(text, store_dir=store_dir, source=url)
        if url not in caches:
            caches[url] = PushedSubstituter(url, files, store_dir)
        caches[url].add(narinfo.store_path.hash_part, text, entry.get('file'))
    return list(caches.values())


def trusted_keys_from_options(options: Dict[str, Any], root: str = '/') -> TrustedKeys:
    """The keys the host trusts: the option, else ``trusted-public-keys`` of the host's
    nix.conf (unless ``use_nix_conf`` is off), as for pulled paths."""
    keys = list(options.get('trusted_public_keys') or [])
    if not keys and options.get('use_nix_conf', True):
        keys = setting_list(read_nix_conf(NIX_CONF, root=root), 'trusted-public-keys')
    return TrustedKeys(keys)


def pushed_from_options(options: Dict[str, Any], root: str = '/', store_dir: str = STORE_DIR) -> Tuple[List[Any], TrustedKeys, bool]:
    """(caches, trusted keys, plan only) from the ``pushed`` option the action plugin sets:
    ``entries`` (see pushed_caches), ``directory`` (the pushed files on this host, or
    none) and ``plan`` (only say what is missing, as in check mode)."""
    pushed = options['pushed']
    entries = pushed.get('entries') or []
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InvalidNarInfo('pushed entries must be a list of dicts')
    caches = pushed_caches(entries, pushed.get('directory'), store_dir)
    return caches, trusted_keys_from_options(options, root), bool(pushed.get('plan'))
