# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nix profiles, kept the way ``nix-env`` keeps them.

A profile ``DIR/NAME`` is a symlink to its current generation ``NAME-N-link`` (relative,
in the same directory), and each generation is a symlink to a store path.  Switching
makes a new generation and replaces the profile link atomically (a temporary link
renamed over it).  Profiles under ``/nix/var/nix/profiles`` are garbage-collector roots
through the ``gcroots/profiles`` link Nix creates; a profile elsewhere gets an indirect
root in ``gcroots/auto`` for each of its generations, as ``nix-env -p`` gives them.

A profile points either at one store path (as ``nix-env --set`` makes it) or at an
environment of several packages built as ``nix profile`` builds it (see ``userenv``).
``apply`` plans and, outside check mode, makes one change of a profile.
"""

import hashlib
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils import nixbase32
from ansible_collections.nixcache.closure.plugins.module_utils.errors import StoreError
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import replace_link, under_root, user_entry
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.userenv import (
    DEFAULT_PRIORITY,
    build_environment,
    elements_from,
    read_manifest,
)

PROFILES_DIR = '/nix/var/nix/profiles'
GCROOTS_DIR = '/nix/var/nix/gcroots'
NAME_RE = re.compile(r'\A[A-Za-z0-9+._?=-]+\Z')


class Profile(object):
    """The profile at ``path`` (a path on the host, e.g. /nix/var/nix/profiles/default)."""

    def __init__(self, path: str, root: str = '/', store_dir: str = STORE_DIR) -> None:
        if not os.path.isabs(path) or '\0' in path:
            raise StoreError('a profile must be an absolute path', found=path)
        self.path = os.path.normpath(path)
        self.directory, self.name = os.path.split(self.path)
        if not NAME_RE.match(self.name):
            raise StoreError('a profile name has only letters, digits and + - . _ ? =',
                             found=self.name)
        self.root = root
        self.store_dir = store_dir
        self.real_path = under_root(root, self.path)
        self.real_directory = os.path.dirname(self.real_path)
        self._generation_re = re.compile(r'\A%s-(\d+)-link\Z' % re.escape(self.name))

    def generation_link(self, number: int) -> str:
        return '%s-%d-link' % (self.name, number)

    def generations(self) -> Dict[int, str]:
        """{number: store path text} of every generation, read from the links."""
        found = {}
        try:
            names = os.listdir(self.real_directory)
        except OSError:
            return found
        for name in names:
            match = self._generation_re.match(name)
            if match:
                found[int(match.group(1))] = os.readlink(os.path.join(self.real_directory, name))
        return found

    def current(self) -> Optional[int]:
        """The number of the current generation, or None when the profile does not exist."""
        try:
            target = os.readlink(self.real_path)
        except OSError:
            return None
        match = self._generation_re.match(os.path.basename(target))
        if not match:
            raise StoreError('the profile is a link, but not to one of its generations; '
                             'refusing to touch it', path=self.path, found=target)
        return int(match.group(1))

    def current_target(self) -> Optional[str]:
        number = self.current()
        return None if number is None else self.generations().get(number)

    def switch_to(self, store_path: StorePath, keep: Optional[int] = None) -> int:
        """Make ``store_path`` current (a new generation unless it already is); returns the
        generation number.  ``keep`` old generations are kept (None: all of them)."""
        target = store_path.path(self.store_dir)
        generations = self.generations()
        number = self.current()
        if number is None or generations.get(number) != target:
            self._make_directory()
            number = max(generations) + 1 if generations else 1
            replace_link(target, os.path.join(self.real_directory, self.generation_link(number)))
            replace_link(self.generation_link(number), self.real_path)
        self.ensure_gc_root()
        if keep is not None:
            self.delete_old(keep)
        return number

    def previous_generation(self) -> int:
        """The newest generation older than the current one (what a rollback switches to)."""
        current = self.current()
        if current is None:
            raise StoreError('the profile does not exist: nothing to roll back', path=self.path)
        older = [number for number in self.generations() if number < current]
        if not older:
            raise StoreError('no generation older than the current one (%d) to roll back to'
                             % current, path=self.path)
        return max(older)

    def rollback(self) -> int:
        """Switch to the previous generation; its number."""
        number = self.previous_generation()
        replace_link(self.generation_link(number), self.real_path)
        return number

    def delete_old(self, keep: int) -> List[int]:
        """Delete generations older than the current one except the ``keep`` newest."""
        current = self.current()
        older = sorted((n for n in self.generations() if current is None or n < current),
                       reverse=True)
        deleted = older[keep:]
        for number in deleted:
            os.unlink(os.path.join(self.real_directory, self.generation_link(number)))
        return deleted

    def remove(self) -> None:
        """Remove the profile link, every generation and their indirect roots."""
        for number in self.generations():
            os.unlink(os.path.join(self.real_directory, self.generation_link(number)))
            auto_root = self._auto_root(number)
            if auto_root and os.path.lexists(auto_root):
                os.unlink(auto_root)
        if os.path.lexists(self.real_path):
            os.unlink(self.real_path)

    def ensure_gc_root(self) -> None:
        """Make the profile's generations garbage-collector roots, as Nix does."""
        if self.path == PROFILES_DIR or self.path.startswith(PROFILES_DIR + '/'):
            link = under_root(self.root, GCROOTS_DIR + '/profiles')
            if not os.path.lexists(link):
                _make_dirs(os.path.dirname(link))
                os.symlink(PROFILES_DIR, link)
            return
        for number in self.generations():
            link = self._auto_root(number)
            generation = os.path.join(self.directory, self.generation_link(number))
            _make_dirs(os.path.dirname(link))
            if not os.path.lexists(link) or os.readlink(link) != generation:
                replace_link(generation, link)

    def _auto_root(self, number):
        """Nix's indirect root for generation ``number`` of a profile outside the profiles
        directory: ``gcroots/auto/<base32 sha1 of the generation link>`` -> that link (a
        stale one, left when a generation goes, is removed by the garbage collector)."""
        if self.path.startswith(PROFILES_DIR + '/'):
            return None
        generation = os.path.join(self.directory, self.generation_link(number))
        digest = nixbase32.encode(hashlib.sha1(generation.encode('utf-8')).digest())
        return under_root(self.root, '%s/auto/%s' % (GCROOTS_DIR, digest))

    def _make_directory(self):
        _make_dirs(self.real_directory)


