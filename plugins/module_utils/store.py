# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local Nix store under a root, kept the way real Nix 2.x reads it.

Layout: ``ROOT/nix/store`` holds the paths, ``ROOT/nix/var/nix/db/db.sqlite`` (schema
version 10, WAL) says which are valid.  Like Nix we hold a shared lock on
``db/big-lock`` while we work and an exclusive ``flock`` on ``<path>.lock`` while a path
is being added, so we and a real Nix exclude each other.  A path becomes valid only
through ``register``, after its contents are complete on disk and its references are
valid: the store invariant Nix relies on.  While a ``LocalStore`` is open it also holds
``gc.lock`` shared, as ``nix-store --verify`` does: no garbage collector (ours or Nix's,
which take it exclusively) deletes anything under our feet.
"""

import fcntl
import io
import os
import sqlite3
import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import HashMismatch, StoreError, file_errors
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import (
    HashingReader,
    format_base16,
    format_base32,
    parse_hash,
)
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import (
    STORE_DIR,
    StorePath,
    references_first,
)

SCHEMA_VERSION = '10'
RESERVED_BYTES = 8 * 1024 * 1024
TEMP_PREFIX = '.nixcache-tmp-'
SQL_CHUNK = 500  # bound parameters per query, far below SQLite's limit

# The database as Nix 2.8 creates it (src/libstore/schema.sql).
SCHEMA_SQL = '''
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
'''


class LocalStore(object):
    """A Nix store at ``ROOT/nix/store`` with its database.

    ``create=False`` opens without creating anything (check mode): a store that does not
    exist yet is simply empty.  ``hold_gc_lock=False`` is for the garbage collector, which
    holds ``gc.lock`` exclusively itself.
    """

    def __init__(self, root: str = '/', store_dir: str = STORE_DIR, create: bool = True, hold_gc_lock: bool = True) -> None:
        if not os.path.isabs(root):
            raise StoreError('the store root must be an absolute path', found=root)
        self.root = root
        self.store_dir = store_dir
        self.create = create
        self.real_store_dir = under_root(root, store_dir)
        self.state_dir = under_root(root, '/nix/var/nix')
        self.db_dir = os.path.join(self.state_dir, 'db')
        self.db_path = os.path.join(self.db_dir, 'db.sqlite')
        self._schema_file = os.path.join(self.db_dir, 'schema')
        self._db = None
        self._db_lock = threading.Lock()
        self._big_lock = None
        self._gc_lock = None
        self.hold_gc_lock = hold_gc_lock

    # opening and closing

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def open(self) -> None:
        if self.create:
            with file_errors('cannot prepare the store', self.root):
                self._create_layout()
        elif not os.path.exists(self.db_path):
            return  # an empty store: nothing is valid, nothing to lock
        if self.hold_gc_lock:
            self._gc_lock = open_gc_lock(self.state_dir, fcntl.LOCK_SH)
        with file_errors('cannot take the Nix database lock', self.db_dir):
            self._big_lock = os.open(os.path.join(self.db_dir, 'big-lock'),
                                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._big_lock, fcntl.LOCK_SH)
        try:
            if self.create and not os.path.exists(self._schema_file):
                self._create_database()
            self._check_schema()
            self._db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute('pragma foreign_keys = on')
            # as Nix sets it: with WAL, a commit no longer waits for an fsync
            self._db.execute('pragma synchronous = normal')
        except sqlite3.Error as error:
            self.close()
            raise StoreError('cannot open the Nix database: %s' % error, path=self.db_path) from error
        except BaseException:
            self.close()
            raise

    def _create_database(self):
        """A new store's database, under the exclusive big lock as Nix creates it: the
        schema file is written last, so no one sees a schema without its tables."""
        with file_errors('cannot create the Nix database', self.db_dir):
            fcntl.flock(self._big_lock, fcntl.LOCK_EX)
            try:
                if not os.path.exists(self._schema_file):
                    db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
                    try:
                        db.execute('pragma journal_mode = wal')
                        db.executescript(SCHEMA_SQL)
                    finally:
                        db.close()
                    _write_file(self._schema_file, SCHEMA_VERSION.encode('ascii'), 0o644)
            finally:
                fcntl.flock(self._big_lock, fcntl.LOCK_SH)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._big_lock is not None:
            os.close(self._big_lock)
            self._big_lock = None
        if self._gc_lock is not None:
            os.close(self._gc_lock)
            self._gc_lock = None

    def _create_layout(self):
        for directory in ('db', 'gcroots', 'profiles', 'temproots'):
            os.makedirs(os.path.join(self.state_dir, directory), exist_ok=True)
        if not os.path.isdir(self.real_store_dir):
            os.makedirs(self.real_store_dir, exist_ok=True)  # another run may be at it too
            os.chmod(self.real_store_dir, 0o1775)  # as Nix creates it
        _reserve_space(os.path.join(self.db_dir, 'reserved'))

    def _check_schema(self):
        schema_file = self._schema_file
        try:
            with open(schema_file) as handle:
                found = handle.read().strip()
        except (IOError, OSError):
            found = 'missing'
        if found != SCHEMA_VERSION:
            raise StoreError('the Nix database has a schema version this collection does not write',
                             path=schema_file, expected=SCHEMA_VERSION, found=found)

    # paths on disk

    def real_path(self, store_path: StorePath) -> str:
        return os.path.join(self.real_store_dir, store_path.base)

    def exists(self, store_path: StorePath) -> bool:
        return os.path.lexists(self.real_path(store_path))

    def free_bytes(self) -> int:
        """Bytes available to us on the file system that holds (or will hold) the store."""
        directory = self.real_store_dir
        while not os.path.exists(directory):
            directory = os.path.dirname(directory)
        with file_errors('cannot read the free space', directory):
            stats = os.statvfs(directory)
        return stats.f_bavail * stats.f_frsize

    def temp_dir_for(self, store_path: StorePath) -> str:
        """A fresh name beside the final one; never a valid store path name.  It carries
        our process id, so that other runs leave it alone while we are alive."""
        return os.path.join(self.real_store_dir, '%s%d-%s-%s' % (
            TEMP_PREFIX, os.getpid(), uuid.uuid4().hex[:12], store_path.base))

    def commit(self, temp_dir: str, store_path: StorePath) -> None:
        """Move a complete, verified tree into place."""
        final = self.real_path(store_path)
        if os.path.lexists(final):
            raise StoreError('the store path already exists on disk', path=str(store_path))
        with file_errors('cannot move the unpacked path into place', final):
            os.rename(temp_dir, final)

    def discard(self, path: str) -> None:
        """Delete a tree inside the store, even a read-only one; refuse anything else."""
        inside = os.path.realpath(os.path.dirname(path)) == os.path.realpath(self.real_store_dir)
        if not inside or os.path.basename(path) in ('', '.', '..'):
            raise StoreError('refusing to delete outside the store', path=path,
                             expected='an entry of %s' % self.real_store_dir)
        from ansible_collections.nixcache.closure.plugins.module_utils.nar import remove_tree  # only when deleting
        with file_errors('cannot delete', path):
            remove_tree(path)

    def remove_invalid(self, store_path: StorePath, stale_copies: bool = True) -> None:
        """Delete what lies at an unregistered path, and (with ``stale_copies``) temporary
        copies of it left by runs that are gone (a crash).  Call with the path's lock held."""
        if os.path.lexists(self.real_path(store_path)) and not self.is_valid(store_path):
            self.discard(self.real_path(store_path))
        if stale_copies:
            self.remove_stale_copies([store_path])

    def remove_stale_copies(self, store_paths: Iterable[StorePath]) -> None:
        """Delete the temporary copies of ``store_paths`` left by runs that are gone, with
        one listing of the store for all of them.  No lock is needed: only the run named
        in a copy's name uses it, and that run is gone."""
        bases = set(store_path.base for store_path in store_paths)
        if not bases or not os.path.isdir(self.real_store_dir):
            return
        with file_errors('cannot list the store', self.real_store_dir):
            names = os.listdir(self.real_store_dir)
        for name in names:
            if name.startswith(TEMP_PREFIX) and _copy_of(name) in bases and not _owner_alive(name):
                self.discard(os.path.join(self.real_store_dir, name))

    def lock_path(self, store_path: StorePath) -> '_PathLock':
        """Nix's per-path lock: an exclusive flock on ``<path>.lock``."""
        return _PathLock(self.real_path(store_path) + '.lock')

    # the database

    def _query(self, sql, parameters=()):
        if self._db is None:
            return []
        with self._db_lock:
            try:
                return self._db.execute(sql, parameters).fetchall()
            except sqlite3.Error as error:
                raise StoreError('reading the Nix database failed: %s' % error, path=self.db_path) from error

    def is_valid(self, store_path: StorePath) -> bool:
        return store_path in self.valid_subset([store_path])

    def valid_subset(self, store_paths: Iterable[StorePath]) -> Set[StorePath]:
        """The given paths that are registered valid (one query per 500 paths)."""
        by_text = dict((store_path.path(self.store_dir), store_path) for store_path in store_paths)
        texts = list(by_text)
        valid = set()
        for start in range(0, len(texts), SQL_CHUNK):
            chunk = texts[start:start + SQL_CHUNK]
            rows = self._query('select path from ValidPaths where path in (%s)'
                               % ','.join('?' * len(chunk)), chunk)
            valid.update(by_text[row[0]] for row in rows)
        return valid

    def path_info(self, store_path: StorePath) -> Optional[Dict[str, Any]]:
        """What the database says of a valid path, or None."""
        return self.path_infos([store_path]).get(store_path)

    def path_infos(self, store_paths: Iterable[StorePath]) -> Dict[StorePath, Dict[str, Any]]:
        """``path_info`` of many paths at once, the valid ones only (two queries per 500
        paths, however many there are)."""
        by_text = dict((store_path.path(self.store_dir), store_path) for store_path in store_paths)
        texts = list(by_text)
        infos = {}
        for start in range(0, len(texts), SQL_CHUNK):
            chunk = texts[start:start + SQL_CHUNK]
            marks = ','.join('?' * len(chunk))
            references = {}
            for referrer, reference in self._query(
                    'select referrer, path from Refs join ValidPaths on reference = id '
                    'where referrer in (select id from ValidPaths where path in (%s))' % marks,
                    chunk):
                references.setdefault(referrer, []).append(reference)
            for path_id, text, nar_hash, registered, deriver, nar_size, sigs, ca in self._query(
                    'select id, path, hash, registrationTime, deriver, narSize, sigs, ca '
                    'from ValidPaths where path in (%s)' % marks, chunk):
                infos[by_text[text]] = dict(
                    nar_hash=format_base32(parse_hash(nar_hash)),
                    nar_size=nar_size,
                    references=sorted(StorePath.parse(reference, self.store_dir)
                                      for reference in references.get(path_id, ())),
                    deriver=deriver,
                    sigs=(sigs or '').split(),
                    ca=ca,
                    registration_time=registered,
                )
        return infos

    def closure(self, store_paths: Iterable[StorePath]) -> Set[StorePath]:
        """The valid closure of valid ``store_paths`` through the Refs table."""
        return set(self.closure_sizes(store_paths))

    def closure_sizes(self, store_paths: Iterable[StorePath]) -> Dict[StorePath, Optional[int]]:
        """Each path of the valid closure of valid ``store_paths`` with its NarSize, in one
        query (what a report of valid paths needs, without their whole ``path_info``)."""
        texts = [store_path.path(self.store_dir) for store_path in store_paths]
        if not texts:
            return {}
        rows = self._query(
            'with recursive closure(id) as ('
            ' select id from ValidPaths where path in (%s)'
            ' union select reference from Refs join closure on referrer = closure.id)'
            ' select path, narSize from ValidPaths join closure using (id)' % ','.join('?' * len(texts)),
            texts)
        return dict((StorePath.parse(path, self.store_dir), nar_size) for path, nar_size in rows)

    def graph(self) -> Dict[StorePath, Tuple[int, int, Optional[str], List[StorePath]]]:
        """Every valid path with its NarSize, registration time, deriver and references:
        ``{StorePath: (nar_size, registration_time, deriver text or None, [StorePath])}``."""
        rows = self._query('select id, path, narSize, registrationTime, deriver from ValidPaths')
        by_id = dict((row[0], StorePath.parse(row[1], self.store_dir)) for row in rows)
        references = dict((path, []) for path in by_id.values())
        for referrer, reference in self._query('select referrer, reference from Refs'):
            references[by_id[referrer]].append(by_id[reference])
        return dict((by_id[row[0]], (row[2], row[3], row[4], references[by_id[row[0]]]))
                    for row in rows)

    def invalidate(self, store_paths: Iterable[StorePath]) -> None:
        """Remove paths from the database in one transaction; ``store_paths`` must come
        referrers first, and every valid referrer of each must be among them."""
        if self._db is None or not store_paths:
            return
        with self._db_lock:
            try:
                self._db.execute('begin immediate')
                self._db.executemany('delete from ValidPaths where path = ?',
                                     [(path.path(self.store_dir),) for path in store_paths])
                self._db.execute('commit')
            except sqlite3.Error as error:
                self._db.execute('rollback')
                raise StoreError('removing paths from the Nix database failed: %s' % error,
                                 path=self.db_path) from error

    def add_nar(self, info: Any, data: bytes) -> bool:
        """Add a path made here (not fetched) from its NAR ``data`` and register it, under
        its lock; False when it was valid already.  ``info`` as for ``register``."""
        if self._db is None:
            raise StoreError('the store was opened without creating its database', path=self.db_path)
        from ansible_collections.nixcache.closure.plugins.module_utils.nar import unpack
        store_path = info.store_path
        with self.lock_path(store_path):
            if self.is_valid(store_path):
                return False
            self.remove_invalid(store_path)
            temp_dir = self.temp_dir_for(store_path)
            try:
                hashed = HashingReader(io.BytesIO(data))
                unpack(hashed, temp_dir)
                if hashed.digest() != parse_hash(info.nar_hash) or hashed.size != info.nar_size:
                    raise HashMismatch('the NAR differs from what is to be registered',
                                       path=str(store_path), expected=info.nar_hash,
                                       found=format_base32(hashed.digest()))
                self.commit(temp_dir, store_path)
            except BaseException:
                self.discard(temp_dir)
                raise
            self.register([info])
        return True

    def register(self, infos: Iterable[Any]) -> None:
        """Make complete paths valid: one transaction, references first.

        ``infos`` have ``store_path``, ``nar_hash``, ``nar_size``, ``references``,
        ``deriver`` (a base name or None), ``sigs`` and ``ca``.  Paths already valid are
        left as they are.  A reference that is neither valid nor in the batch is refused.
        """
        if self._db is None:
            raise StoreError('the store was opened without creating its database', path=self.db_path)
        pending = dict((info.store_path, info) for info in infos)
        already = self.valid_subset(list(pending))
        order = references_first(list(pending), lambda path: pending[path].references)
        batch = [pending[path] for path in order if path not in already]
        if not batch:
            return
        in_batch = set(info.store_path for info in batch)
        outside = set(ref for info in batch for ref in info.references if ref not in in_batch)
        missing = outside - self.valid_subset(list(outside))
        for info in batch:
            for ref in info.references:
                if ref in missing:
                    raise StoreError('refusing to register a path whose reference is not valid',
                                     path=str(info.store_path), expected='%s valid' % ref,
                                     found='not valid and not being added')
        now = int(time.time())
        with self._db_lock:
            try:
                self._db.execute('begin immediate')
                self._db.executemany(
                    'insert into ValidPaths (path, hash, registrationTime, deriver, narSize, '
                    'ultimate, sigs, ca) values (?, ?, ?, ?, ?, null, ?, ?)',
                    [(info.store_path.path(self.store_dir),
                      format_base16(parse_hash(info.nar_hash)), now,
                      _deriver_path(info.deriver, self.store_dir), info.nar_size,
                      ' '.join(info.sigs) or None, info.ca or None) for info in batch])
                self._db.executemany(
                    'insert or ignore into Refs (referrer, reference) '
                    'select a.id, b.id from ValidPaths a, ValidPaths b where a.path = ? and b.path = ?',
                    [(info.store_path.path(self.store_dir), ref.path(self.store_dir))
                     for info in batch for ref in info.references])
                self._db.execute('commit')
            except sqlite3.Error as error:
                self._db.execute('rollback')
                raise StoreError('registering paths in the Nix database failed: %s' % error,
                                 path=self.db_path) from error


