# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-entry symlinks that mirror a directory reached through a profile.

``DEST/ENTRY -> SOURCE/ENTRY`` for every entry of the source, with some entries made real
directories of links one level deeper; links into the source whose entry is gone are
pruned.  Links are replaced atomically (a temporary link renamed over the old one), and
nothing inside the Nix store is ever followed for writing or changed in ownership.
"""

import os
from typing import Any, Dict, Optional, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import StoreError
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import (
    group_id,
    replace_link,
    resolve,
    under_root,
    user_entry,
)
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.userenv import build_environment, elements_from, entries_of


class Mirror(object):
    """Mirrors sources into destinations under ``root``; records what it (would) change.

    ``created`` and ``removed`` list the destination paths; ``changes`` holds
    ``(path, old target or None, new target or None)`` for diffs; ``pending`` the sources
    that do not exist yet (only in check mode, where a profile may not be made yet).
    """

    def __init__(self, root='/', owner=None, group=None, replace=(), check_mode=False,
                 planned=None):
        """``planned``: in check mode, (profile link, Environment) the profile is about to
        point at; sources through that link are listed from the environment."""
        self.root = root
        self.planned = planned if check_mode else None
        self.replace = set(replace)
        self.check_mode = check_mode
        try:
            self.uid, self.gid = _owner_ids(root, owner, group)
        except KeyError as error:
            if not check_mode:  # a user made earlier in the same check run
                raise StoreError('cannot resolve owner or group: %s' % error.args[0]) from error
            self.uid = self.gid = None
        self.created, self.removed, self.changes, self.pending = [], [], [], []

    def real(self, path):
        """Where ``path`` (inside the root, possibly through links inside the root) really is."""
        return under_root(self.root, resolve(self.root, path))

    def entries(self, source):
        """The names in ``source``; None for a source still to be made (check mode)."""
        if self.planned is not None:
            link, environment = self.planned
            if source == link or source.startswith(link.rstrip('/') + '/'):
                names = entries_of(environment, source[len(link):], self.root)
                if names is None:
                    self.pending.append(source)
                return names
        try:
            return sorted(os.listdir(self.real(source)))
        except OSError as error:
            if self.check_mode and not os.path.lexists(self.real(source)):
                self.pending.append(source)
                return None
            raise StoreError('cannot list the source: %s' % error.strerror, path=source) from error

    def mirror(self, source, dest, directories=(), only=None):
        """Link every entry of ``source`` (or those in ``only``) into ``dest``."""
        source, dest = source.rstrip('/'), dest.rstrip('/')
        names = self.entries(source)
        self.ensure_directory(dest)
        if names is None:
            return
        if only is not None:
            names = [name for name in names if name in only]
        for name in names:
            if name in directories:
                inner_source, inner_dest = source + '/' + name, dest + '/' + name
                self.ensure_directory(inner_dest)
                inner = self.entries(inner_source) or []
                for entry in inner:
                    self.ensure_link(inner_source + '/' + entry, inner_dest + '/' + entry)
                self.prune(inner_source, inner_dest, set(inner))
            else:
                self.ensure_link(source + '/' + name, dest + '/' + name)
        if only is None:
            self.prune(source, dest, set(names))

    def ensure_directory(self, path):
        host = under_root(self.root, path)
        if os.path.islink(host):
            raise StoreError('a symlink is where a directory of links belongs', path=path)
        if not os.path.isdir(host):
            self.created.append(path)
            self.changes.append((path + '/', None, '(directory)'))
            if not self.check_mode:
                os.makedirs(host, 0o755)
                self.own(host)

    def ensure_link(self, target, path):
        host = under_root(self.root, path)
        old = None
        if os.path.islink(host):
            old = os.readlink(host)
            if old == target:
                return
        elif os.path.isdir(host):
            raise StoreError('a directory is where a link belongs; not replacing it', path=path)
        elif os.path.lexists(host):
            if os.path.basename(path) not in self.replace:
                raise StoreError('a file, not a link, is where a link belongs; list it in '
                                 'replace to replace it', path=path)
            old = '(file)'
        self.created.append(path)
        self.changes.append((path, old, target))
        if not self.check_mode:
            owner = None
            if self.uid is not None or self.gid is not None:
                owner = (-1 if self.uid is None else self.uid, -1 if self.gid is None else self.gid)
            replace_link(target, host, owner)

    def prune(self, source, dest, keep):
        """Remove links in ``dest`` into ``source`` that are not in ``keep``."""
        host = under_root(self.root, dest)
        if not os.path.isdir(host):
            return
        for name in sorted(os.listdir(host)):
            path = os.path.join(dest, name)
            entry = os.path.join(host, name)
            if name in keep or not os.path.islink(entry):
                continue
            target = os.readlink(entry)
            if target.startswith(source.rstrip('/') + '/'):
                self.removed.append(path)
                self.changes.append((path, target, None))
                if not self.check_mode:
                    os.unlink(entry)

    def own(self, host_path):
        if self.uid is not None or self.gid is not None:
            os.lchown(host_path, -1 if self.uid is None else self.uid,
                      -1 if self.gid is None else self.gid)

    def diff(self):
        """``before``/``after`` texts of the links changed, for diff mode."""
        before = ['%s -> %s' % (path, old) for path, old, new in self.changes if old is not None]
        after = ['%s -> %s' % (path, new) for path, old, new in self.changes if new is not None]
        after.extend('(entries of %s once it exists)' % source for source in self.pending)
        return dict(before=''.join(line + '\n' for line in before),
                    after=''.join(line + '\n' for line in after))


def _owner_ids(root, owner, group):
    """(uid or None, gid or None) from names or numbers, as the system under ``root`` has them."""
    uid = None if owner is None else int(owner) if owner.isdigit() else user_entry(root, owner)[0]
    gid = None if group is None else int(group) if group.isdigit() else group_id(root, group)
    return uid, gid


def planned_environment(plan: Dict[str, Any], root: str) -> Optional[Tuple[str, Any]]:
    """(profile link, Environment) for check mode, when every package of ``plan`` (link,
    packages, priorities: the profile about to be made) is valid; else None."""
    elements = elements_from(plan['packages'], plan['priorities'])
    with LocalStore(root=root, create=False) as store:
        paths = [element.store_path for element in elements]
        if len(store.valid_subset(paths)) != len(paths):
            return None  # still to be realised: its sources are reported as pending
    return plan['link'].rstrip('/'), build_environment(elements, root=root)