def store_path_of(target: Optional[str], store_dir: str = STORE_DIR) -> Optional[StorePath]:
    return None if target is None else StorePath.parse(target, store_dir)


def apply_options(root: str, state: str, path: Optional[str] = None, paths: Optional[List[str]] = None, priorities: Optional[Dict[str, int]] = None,
                  name: str = 'profile', user: Optional[str] = None, profile: Optional[str] = None, link: Optional[str] = None,
                  keep: Optional[int] = None, check_mode: bool = False) -> Dict[str, Any]:
    """The profile module's options as one change: the profile (``profile``, else per
    ``user``, else shared, by ``name``), the owner and ``.nix-profile`` link of a user's
    profile, the packages; then ``apply()`` on the store under ``root``."""
    owner = None
    if user:
        try:
            owner = user_entry(root, user)
        except KeyError as error:
            if not check_mode:  # a user made earlier in the same check run
                raise StoreError('unknown user: %s' % error.args[0]) from error
    if profile:
        profile_path = profile
    elif user:
        profile_path = '%s/per-user/%s/%s' % (PROFILES_DIR, user, name)
    else:
        profile_path = '%s/%s' % (PROFILES_DIR, name)
    link = link or (os.path.join(owner[2], '.nix-profile') if owner else None)
    if paths is not None and not paths and state == 'present':
        raise StoreError('paths is empty: give at least one store path')
    elements = elements_from(paths, priorities or {}) if paths else None
    store_path = StorePath.parse(path) if path and state == 'present' else None
    with LocalStore(root=root, create=False) as store:
        return apply(Profile(profile_path, root=root), store, state, path=store_path,
                     elements=elements, keep=keep, link=link, owner=owner,
                     check_mode=check_mode)