class _PathLock(object):
    """Exclusive flock on a lock file, with Nix's stale-lock protocol.

    Nix writes a token into a lock file it is about to delete; a waiter that finds the
    token after acquiring the lock retries with a fresh file.
    """

    def __init__(self, lock_file):
        self.lock_file = lock_file
        self._fd = None

    def __enter__(self):
        with file_errors('cannot lock', self.lock_file):
            while True:
                fd = os.open(self.lock_file, _LOCK_FLAGS, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    fresh = os.fstat(fd).st_size == 0
                except BaseException:
                    os.close(fd)
                    raise
                if fresh:
                    self._fd = fd
                    return self
                os.close(fd)  # stale: its owner deleted it; take a new one

    def __exit__(self, *exc_info):
        try:
            with file_errors('cannot release the lock', self.lock_file):
                try:
                    os.unlink(self.lock_file)
                except FileNotFoundError:
                    pass
                os.write(self._fd, b'd')
        finally:
            os.close(self._fd)
            self._fd = None


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def _copy_of(temp_name):
    """The store path base name a temporary directory is a copy of: its name is
    TEMP_PREFIX, the owner's pid (not in older names), 12 hex digits, the base name."""
    parts = temp_name[len(TEMP_PREFIX):].split('-', 2)
    if len(parts) == 3 and parts[0].isdigit() and len(parts[1]) == 12:
        return parts[2]
    return temp_name[len(TEMP_PREFIX):].split('-', 1)[-1]


def _owner_alive(temp_name):
    """Whether the process named in a temporary directory's name still runs."""
    pid = temp_name[len(TEMP_PREFIX):].split('-', 1)[0]
    if not pid.isdigit():
        return False          # an older name without one
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:           # it exists, as another user
        return True
    return True


def open_gc_lock(state_dir: str, operation: int) -> int:
    """``STATE/gc.lock`` flocked as Nix 2.8 does: shared by anything that adds or reads paths,
    exclusive by a garbage collector.  Waits for the lock; returns the descriptor."""
    path = os.path.join(state_dir, 'gc.lock')
    with file_errors('cannot take the garbage collector lock', path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, operation)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _deriver_path(deriver, store_dir):
    if not deriver:
        return None
    return deriver if deriver.startswith('/') else '%s/%s' % (store_dir, deriver)


def _reserve_space(path):
    """Nix's ``db/reserved``: space the garbage collector can free on a full disk.  Like
    Nix, allocate it when there is room and carry on when there is not."""
    try:
        if os.path.getsize(path) == RESERVED_BYTES:
            return
    except OSError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, RESERVED_BYTES)
    except OSError:
        pass  # no room (or no fallocate): the store works without it
    finally:
        os.close(fd)


def _write_file(path, data, mode):
    temp = '%s.tmp-%d' % (path, os.getpid())
    with open(temp, 'wb') as handle:
        handle.write(data)
    os.chmod(temp, mode)
    os.rename(temp, path)
