# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The file system of an alternate root (``root:``): where its paths really are, and the
users and groups its ``/etc/passwd`` and ``/etc/group`` define."""

import errno
import grp
import os
import pwd
from typing import Optional, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import file_errors

MAX_LINKS = 40  # symlinks followed in one path before giving up, as Linux does


def under_root(root: Optional[str], path: str) -> str:
    """Where the absolute ``path`` of the system under ``root`` lies on this host."""
    if not root or root == '/' or not os.path.isabs(path):
        return path
    return os.path.join(root, path.lstrip('/'))


def replace_link(target: str, link: str, owner: Optional[Tuple[int, int]] = None) -> None:
    """Point the symlink ``link`` (a host path) at ``target`` atomically: a temporary link
    beside it, owned by ``owner`` (uid, gid; -1 keeps one) when given, renamed over it, so
    that a reader sees the old link or the new one, never none."""
    temporary = '%s.tmp-%d' % (link, os.getpid())
    with file_errors('cannot replace the link', link):
        if os.path.lexists(temporary):
            os.unlink(temporary)
        os.symlink(target, temporary)
        try:
            if owner is not None:
                os.lchown(temporary, owner[0], owner[1])
            os.rename(temporary, link)
        except BaseException:
            os.unlink(temporary)
            raise


def resolve(root: Optional[str], path: str) -> str:
    """``path`` of the system under ``root`` with every symlink followed, as ``realpath``
    would resolve it there: absolute link targets stay inside the root.  Returns the path as
    seen from inside the root; components that do not exist are kept as they are."""
    pending = [part for part in path.split('/') if part]
    current = '/'
    followed = 0
    while pending:
        part = pending.pop(0)
        if part == '.':
            continue
        if part == '..':
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        host = under_root(root, candidate)
        if not os.path.islink(host):
            current = candidate
            continue
        followed += 1
        if followed > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = os.readlink(host)
        if target.startswith('/'):
            current = '/'
        pending[:0] = [item for item in target.split('/') if item]
    return current


def user_entry(root: Optional[str], name: str) -> Tuple[int, int, str]:
    """(uid, gid, home) of user ``name`` of the system under ``root``; KeyError if unknown."""
    if not root or root == '/':
        entry = pwd.getpwnam(name)
        return entry.pw_uid, entry.pw_gid, entry.pw_dir
    fields = _entry(root, '/etc/passwd', name)
    return int(fields[2]), int(fields[3]), fields[5]


def group_id(root: Optional[str], name: str) -> int:
    """The gid of group ``name`` of the system under ``root``; KeyError if unknown."""
    if not root or root == '/':
        return grp.getgrnam(name).gr_gid
    return int(_entry(root, '/etc/group', name)[2])


def _entry(root, table, name):
    try:
        with open(under_root(root, table)) as handle:
            for line in handle:
                fields = line.rstrip('\n').split(':')
                if len(fields) > 3 and fields[0] == name:
                    return fields
    except (IOError, OSError) as error:
        raise KeyError('%s: %s cannot be read (%s)' % (name, under_root(root, table),
                                                       error.strerror)) from error
    raise KeyError('%s is not in %s' % (name, under_root(root, table)))