def apply(profile: Profile, store: LocalStore, state: str, path: Optional[StorePath] = None, elements: Optional[Sequence[Any]] = None,
          keep: Optional[int] = None, link: Optional[str] = None, owner: Optional[Tuple[int, int, str]] = None, check_mode: bool = False) -> Dict[str, Any]:
    """Make one change of ``profile`` and report it (a dict for the module to return).

    ``state`` is present (with ``path``, one StorePath, or ``elements``, Elements of an
    environment), rollback or absent.  ``link`` is a symlink to point at the profile,
    ``owner`` (uid, gid) the owner of a per-user profile.  In check mode nothing is
    written, and packages that are not valid yet (a closure still to be realised) are
    reported as ``pending`` instead of refused.
    """
    previous = profile.current_target()
    environment, pending, valid = None, [], set()
    if state == 'present':
        wanted_paths = [element.store_path for element in elements] if elements else [path]
        valid = store.valid_subset(wanted_paths)
        pending = [p for p in wanted_paths if p not in valid]
        if pending and not check_mode:
            raise StoreError('the store path is not valid in the store: realise it first',
                             path=', '.join(str(p) for p in pending))
        if elements and not pending:
            environment = build_environment(elements, root=profile.root,
                                            store_dir=profile.store_dir)
            wanted = str(environment.store_path)
        else:
            wanted = None if elements else str(path)
    elif state == 'rollback':
        wanted = profile.generations()[profile.previous_generation()]
    else:
        wanted = None

    real_link = under_root(profile.root, link) if link else None
    link_ok = (real_link is None or state == 'absent' and not os.path.lexists(real_link)
               or state != 'absent' and os.path.islink(real_link)
               and os.readlink(real_link) == profile.path)
    too_many = (state == 'present' and keep is not None
                and len(profile.generations()) - 1 > keep)
    changed = (wanted != previous or bool(pending) or not link_ok or too_many
               or (state == 'absent' and bool(profile.generations())))

    if changed and not check_mode:
        if environment is not None:
            store.add_nar(environment.info, environment.nar)
        if state == 'present':
            profile.switch_to(StorePath.parse(wanted, profile.store_dir), keep=keep)
        elif state == 'rollback':
            profile.rollback()
        else:
            profile.remove()
        if real_link:
            _point_link(profile, link, real_link, state, link_ok)
        if owner and state != 'absent':
            _chown_profile(profile, real_link, owner)

    generations = profile.generations()
    result = dict(changed=changed, profile=profile.path, target=wanted, previous=previous,
                  generation=profile.current(),
                  generations=[dict(number=n, path=generations[n]) for n in sorted(generations)],
                  elements=_elements_report(profile, wanted, elements),
                  pending=[str(p) for p in pending],
                  warnings=list(environment.warnings) if environment else [])
    if wanted != previous or pending:
        before = _closure(store, previous, None)
        # with packages still to realise, what is known: the closure of the valid ones
        after = store.closure(sorted(valid)) if pending else _closure(store, wanted, environment)
        if not pending:
            result['closure_diff'] = _closure_diff(store, before, after)
        result['diff'] = dict(
            before=_describe(profile, previous, read_manifest(profile.root, previous), before),
            after=_describe(profile, wanted, elements or None, after, pending))
    return result


def _elements_report(profile, wanted, elements):
    if elements is None:
        elements = read_manifest(profile.root, wanted, profile.store_dir)
    return [element.report(profile.store_dir) for element in elements or []]


def _closure(store, target, environment):
    """The closure of a profile target; for an environment not yet in the store, the
    environment and the closure of its packages."""
    if target is None:
        return set()
    if environment is not None and not store.is_valid(environment.store_path):
        return set([environment.store_path]) | store.closure(environment.info.references)
    return store.closure([StorePath.parse(target, store.store_dir)])


def _closure_diff(store, before, after):
    def size(paths):
        return sum((store.path_info(path) or {}).get('nar_size') or 0 for path in paths)

    added, removed = sorted(after - before), sorted(before - after)
    return dict(added=[str(p) for p in added], removed=[str(p) for p in removed],
                added_bytes=size(added), removed_bytes=size(removed))


def _describe(profile, target, elements, closure, pending=()):
    """A profile state as text, for diff mode."""
    if target is None and pending:
        target = '(a new environment, made once its packages are realised)'
    lines = ['%s -> %s' % (profile.path, target or '(none)')]
    for element in elements or []:
        lines.append('package %s%s' % (element.store_path.path(profile.store_dir),
                                       '' if element.priority == DEFAULT_PRIORITY
                                       else ' (priority %d)' % element.priority))
    lines.extend('closure %s' % path.path(profile.store_dir) for path in sorted(closure))
    lines.extend('to realise %s' % path.path(profile.store_dir) for path in pending)
    return '\n'.join(lines) + '\n'


def _point_link(profile, link, real_link, state, link_ok):
    if state == 'absent':
        if os.path.islink(real_link):
            os.unlink(real_link)
        return
    if link_ok:
        return
    if os.path.lexists(real_link) and not os.path.islink(real_link):
        raise StoreError('refusing to replace a file or directory with the profile link',
                         path=link)
    _make_dirs(os.path.dirname(real_link))
    replace_link(profile.path, real_link)


def _chown_profile(profile, real_link, owner):
    """A per-user profile belongs to its user: its directory and links (never their targets)."""
    uid, gid = owner[0], owner[1]
    os.chown(profile.real_directory, uid, gid)
    names = [profile.name] + [profile.generation_link(n) for n in profile.generations()]
    for name in names:
        os.lchown(os.path.join(profile.real_directory, name), uid, gid)
    if real_link:
        os.lchown(real_link, uid, gid)


def _make_dirs(path):
    if not os.path.isdir(path):
        os.makedirs(path, 0o755)
