#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: link_tree
short_description: Mirror a directory of a Nix profile as per-entry symlinks
version_added: 0.1.0
description:
  - For every entry of O(source) (usually a directory reached through a profile, such as
    C(/var/lib/postgresql/.nix-profile/bin)), makes C(DEST/ENTRY) a symlink to C(SOURCE/ENTRY).
    The links go through the profile, so switching the profile moves them all.
  - Entries named in O(directories) become real directories holding per-entry links instead
    (one level deeper), as a Postgres C(share/postgresql/extension) directory expects.
  - Links in O(dest) that point into O(source) but whose entry is gone are removed, so a switch to
    a build without some tool leaves no dangling links.
  - Idempotent and fast, one task for hundreds of links. Never follows or changes ownership of
    anything inside the Nix store.
author:
  - nixcache.closure maintainers (@nixcache)
options:
  source:
    description: The directory to mirror, as seen on the host (it may lead through symlinks).
    type: path
    required: true
  dest:
    description: The directory that receives the links; created when missing.
    type: path
    required: true
  directories:
    description: Entries of O(source) that become real directories of per-entry links.
    type: list
    elements: str
    default: []
  only:
    description: Mirror only these entries of O(source) (default all).
    type: list
    elements: str
  replace:
    description:
      - Entries of O(dest) that may be replaced when they are regular files (not links), such
        as a C(/usr/bin/pg_config) left by a distribution package. Other non-link files are
        never touched and fail the task.
    type: list
    elements: str
    default: []
  owner:
    description: Owner of the directories created (the links themselves too).
    type: str
  group:
    description: Group of the directories created (the links themselves too).
    type: str
  root:
    description: Alternate root; O(source) and O(dest) are as seen from inside it.
    type: path
    default: /
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
'''

EXAMPLES = r'''
- name: Link every Postgres tool into /usr/lib/postgresql/bin through the profile
  nixcache.closure.link_tree:
    source: /var/lib/postgresql/.nix-profile/bin
    dest: /usr/lib/postgresql/bin
    owner: postgres
    group: postgres

- name: The share tree, with real directories of links for extensions
  nixcache.closure.link_tree:
    source: /var/lib/postgresql/.nix-profile/share/postgresql
    dest: /usr/lib/postgresql/share/postgresql
    directories: [extension, contrib, timezonesets, tsearch_data]
'''

RETURN = r'''
created:
  description: Links created or changed.
  returned: always
  type: list
  elements: str
removed:
  description: Stale links removed.
  returned: always
  type: list
  elements: str
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import (
    group_id,
    resolve,
    under_root,
    user_entry,
)


class Mirror(object):
    def __init__(self, module):
        params = module.params
        self.module = module
        self.root = params['root']
        self.replace = set(params['replace'])
        self.uid, self.gid = _owner_ids(self.root, params['owner'], params['group'])
        self.created, self.removed = [], []

    def real(self, path):
        """Where ``path`` (inside the root, possibly through links inside the root) really is."""
        return under_root(self.root, resolve(self.root, path))

    def entries(self, source):
        try:
            return sorted(os.listdir(self.real(source)))
        except OSError as error:
            self.module.fail_json(msg='cannot list the source %s: %s' % (source, error), path=source)

    def ensure_directory(self, path):
        host = under_root(self.root, path)
        if os.path.islink(host):
            self.module.fail_json(msg='%s is a symlink where a directory of links belongs' % path,
                                  path=path)
        if not os.path.isdir(host):
            self.created.append(path)
            if not self.module.check_mode:
                os.makedirs(host, 0o755)
                self.own(host)

    def ensure_link(self, target, path):
        host = under_root(self.root, path)
        if os.path.islink(host):
            if os.readlink(host) == target:
                return
        elif os.path.isdir(host):
            self.module.fail_json(msg='%s is a directory; not replacing it with a link' % path,
                                  path=path)
        elif os.path.lexists(host) and os.path.basename(path) not in self.replace:
            self.module.fail_json(msg='%s is a file, not a link; list it in replace to replace it'
                                  % path, path=path)
        self.created.append(path)
        if not self.module.check_mode:
            temporary = host + '.link-tree-tmp'
            if os.path.lexists(temporary):
                os.unlink(temporary)
            os.symlink(target, temporary)
            self.own(temporary)
            os.rename(temporary, host)

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
            if os.readlink(entry).startswith(source.rstrip('/') + '/'):
                self.removed.append(path)
                if not self.module.check_mode:
                    os.unlink(entry)

    def own(self, host_path):
        if self.uid is not None or self.gid is not None:
            os.lchown(host_path, -1 if self.uid is None else self.uid,
                      -1 if self.gid is None else self.gid)


def _owner_ids(root, owner, group):
    """(uid or None, gid or None) from names or numbers, as the system under ``root`` has them."""
    uid = None if owner is None else int(owner) if owner.isdigit() else user_entry(root, owner)[0]
    gid = None if group is None else int(group) if group.isdigit() else group_id(root, group)
    return uid, gid


def main():
    module = AnsibleModule(
        argument_spec=dict(
            source=dict(type='path', required=True),
            dest=dict(type='path', required=True),
            directories=dict(type='list', elements='str', default=[]),
            only=dict(type='list', elements='str'),
            replace=dict(type='list', elements='str', default=[]),
            owner=dict(type='str'),
            group=dict(type='str'),
            root=dict(type='path', default='/'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    source, dest = params['source'].rstrip('/'), params['dest'].rstrip('/')
    try:
        mirror = Mirror(module)
    except (KeyError, OSError) as error:
        module.fail_json(msg='cannot resolve owner or group: %s' % error)
    names = mirror.entries(source)
    if params['only'] is not None:
        names = [name for name in names if name in params['only']]
    mirror.ensure_directory(dest)
    for name in names:
        if name in params['directories']:
            subdir_source, subdir_dest = source + '/' + name, dest + '/' + name
            mirror.ensure_directory(subdir_dest)
            inner = mirror.entries(subdir_source)
            for entry in inner:
                mirror.ensure_link(subdir_source + '/' + entry, subdir_dest + '/' + entry)
            mirror.prune(subdir_source, subdir_dest, set(inner))
        else:
            mirror.ensure_link(source + '/' + name, dest + '/' + name)
    if params['only'] is None:
        mirror.prune(source, dest, set(names))
    module.exit_json(changed=bool(mirror.created or mirror.removed), created=mirror.created,
                     removed=mirror.removed)


if __name__ == '__main__':
    main()
