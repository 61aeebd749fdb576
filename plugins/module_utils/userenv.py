# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""User environments as ``nix profile`` builds them: several packages in one store path.

The environment is a tree of symlinks into the packages plus a ``manifest.json`` that
lists them (format version 2, as Nix 2.8 writes it).  Packages are merged in order of
priority (lower wins, 5 by default) and then of store path; where two packages provide
the same file the one with the lower priority number wins, and equal priorities are a
conflict.  A directory provided by one package only is a single link; provided by
several it becomes a real directory of links.  Files under ``nix-support``, ``log`` and
a few others never enter the tree, and packages listed in a package's
``nix-support/propagated-user-env-packages`` follow at priority 1000 and up.

The tree goes into the store as a content-addressed path named ``profile``: its NAR is
hashed, the store path is computed from that hash and the packages (its references),
and the path is registered with ``ca`` ``fixed:r:sha256:...``, so that ``nix profile
list``, ``rollback`` and ``history`` and ``nix-store --verify`` accept it.
"""

import errno
import hashlib
import json
import os
import stat
from typing import Dict, Iterable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidStorePath, StoreError
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.nar import dump_tree
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import resolve, under_root
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import (
    STORE_DIR,
    StorePath,
    fixed_output_ca,
    make_fixed_output_path,
)

DEFAULT_PRIORITY = 5
PROPAGATED_PRIORITY = 1000
MANIFEST_VERSIONS = (1, 2)
MANIFEST_VERSION = 2
PROFILE_NAME = 'profile'
PROPAGATED_FILE = 'nix-support/propagated-user-env-packages'
# Never linked into an environment (Nix's buildenv leaves them out).
_LEFT_OUT = ('/propagated-build-inputs', '/nix-support', '/perllocal.pod', '/info/dir', '/log',
             '/manifest.nix', '/manifest.json')


class ProfileConflict(StoreError):
    """Two packages provide the same file with the same priority."""


class Element(object):
    """One package of an environment: a store path, its priority and whether it is linked."""

    def __init__(self, store_path, priority=DEFAULT_PRIORITY, active=True):
        self.store_path = store_path
        self.priority = priority
        self.active = active

    def to_json(self, store_dir=STORE_DIR):
        entry = dict(active=self.active, storePaths=[self.store_path.path(store_dir)])
        if self.priority != DEFAULT_PRIORITY:
            entry['priority'] = self.priority  # as newer Nix records it; Nix 2.8 ignores it
        return entry

    def report(self, store_dir=STORE_DIR):
        return dict(path=self.store_path.path(store_dir), priority=self.priority,
                    active=self.active)


class PathInfo(object):
    """What the store registers for the environment (the fields ``LocalStore.register`` reads)."""

    def __init__(self, store_path, nar_hash, nar_size, references, ca):
        self.store_path = store_path
        self.nar_hash = nar_hash
        self.nar_size = nar_size
        self.references = references
        self.ca = ca
        self.deriver = None
        self.sigs = []


class Environment(object):
    """A built environment: ``store_path``, ``nar`` (bytes), ``info``, ``warnings`` and
    ``tree`` (the symlink tree in memory: a directory is a dict, a link ``('symlink', target)``)."""

    def __init__(self, elements, nar, store_dir, warnings, tree=None):
        self.elements = elements
        self.nar = nar
        self.warnings = warnings
        self.tree = tree or {}
        digest = hashlib.sha256(nar).digest()
        references = sorted(set(element.store_path for element in elements))
        self.store_path = make_fixed_output_path(PROFILE_NAME, digest, references, store_dir)
        self.info = PathInfo(self.store_path, format_base32(digest), len(nar), references,
                             fixed_output_ca(digest))


def elements_from(paths: Iterable[str], priorities: Optional[Dict[str, int]] = None, store_dir: str = STORE_DIR) -> List['Element']:
    """Elements from store paths as text (duplicates dropped, order kept) and priorities as
    ``{store path: number}``; a priority for a path that is not listed is refused."""
    store_paths = []
    for text in paths:
        store_path = StorePath.parse(text, store_dir)
        if store_path not in store_paths:
            store_paths.append(store_path)
    listed = set(store_path.path(store_dir) for store_path in store_paths)
    numbers = {}
    for key, value in (priorities or {}).items():
        if key not in listed:
            raise StoreError('a priority is given for a store path that is not in paths',
                             path=key, expected='one of: %s' % ', '.join(sorted(listed)))
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            numbers[key] = int(value)
        except (TypeError, ValueError):
            raise StoreError('a priority is a whole number (lower wins)', path=key,
                             found=repr(value)) from None
    return [Element(store_path, numbers.get(store_path.path(store_dir), DEFAULT_PRIORITY))
            for store_path in store_paths]


def manifest_text(elements: Iterable['Element'], store_dir: str = STORE_DIR) -> str:
    """``manifest.json`` as Nix writes it: compact, keys sorted, elements in order."""
    document = dict(version=MANIFEST_VERSION,
                    elements=[element.to_json(store_dir) for element in elements])
    return json.dumps(document, sort_keys=True, separators=(',', ':'), ensure_ascii=False)


def build_environment(elements: Iterable['Element'], root: str = '/', store_dir: str = STORE_DIR) -> 'Environment':
    """The Environment of ``elements`` (Elements whose paths are complete under ``root``).

    Raises ProfileConflict naming both files when two packages provide the same file with
    the same priority, and StoreError for other collisions (a file against a directory).
    """
    builder = _TreeBuilder(root)
    packages = sorted((element.priority, element.store_path.path(store_dir))
                      for element in elements if element.active)
    done, postponed = set(), set()

    def add_package(path, priority):
        if path in done:
            return
        done.add(path)
        builder.link(path, builder.tree, (), priority)
        for listed in _propagated(root, path):
            if listed not in done:
                postponed.add(listed)

    for priority, path in packages:
        add_package(path, priority)
    counter = PROPAGATED_PRIORITY
    while postponed:
        batch, postponed = sorted(postponed), set()
        for path in batch:
            add_package(path, counter)
            counter += 1

    tree = _nar_node(builder.tree)
    tree[1]['manifest.json'] = ('regular', manifest_text(elements, store_dir).encode('utf-8'),
                                False)
    chunks = []
    dump_tree(tree, chunks.append)
    listing = dict(builder.tree)
    listing['manifest.json'] = tree[1]['manifest.json']
    return Environment(list(elements), b''.join(chunks), store_dir, builder.warnings, listing)


def entries_of(environment: 'Environment', relative: str, root: str = '/') -> Optional[List[str]]:
    """The names in ``relative`` (a path inside the environment, '' for its top) as the
    environment will show them once it is made, or None when it has no such directory."""
    node = environment.tree
    parts = [part for part in relative.split('/') if part]
    while parts:
        if not isinstance(node, dict):
            break
        node = node.get(parts.pop(0))
        if node is None:
            return None
    if isinstance(node, dict):
        return sorted(node)
    if node[0] != 'symlink':
        return None
    try:  # a link into a package: the rest of the path is read there
        return sorted(os.listdir(under_root(root, resolve(root, '/'.join([node[1]] + parts)))))
    except OSError:
        return None


def read_manifest(root: str, target: Optional[str], store_dir: str = STORE_DIR) -> Optional[List['Element']]:
    """The Elements listed by ``TARGET/manifest.json`` under ``root``, or None when ``target``
    is not such an environment (a plain store path as ``nix-env --set`` makes)."""
    if not target:
        return None
    try:
        with open(under_root(root, target.rstrip('/') + '/manifest.json')) as handle:
            document = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get('version') not in MANIFEST_VERSIONS:
        return None
    elements = []
    try:
        for entry in document.get('elements') or []:
            for text in entry.get('storePaths') or []:
                elements.append(Element(StorePath.parse(text, store_dir),
                                        entry.get('priority', DEFAULT_PRIORITY),
                                        entry.get('active', True)))
    except (AttributeError, InvalidStorePath):
        return None  # not a manifest this collection can describe: report no packages
    return elements


def _nar_node(node):
    if isinstance(node, dict):
        return ('directory', dict((name, _nar_node(child)) for name, child in node.items()))
    return node


def _propagated(root, package):
    try:
        with open(under_root(root, package + '/' + PROPAGATED_FILE)) as handle:
            return handle.read().split()
    except (IOError, OSError) as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return []
        raise StoreError('cannot read %s: %s' % (PROPAGATED_FILE, error), path=package) from error


class _TreeBuilder(object):
    """The symlink tree, in memory: a directory is a dict, a link ``('symlink', target)``."""

    def __init__(self, root):
        self.root = root
        self.tree = {}
        self.priorities = {}
        self.warnings = []

    def _host(self, path):
        return under_root(self.root, resolve(self.root, path))

    def link(self, source_dir, dest, key, priority):
        try:
            names = os.listdir(self._host(source_dir))
        except OSError as error:
            if error.errno == errno.ENOTDIR:
                self.warnings.append("not including '%s' in the user environment because it's "
                                     "not a directory" % source_dir)
                return
            raise StoreError('cannot read a package directory: %s' % error.strerror,
                             path=source_dir) from error
        for name in sorted(names):
            if name.startswith('.'):
                continue
            source = source_dir + '/' + name
            entry_key = key + (name,)
            try:
                mode = os.stat(self._host(source)).st_mode
            except OSError as error:
                if error.errno in (errno.ENOENT, errno.ENOTDIR):
                    self.warnings.append("skipping dangling symlink '%s'" % source)
                    continue
                raise StoreError('cannot read a package file: %s' % error.strerror, path=source) from error
            if source.endswith(_LEFT_OUT):
                continue
            existing = dest.get(name)
            if stat.S_ISDIR(mode):
                if isinstance(existing, dict):
                    self.link(source, existing, entry_key, priority)
                    continue
                if existing is not None:
                    # a directory linked whole so far: make it a directory of links to both
                    target = resolve(self.root, existing[1])
                    if not os.path.isdir(under_root(self.root, target)):
                        raise ProfileConflict(
                            "collision between '%s' and non-directory '%s'" % (source, target),
                            path=source, found=target)
                    merged = {}
                    dest[name] = merged
                    self.link(target, merged, entry_key, self.priorities.get(entry_key, 0))
                    self.link(source, merged, entry_key, priority)
                    continue
            elif existing is not None:
                if isinstance(existing, dict):
                    raise ProfileConflict(
                        "collision between non-directory '%s' and directory '%s'"
                        % (source, '/'.join(entry_key)), path=source)
                previous = self.priorities.get(entry_key, 0)
                if previous == priority:
                    raise ProfileConflict(
                        "packages '%s' and '%s' both provide '%s' with the same priority %d; "
                        "give one of them another priority (lower wins)"
                        % (existing[1], source, '/'.join(entry_key), priority),
                        path='/'.join(entry_key), expected='one package providing it',
                        found='%s and %s' % (existing[1], source))
                if previous < priority:
                    continue
            dest[name] = ('symlink', source)
            self.priorities[entry_key] = priority
