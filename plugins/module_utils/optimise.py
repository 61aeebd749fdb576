# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hard-link identical files of a store, the way ``nix-store --optimise`` (Nix 2.8) does.

Every regular file and symlink of a valid path is hashed as Nix hashes it: the SHA-256 of
its NAR serialisation, so the contents and the executable bit count, nothing else.  The
first file with a given hash becomes ``ROOT/nix/store/.links/<nix32 of the hash>``; every
later one is replaced by a hard link to it: a fresh link ``.tmp-link-PID-N`` beside the
store, renamed over the file, so a reader sees the old file or the new link, never
nothing.  The directory holding the file is made writable for that moment and then
read-only again with mtime 1, as Nix leaves it.  A NAR does not record hard links, so
every path's NarHash stays what it was.

Skipped, as Nix skips them: files the owner may write (something changed the store), and
inodes already in ``.links``.  A file system's link limit (EMLINK, typically 65000 on
ext4) or a full ``.links`` directory (ENOSPC) keeps the file as a copy.

Locks: the store is opened as for realising (``gc.lock`` and the big lock shared), so no
garbage collector, ours or Nix's, runs meanwhile; each path is optimised under its
per-path lock, so two of our optimisers never work on the same path at once.  Against a
concurrent ``nix-store --optimise`` every step stays safe: a ``.links`` entry created
by the other side is used, a replaced file is replaced by the same inode.
"""

import errno
import os
import random
import stat
from typing import Any, Dict, Iterable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils import nixbase32
from ansible_collections.nixcache.closure.plugins.module_utils.errors import StoreError, file_errors
from ansible_collections.nixcache.closure.plugins.module_utils.nar import nar_hash
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath

LINKS_DIR = '.links'
TEMP_LINK_PREFIX = '.tmp-link-'
STORE_MTIME = 1
MIB = 1024.0 * 1024.0
WARNINGS_MAX = 20            # warnings kept in a result; the counts say how many in all


class Savings(object):
    """What an optimisation did, or in check mode would do."""

    def __init__(self) -> None:
        self.files_linked = 0          # files replaced by a link (Nix's "hard-linking N files")
        self.bytes_saved = 0           # their sizes, as Nix counts "freed"
        self.links_created = 0         # new entries in .links
        self.kept_at_link_limit = 0    # copies kept: EMLINK or a full .links directory
        self.skipped_writable = 0      # files the owner may write: left alone
        self.paths = 0                 # store paths walked
        self.warnings: List[str] = []

    @property
    def changed(self) -> bool:
        return bool(self.files_linked or self.links_created)

    def warn(self, message: str) -> None:
        if len(self.warnings) < WARNINGS_MAX:
            self.warnings.append(message)

    def add(self, other: 'Savings') -> None:
        for name in ('files_linked', 'bytes_saved', 'links_created', 'kept_at_link_limit',
                     'skipped_writable', 'paths'):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for message in other.warnings:
            self.warn(message)

    def as_dict(self) -> Dict[str, Any]:
        return dict(files_linked=self.files_linked, bytes_saved=self.bytes_saved,
                    mb_saved=round(self.bytes_saved / MIB, 2),
                    links_created=self.links_created,
                    kept_at_link_limit=self.kept_at_link_limit,
                    skipped_writable=self.skipped_writable, paths=self.paths)


class Optimiser(object):
    """Deduplicates valid paths of an open LocalStore into its ``.links`` directory.

    ``known_inodes`` (Nix's fast path) is the set of inodes already in ``.links``; files
    and directory entries with one of them are not hashed again.  ``load_links`` fills it
    for a whole-store run; per-path runs after a realisation start empty, as Nix's
    ``auto-optimise-store`` does.  With ``check_mode`` nothing is written: the figures are
    what a real run would report.
    """

    def __init__(self, store: LocalStore, check_mode: bool = False) -> None:
        self.store = store
        self.check_mode = check_mode
        self.links_dir = os.path.join(store.real_store_dir, LINKS_DIR)
        self._store_dir = os.path.normpath(store.real_store_dir)
        self.known_inodes = set()
        self._planned = {}    # check mode: link name -> (device, inode) a real run would link
        self.savings = Savings()

    def load_links(self) -> None:
        """Remember the inodes of every ``.links`` entry."""
        try:
            with os.scandir(self.links_dir) as entries:
                for entry in entries:
                    self.known_inodes.add(entry.inode())
        except FileNotFoundError:
            pass
        except OSError as error:
            raise StoreError('cannot read the links directory: %s' % error.strerror,
                             path=self.links_dir) from error

    def optimise_paths(self, store_paths: Iterable[StorePath]) -> Savings:
        """Deduplicate each of ``store_paths`` that is valid; returns the running total."""
        if not self.check_mode:
            with file_errors('cannot create the links directory', self.links_dir):
                os.makedirs(self.links_dir, mode=0o755, exist_ok=True)
        for store_path in store_paths:
            self.optimise_path(store_path)
        return self.savings

    def optimise_path(self, store_path: StorePath) -> None:
        if self.check_mode:    # no lock files either: check mode writes nothing
            self._optimise_valid(store_path)
            return
        with self.store.lock_path(store_path):
            self._optimise_valid(store_path)

    def _optimise_valid(self, store_path):
        if not self.store.is_valid(store_path):
            return            # deleted or never complete: nothing of ours to touch
        self.savings.paths += 1
        pending = [self.store.real_path(store_path)]
        while pending:
            path = pending.pop()
            try:
                info = os.lstat(path)
            except OSError as error:
                raise StoreError('cannot read a store file: %s' % error.strerror, path=path) from error
            if stat.S_ISDIR(info.st_mode):
                pending.extend(self._unlinked_entries(path))
            elif stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                self._optimise_file(path, info)

    def _unlinked_entries(self, directory):
        """Entries of ``directory`` whose inode is not already in ``.links``."""
        names = []
        with file_errors('cannot list a store directory', directory):
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.inode() not in self.known_inodes:
                        names.append(entry.path)
        names.sort(reverse=True)      # popped in name order
        return names

    def _optimise_file(self, path, info):
        if stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IWUSR:
            self.savings.skipped_writable += 1
            self.savings.warn('skipped a writable store file (something changed the store; '
                              '`nix-store --verify --check-contents` tells): %s' % path)
            return
        if info.st_nlink > 1 and info.st_ino in self.known_inodes:
            return
        with file_errors('cannot hash a store file', path):
            digest, _size = nar_hash(path)
        link = os.path.join(self.links_dir, nixbase32.encode(digest))
        if self.check_mode:
            self._plan_file(link, info)
            return
        link_info = _lstat_or_none(link)
        if link_info is not None and link_info.st_size != info.st_size:
            self.savings.warn('removed a corrupted link (its size is wrong): %s' % link)
            _remove(link)
            link_info = None
        if link_info is None:
            try:
                os.link(path, link, follow_symlinks=False)
            except FileExistsError:
                pass          # another optimiser created it first: link to theirs
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EMLINK):
                    self._keep_copy(link, error)
                    return
                raise StoreError('cannot link into the links directory: %s' % error.strerror,
                                 path=link) from error
            else:
                self.savings.links_created += 1
                self.known_inodes.add(info.st_ino)
                return
            link_info = _lstat_or_none(link)
            if link_info is None:
                return        # removed at once as corrupted by another optimiser: leave it
        if link_info.st_ino == info.st_ino:
            self.known_inodes.add(info.st_ino)
            return
        if self._replace_with_link(path, link):
            self.known_inodes.add(link_info.st_ino)
            self.savings.files_linked += 1
            self.savings.bytes_saved += info.st_size

    def _plan_file(self, link, info):
        """Check mode: count what a real run would do to this file."""
        link_info = _lstat_or_none(link)
        if link_info is not None and link_info.st_size == info.st_size:
            target = (link_info.st_dev, link_info.st_ino)
        else:
            target = self._planned.get(link)
        if target is None:
            self._planned[link] = (info.st_dev, info.st_ino)
            self.savings.links_created += 1
        elif target != (info.st_dev, info.st_ino):
            self.savings.files_linked += 1
            self.savings.bytes_saved += info.st_size

    def _replace_with_link(self, path, link):
        """Atomically put a hard link to ``link`` where ``path`` is; False when the file
        system's link limit keeps the copy."""
        parent = os.path.dirname(path)
        toggle = os.path.normpath(parent) != self._store_dir    # the store keeps its mode
        temp = os.path.join(self.store.real_store_dir, '%s%d-%d' % (
            TEMP_LINK_PREFIX, os.getpid(), random.randrange(1 << 31)))
        if toggle:
            _make_writable(parent)
        try:
            try:
                os.link(link, temp, follow_symlinks=False)
            except OSError as error:
                if error.errno == errno.EMLINK:
                    self._keep_copy(link, error)
                    return False
                raise StoreError('cannot link a store file: %s' % error.strerror, path=temp) from error
            try:
                os.rename(temp, path)
            except OSError as error:
                _remove(temp)
                if error.errno == errno.EMLINK:    # some file systems count the link here
                    self._keep_copy(link, error)
                    return False
                raise StoreError('cannot replace a store file by a link: %s' % error.strerror,
                                 path=path) from error
        finally:
            if toggle:
                canonicalise(parent)
        return True

    def _keep_copy(self, link, error):
        self.savings.kept_at_link_limit += 1
        self.savings.warn('kept a copy: %s (%s)' % (link, error.strerror))


def optimise_store(root: str = '/', store_paths: Optional[Iterable[StorePath]] = None,
                   check_mode: bool = False) -> Savings:
    """Deduplicate every valid path of the store under ``root`` (or only ``store_paths``
    and their closures).  A store that does not exist has nothing to save."""
    store = LocalStore(root=root, create=False)
    if not os.path.exists(store.db_path):
        return Savings()
    with store:
        if store_paths is None:
            chosen = sorted(store.graph())
        else:
            store_paths = list(store_paths)
            missing = sorted(set(store_paths) - store.valid_subset(store_paths))
            if missing:
                raise StoreError('cannot optimise a path that is not valid in the store',
                                 path=str(missing[0]), found='not valid')
            chosen = sorted(store.closure(store_paths))
        optimiser = Optimiser(store, check_mode=check_mode)
        optimiser.load_links()
        return optimiser.optimise_paths(chosen)


def canonicalise(path: str) -> None:
    """Nix's canonical mode and time for a store entry: read-only (0444, or 0555 when the
    owner may execute), mtime 1."""
    with file_errors('cannot make a store directory read-only again', path):
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return
        mode = stat.S_IMODE(info.st_mode)
        if mode not in (0o444, 0o555):
            os.chmod(path, 0o555 if mode & stat.S_IXUSR else 0o444)
        if info.st_mtime != STORE_MTIME:
            os.utime(path, (info.st_atime, STORE_MTIME))


def _make_writable(path):
    with file_errors('cannot make a store directory writable', path):
        os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IWUSR)


def _lstat_or_none(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StoreError('cannot read a link: %s' % error.strerror, path=path) from error


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise StoreError('cannot remove: %s' % error.strerror, path=path) from error
