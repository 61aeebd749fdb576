# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Garbage collection without Nix, the way Nix 2.8 collects.

Roots are what Nix 2.8 counts: links (and files named like store paths) under
``gcroots`` and ``profiles``, with one level of indirection for links that point outside
the store (``gcroots/auto``); the store paths running processes use
(``/proc/*/{exe,cwd,fd/*,maps,environ}`` and three kernel settings); and the temporary
roots of running Nix processes (``temproots/PID``).  What a root reaches through
references, and the valid derivers of what it reaches (Nix's default
``keep-derivations``), is alive; every other entry of the store is dead.

Locking is Nix 2.8's: the collector holds ``gc.lock`` exclusively, so nothing that holds it
shared (our realiser and profiles, ``nix-store --verify``) works meanwhile, and it serves
``gc-socket/socket``, where a Nix process that wants a path kept while the collector runs
sends it (and waits if that path is being deleted).  Dead paths leave the database in one
transaction, referrers first, and then the disk.  Last, as Nix does, the entries of
``.links`` (see ``optimise.py``) that nothing else links to any more are removed.

Bytes freed are counted by inode: a file hard-linked elsewhere frees its space only with
the last of its links (the ``.links`` entry, which goes with it, aside).
"""

import errno
import fcntl
import os
import re
import socket
import stat
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidStorePath,
    StoreError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.optimise import LINKS_DIR
from ansible_collections.nixcache.closure.plugins.module_utils.profiles import PROFILES_DIR, Profile
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore, open_gc_lock
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath

GCROOTS_DIR = '/nix/var/nix/gcroots'
SOCKET_PATH = 'gc-socket/socket'
KERNEL_SETTINGS = ('/proc/sys/kernel/modprobe', '/proc/sys/kernel/fbsplash',
                   '/proc/sys/kernel/poweroff_cmd')
_MAPS_LINE = re.compile(r'^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$')
_DAYS = re.compile(r'\A([0-9]+)d\Z')
_GENERATION = re.compile(r'-[0-9]+-link\Z')
_SIZE = re.compile(r'\A([0-9]+)\s*([KMGT]?)(i?B)?\Z', re.IGNORECASE)
_UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


def parse_days(text: Optional[str]) -> int:
    """Seconds in ``Nd``, the only form ``nix-collect-garbage --delete-older-than`` takes."""
    match = _DAYS.match(text or '')
    if not match or int(match.group(1)) < 1:
        raise StoreError('a period of days is written like 14d', found=text)
    return int(match.group(1)) * 24 * 3600


def parse_size(text: Union[str, int]) -> int:
    """Bytes in ``123``, ``500M``, ``2GiB`` (powers of 1024)."""
    match = _SIZE.match(str(text).strip())
    if not match:
        raise StoreError('a size is a number of bytes with an optional K, M, G or T', found=text)
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def collect_garbage(root: str = '/', delete_old: bool = False, delete_older_than: Optional[str] = None, max_freed: Union[str, int, None] = None,
                    runtime_roots: bool = True, dry_run: bool = False) -> Dict[str, Any]:
    """Delete old generations (if asked), then every dead store entry; with ``dry_run``
    only say what would go.  Returns the module's result."""
    older_than = None if not delete_older_than else parse_days(delete_older_than)
    limit = None if max_freed is None else parse_size(max_freed)
    generations = []
    if delete_old or older_than is not None:
        generations = delete_generations(root, older_than, dry_run=dry_run)
    result = dict(changed=bool(generations), deleted=[], deleted_generations=generations,
                  bytes_freed=0, mb_freed=0.0, alive=0, roots=0, links_deleted=0)
    store = LocalStore(root=root, create=False, hold_gc_lock=False)
    if not os.path.exists(store.db_path):
        return result
    with Collector(store) as collector:
        with store:
            roots = find_roots(store, runtime=runtime_roots, remove_stale=not dry_run)
            for link in generations if dry_run else ():
                _forget_reason(roots, link)
            plan = collector.plan(roots)
            if dry_run:
                deleted, freed, links = plan.select(limit)
            else:
                deleted, freed, links = collector.delete(plan, limit)
    result.update(changed=bool(generations or deleted or links), links_deleted=links,
                  deleted=[store.store_dir.rstrip('/') + '/' + name for name in deleted],
                  bytes_freed=freed, mb_freed=round(freed / 1048576.0, 2),
                  alive=len(plan.alive), roots=len(roots.paths))
    return result


def _forget_reason(roots, reason):
    """A generation about to be deleted (in a dry run) roots nothing any more."""
    for path in list(roots.paths):
        roots.paths[path].discard(reason)
        if not roots.paths[path]:
            del roots.paths[path]


# --- generations ------------------------------------------------------------------------

def delete_generations(root: str, older_than: Optional[float] = None, dry_run: bool = False, now: Optional[float] = None) -> List[str]:
    """Delete old generations of every profile under ``/nix/var/nix/profiles`` as
    ``nix-collect-garbage -d`` (``older_than`` None) or ``--delete-older-than`` does.

    With ``older_than`` (seconds), the newest generation older than that is kept too: it
    was the one in use at that time.  The current generation is always kept.  Returns the
    generation links deleted (or that would be), as paths of the system under ``root``.
    """
    cutoff = None if older_than is None else (now or time.time()) - older_than
    deleted = []
    for profile in profiles(root, PROFILES_DIR):
        try:
            current = profile.current()
        except StoreError:
            continue    # a link that is not a profile of generations: not ours to prune
        numbers = sorted(profile.generations(), reverse=True)
        doomed = []
        if cutoff is None:
            doomed = [number for number in numbers if number != current]
        else:
            reached = False
            for number in numbers:
                link = os.path.join(profile.real_directory, profile.generation_link(number))
                if reached:
                    if number != current:
                        doomed.append(number)
                elif os.lstat(link).st_mtime < cutoff:
                    reached = True
        for number in sorted(doomed):
            link = os.path.join(profile.directory, profile.generation_link(number))
            deleted.append(link)
            if not dry_run:
                _unlink(under_root(root, link))
    return deleted


def profiles(root: str, directory: str = PROFILES_DIR) -> List[Profile]:
    """The profiles below ``directory``: links whose target names a generation (a link
    ``NAME-N-link`` is a generation itself, not a profile)."""
    real = under_root(root, directory)
    found = []
    try:
        names = sorted(os.listdir(real))
    except OSError:
        return found
    for name in names:
        path = os.path.join(directory, name)
        try:
            mode = os.lstat(os.path.join(real, name)).st_mode
            if stat.S_ISLNK(mode):
                if not _GENERATION.search(name) and 'link' in os.readlink(os.path.join(real, name)):
                    found.append(Profile(path, root=root))
            elif stat.S_ISDIR(mode):
                found.extend(profiles(root, path))
        except (OSError, StoreError):
            continue
    return found


# --- roots ------------------------------------------------------------------------------

class Roots(object):
    """Where each root came from: ``paths`` maps a StorePath to its reasons (links,
    ``{proc}``, ``{temp:PID}``); ``temp_hashes`` are the hash parts running Nix processes
    hold as temporary roots (valid or not yet); ``stale_links`` the dead ``gcroots/auto``
    links."""

    def __init__(self) -> None:
        self.paths = {}
        self.temp_hashes = set()
        self.stale_links = []


def find_roots(store: LocalStore, runtime: bool = True, remove_stale: bool = False) -> 'Roots':
    """Every root of ``store`` Nix 2.8 would see; only valid paths count as roots."""
    found = Roots()
    candidates = {}
    for directory in (GCROOTS_DIR, PROFILES_DIR):
        _scan_roots(store, directory, candidates, found.stale_links)
    if runtime:
        for target, reason in _runtime_targets():
            _add_candidate(store, target, reason, candidates)
    for store_path, reasons in _temp_roots(store).items():
        found.temp_hashes.add(store_path.hash_part)
        candidates.setdefault(store_path, set()).update(reasons)
    for store_path in store.valid_subset(list(candidates)):
        found.paths[store_path] = candidates[store_path]
    if remove_stale:
        for link in found.stale_links:
            _unlink(under_root(store.root, link))
    return found


def _add_candidate(store, target, reason, candidates):
    prefix = store.store_dir.rstrip('/') + '/'
    if not target.startswith(prefix):
        return
    base = target[len(prefix):].split('/', 1)[0]
    try:
        store_path = StorePath.from_base(base)
    except InvalidStorePath:
        return
    candidates.setdefault(store_path, set()).add(reason)


def _scan_roots(store, path, candidates, stale_links):
    """Nix's ``findRoots``: recurse into directories, take links into the store and files
    named like store paths; follow a link that points elsewhere one step."""
    real = under_root(store.root, path)
    try:
        mode = os.lstat(real).st_mode
        if stat.S_ISDIR(mode):
            for name in sorted(os.listdir(real)):
                _scan_roots(store, os.path.join(path, name), candidates, stale_links)
        elif stat.S_ISLNK(mode):
            target = os.readlink(real)
            if _in_store(store, target):
                _add_candidate(store, target, path, candidates)
                return
            target = os.path.normpath(os.path.join(os.path.dirname(path), target))
            real_target = under_root(store.root, target)
            if not os.path.lexists(real_target):
                if path.startswith(GCROOTS_DIR + '/auto/'):
                    stale_links.append(path)
            elif os.path.islink(real_target):
                second = os.readlink(real_target)
                if _in_store(store, second):
                    _add_candidate(store, second, target, candidates)
        elif stat.S_ISREG(mode):
            _add_candidate(store, store.store_dir.rstrip('/') + '/' + os.path.basename(path),
                           path, candidates)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.ENOENT, errno.ENOTDIR):
            raise StoreError('cannot read a garbage collector root: %s' % error.strerror, path=path) from error


def _in_store(store, target):
    return target.startswith(store.store_dir.rstrip('/') + '/')


def _runtime_targets():
    """(target, reason) of what running processes use, read from /proc as Nix does."""
    try:
        pids = [name for name in os.listdir('/proc') if name.isdigit()]
    except OSError:
        return
    for pid in pids:
        base = '/proc/' + pid
        links = [base + '/exe', base + '/cwd']
        try:
            links.extend(base + '/fd/' + fd for fd in os.listdir(base + '/fd'))
        except OSError:
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target.startswith('/'):
                yield target, '{proc}'
        for line in _read_text(base + '/maps').splitlines():
            match = _MAPS_LINE.match(line)
            if match:
                yield match.group(1), '{proc}'
        for word in re.findall(r'/[^\0:= ]+', _read_text(base + '/environ')):
            yield word, '{proc}'
    for setting in KERNEL_SETTINGS:
        text = _read_text(setting).strip()
        if text:
            yield text, '{proc}'


def _read_text(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace')
    except OSError:
        return ''


def _temp_roots(store):
    """The temporary roots of running Nix processes; stale files (their owner is gone and
    no longer holds the lock) are removed, as Nix does."""
    directory = os.path.join(store.state_dir, 'temproots')
    roots = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return roots
    for name in names:
        if name.startswith('.'):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pass   # held by a live process: its roots count
            else:
                _unlink(path)
                os.write(fd, b'd')
                continue
            contents = b''
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                contents += chunk
        finally:
            os.close(fd)
        for text in contents.split(b'\0'):
            if text:
                base = os.path.basename(text.decode('utf-8', 'replace'))
                try:
                    roots.setdefault(StorePath.from_base(base), set()).add('{temp:%s}' % name)
                except InvalidStorePath:
                    continue
    return roots


# --- the collector ------------------------------------------------------------------------

class Collector(object):
    """Hold the collector's side of Nix's protocol while working on ``store`` (opened with
    ``hold_gc_lock=False``): ``gc.lock`` exclusively, and the roots socket."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self._lock_fd = None
        self._server = None
        self._condition = threading.Condition()
        self.late_roots = set()     # hash parts sent to the socket while we run
        self._pending = set()       # hash parts being deleted from disk

    def __enter__(self):
        os.makedirs(self.store.state_dir, exist_ok=True)
        self._lock_fd = open_gc_lock(self.store.state_dir, fcntl.LOCK_EX)
        try:
            self._server = _RootsServer(os.path.join(self.store.state_dir, SOCKET_PATH), self)
            self._server.start()
        except Exception:
            os.close(self._lock_fd)
            raise
        return self

    def __exit__(self, *exc_info):
        if self._server is not None:
            self._server.stop()
        os.close(self._lock_fd)

    def keep(self, hash_part: str) -> None:
        """A root sent through the socket: keep it, and wait while it is being deleted."""
        with self._condition:
            self.late_roots.add(hash_part)
            while hash_part in self._pending:
                self._condition.wait()

    def plan(self, roots: Roots) -> 'Plan':
        """What is dead, given ``roots`` (from ``find_roots``): a Plan."""
        graph = self.store.graph()
        alive = set()
        todo = list(roots.paths)
        while todo:
            path = todo.pop()
            if path in alive or path not in graph:
                continue
            alive.add(path)
            todo.extend(graph[path][3])
            deriver = graph[path][2]
            if deriver:
                try:
                    todo.append(StorePath.parse(deriver, self.store.store_dir))
                except InvalidStorePath:
                    pass
        dead = [path.base for path in _referrers_first([p for p in graph if p not in alive], graph)]
        for name in sorted(os.listdir(self.store.real_store_dir)):
            if name == LINKS_DIR:
                continue
            try:
                path = StorePath.from_base(name)
            except InvalidStorePath:
                dead.append(name)     # not a store path at all: Nix deletes it too
                continue
            if path not in graph and path.hash_part not in roots.temp_hashes:
                dead.append(name)
        links = _links(self.store)
        usage = dict((name, disk_usage(os.path.join(self.store.real_store_dir, name)))
                     for name in dead)
        return Plan(alive, dead, usage, graph, links)

    def delete(self, plan: 'Plan', max_freed: Optional[int] = None) -> Tuple[List[str], int, int]:
        """Delete what ``plan`` found dead, then the unused ``.links`` entries; returns
        ``(deleted entry names, bytes freed, links deleted)``.

        Paths sent to the socket since the plan are kept with their closure; a client that
        sends one being deleted waits until it is gone.  With ``max_freed``, stop once more
        than that is freed (as Nix, the entry that crosses the limit goes too)."""
        store = self.store
        with self._condition:
            late = set(self.late_roots)
            kept = set(p.base for p in store.closure([p for p in plan.graph if p.hash_part in late]))
            chosen, freed, _links_planned = plan.select(
                max_freed, skip=lambda name: name in kept or name[:32] in late)
            self._pending.update(name[:32] for name in chosen)
        try:
            names = set(chosen)
            store.invalidate([p for p in plan.dead_valid if p.base in names])
            for name in chosen:
                path = os.path.join(store.real_store_dir, name)
                try:
                    store.discard(path)
                except OSError as error:
                    raise StoreError('cannot delete a dead store path: %s' % error.strerror,
                                     path=path) from error
                with self._condition:
                    self._pending.discard(name[:32])
                    self._condition.notify_all()
        finally:
            with self._condition:
                self._pending.clear()
                self._condition.notify_all()
        return chosen, freed, delete_unused_links(store)


class Plan(object):
    """``alive`` valid paths; ``dead`` entry names in deletion order (valid paths referrers
    first, then the rest); ``usage`` the DiskUsage of each; ``graph`` from the store;
    ``links`` inode -> (size, link count) of the ``.links`` entries."""

    def __init__(self, alive: Set[StorePath], dead: List[str], usage: Dict[str, 'DiskUsage'],
                 graph: Dict[StorePath, Any], links: Optional[Dict[int, Tuple[int, int]]] = None) -> None:
        self.alive = alive
        self.dead = dead
        self.usage = usage
        self.graph = graph
        self.links = links or {}

    def select(self, max_freed: Optional[int] = None,
               skip: Optional[Callable[[str], bool]] = None) -> Tuple[List[str], int, int]:
        """(names, bytes, links) deleted in order until more than ``max_freed`` is freed.

        A file linked from several entries is freed with its last link; its ``.links``
        entry then goes too.  Entries of ``.links`` nothing used before are freed as well.
        """
        unused = [size for size, count in self.links.values() if count == 1]
        chosen, freed, links = [], sum(unused), len(unused)
        remaining = {}     # inode -> its links outside .links not deleted yet
        for name in self.dead:
            if skip is not None and skip(name):
                continue
            if max_freed is not None and freed > max_freed:
                break
            chosen.append(name)
            usage = self.usage[name]
            freed += usage.single
            for inode, (size, count, inside) in usage.shared.items():
                if inode not in remaining:
                    remaining[inode] = count - (1 if inode in self.links else 0)
                remaining[inode] -= inside
                if remaining[inode] == 0:
                    freed += size
                    links += 1 if inode in self.links else 0
        return chosen, freed, links

    @property
    def dead_valid(self) -> List[StorePath]:
        names = set(self.dead)
        return _referrers_first([p for p in self.graph if p.base in names], self.graph)

    @property
    def dead_bytes(self) -> int:
        return self.select()[1]


def _referrers_first(paths, graph):
    """``paths`` ordered so that each comes before its references among them."""
    members = set(paths)
    referrers = dict((path, []) for path in members)
    for path in members:
        for ref in graph[path][3]:
            if ref in members and ref != path:
                referrers[ref].append(path)
    ordered, seen = [], set()
    for start in sorted(members):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(sorted(referrers[start])))]
        while stack:
            path, pending = stack[-1]
            for ref in pending:
                if ref not in seen:
                    seen.add(ref)
                    stack.append((ref, iter(sorted(referrers[ref]))))
                    break
            else:
                stack.pop()
                ordered.append(path)
    return ordered


class DiskUsage(object):
    """The files under one store entry: ``single`` bytes in files linked once, and
    ``shared`` inode -> (size, link count, links under this entry) for the others."""

    def __init__(self) -> None:
        self.single = 0
        self.shared: Dict[int, List[int]] = {}


def disk_usage(path: str) -> DiskUsage:
    """What the files under ``path`` take, by inode (directories and symlinks aside)."""
    usage = DiskUsage()
    pending = [path]
    while pending:
        current = pending.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            try:
                pending.extend(os.path.join(current, name) for name in os.listdir(current))
            except OSError:
                continue
        elif info.st_nlink == 1:
            usage.single += info.st_size
        elif info.st_ino in usage.shared:
            usage.shared[info.st_ino][2] += 1
        else:
            usage.shared[info.st_ino] = [info.st_size, info.st_nlink, 1]
    return usage


def _links(store):
    """inode -> (size, link count) of each entry of the store's ``.links``."""
    directory = os.path.join(store.real_store_dir, LINKS_DIR)
    found = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                found[info.st_ino] = (info.st_size, info.st_nlink)
    except FileNotFoundError:
        pass
    except OSError as error:
        raise StoreError('cannot read the links directory: %s' % error.strerror, path=directory) from error
    return found


def delete_unused_links(store: LocalStore) -> int:
    """Remove the ``.links`` entries no store file links to any more (link count 1), as
    Nix's collector does after deleting; returns how many went.  Call with ``gc.lock``
    held exclusively: our optimiser, which holds it shared, cannot link one meanwhile."""
    directory = os.path.join(store.real_store_dir, LINKS_DIR)
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    except OSError as error:
        raise StoreError('cannot read the links directory: %s' % error.strerror, path=directory) from error
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_nlink != 1:
                continue
        except FileNotFoundError:
            continue
        _unlink(entry.path)
        removed += 1
    return removed


def _unlink(path):
    try:
        os.unlink(path)
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise StoreError('cannot remove a link: %s' % error.strerror, path=path) from error


class _RootsServer(object):
    """``gc-socket/socket``: each line a client sends is a store path to keep; we answer
    ``1`` once it is safe for the client to go on."""

    def __init__(self, path, collector):
        self.path = path
        self.collector = collector
        self._socket = None
        self._thread = None
        self._stopping = threading.Event()

    def start(self):
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        if os.path.lexists(self.path):
            os.unlink(self.path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A long path does not fit in sockaddr_un: bind through the directory's descriptor.
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._socket.bind('/proc/self/fd/%d/%s' % (dir_fd, os.path.basename(self.path))
                              if len(self.path) > 100 else self.path)
        finally:
            os.close(dir_fd)
        os.chmod(self.path, 0o666)
        self._socket.listen(16)
        self._socket.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, name='gc-roots-server')
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        self._stopping.set()
        self._thread.join()
        self._socket.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _serve(self):
        while not self._stopping.is_set():
            try:
                client, _address = self._socket.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._client, args=(client,), name='gc-roots-client')
            worker.daemon = True
            worker.start()

    def _client(self, client):
        client.settimeout(None)
        buffered = b''
        try:
            while True:
                chunk = client.recv(4096)
                if not chunk:
                    return
                buffered += chunk
                while b'\n' in buffered:
                    line, buffered = buffered.split(b'\n', 1)
                    base = os.path.basename(line.decode('utf-8', 'replace'))
                    if len(base) > 32 and base[32] == '-':
                        self.collector.keep(base[:32])
                    client.sendall(b'1')
        except OSError:
            return
        finally:
            client.close()
