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
requirements:
  - Python 3.8 or newer on the managed host (tested on CPython 3.8 to 3.13); the standard
    library is enough.
extends_documentation_fragment:
  - nixcache.closure.attributes
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
  plan:
    description:
      - For check mode, the packages that the profile reached through O(plan.link) is about to
        hold (as given to M(nixcache.closure.profile) in a task before this one). Sources
        through that link are then listed from the environment those packages make, so a dry
        run of a switch shows the links it would make and prune. Ignored outside check mode
        and while a package is not realised yet.
    type: dict
    version_added: 0.2.0
    suboptions:
      link:
        description: The profile link that O(source) goes through, such as C(/var/lib/postgresql/.nix-profile).
        type: path
        required: true
      packages:
        description: Store paths of the packages, as O(nixcache.closure.profile#module:paths) gets them (or its one O(nixcache.closure.profile#module:path)).
        type: list
        elements: str
        required: true
      priorities:
        description: Their priorities, as O(nixcache.closure.profile#module:priorities) gets them.
        type: dict
        default: {}
attributes:
  check_mode:
    support: full
    details: >-
      A source that does not exist yet (a profile that an earlier task of the same dry run would
      make) is reported in RV(pending) instead of failing the task. With O(plan), sources through
      the profile are listed from the packages it is about to hold.
  diff_mode:
    support: full
    details: The links created, changed and removed, with their old and new targets.
  idempotent:
    support: full
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
pending:
  description: In check mode, sources that do not exist yet, whose entries would be linked once they do.
  returned: always
  type: list
  elements: str
  version_added: 0.2.0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import module_errors
from ansible_collections.nixcache.closure.plugins.module_utils.linktree import Mirror, planned_environment


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
            plan=dict(type='dict', options=dict(
                link=dict(type='path', required=True),
                packages=dict(type='list', elements='str', required=True),
                priorities=dict(type='dict', default={}),
            )),
        ),
        supports_check_mode=True,
    )
    params = module.params
    with module_errors(module):
        planned = None
        if module.check_mode and params['plan'] and params['plan']['packages']:
            planned = planned_environment(params['plan'], params['root'])
        mirror = Mirror(root=params['root'], owner=params['owner'], group=params['group'],
                        replace=params['replace'], check_mode=module.check_mode,
                        planned=planned)
        mirror.mirror(params['source'], params['dest'], directories=params['directories'],
                      only=params['only'])
    module.exit_json(changed=bool(mirror.created or mirror.removed or mirror.pending),
                     created=mirror.created, removed=mirror.removed, pending=mirror.pending,
                     diff=mirror.diff())


if __name__ == '__main__':
    main()
