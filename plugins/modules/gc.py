#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: gc
short_description: Collect the garbage of a Nix store without Nix
version_added: 0.2.0
description:
  - Deletes the store paths that nothing needs any more, as C(nix-collect-garbage) does,
    on hosts that have no Nix installed.
  - A path is kept when a garbage-collector root reaches it through references, the way
    Nix 2.8 finds roots; profiles and their generations in C(/nix/var/nix/profiles)
    (per-user profiles included), links in C(/nix/var/nix/gcroots) (C(auto) links to
    profiles elsewhere included), the store paths running processes use (read from
    C(/proc)) and the temporary roots of running Nix processes. Everything else in the
    store, leftovers that are not valid paths included, is deleted.
  - Dead paths leave the Nix database in one transaction and then the disk, so the store
    is consistent at every moment; real Nix agrees with what was deleted.
  - Safe next to other work on the same store. It takes the garbage collector lock
    (C(gc.lock)) exclusively, as Nix does, so it waits for a running M(nixcache.closure.realise)
    or M(nixcache.closure.profile) task, which hold it shared, and a real Nix process that
    wants a path kept while the collection runs is heard on C(gc-socket/socket).
  - Last, as Nix does, removes the entries of C(ROOT/nix/store/.links) that no store file
    links to any more (left by M(nixcache.closure.optimise), the O(nixcache.closure.realise#module:optimise)
    option or C(nix-store --optimise)).
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
extends_documentation_fragment:
  - nixcache.closure.attributes
options:
  delete_old:
    description:
      - Delete every generation of every profile except the current one first, as
        C(nix-collect-garbage -d). Rollbacks to them are then impossible.
    type: bool
    default: false
  delete_older_than:
    description:
      - Delete the generations older than this many days first, as
        C(nix-collect-garbage --delete-older-than), written like C(30d). The current
        generation and the one that was current at that time are kept.
    type: str
  max_freed:
    description:
      - Stop after freeing more than this much, as C(--max-freed). A number of bytes or
        one with a unit, like C(500M) or C(2G) (powers of 1024).
    type: str
  runtime_roots:
    description:
      - Keep the store paths that running processes use, found in C(/proc) as Nix does.
        Turn off only for a store no process on this host runs from, such as an image
        volume under O(root).
    type: bool
    default: true
  root:
    description:
      - The root of the system whose store is collected (the store is C(ROOT/nix/store)).
    type: path
    default: /
attributes:
  check_mode:
    support: full
    details: Returns what would be deleted and freed, and deletes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
notes:
  - Profiles whose generations are deleted are the C(nix-env) style profiles that
    M(nixcache.closure.profile) and Nix write.
seealso:
  - module: nixcache.closure.store_info
  - module: nixcache.closure.profile
'''

EXAMPLES = r'''
- name: Collect what no profile needs, keeping 30 days of generations
  nixcache.closure.gc:
    delete_older_than: 30d

- name: What would go?
  nixcache.closure.gc:
    delete_old: true
  check_mode: true
  register: would

- name: Free at most 1 GiB
  nixcache.closure.gc:
    max_freed: 1G
'''

RETURN = r'''
deleted:
  description: Store entries deleted (in check mode, that would be), as full paths.
  returned: always
  type: list
  elements: str
  sample: [/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-postgresql-and-plugins-15.7]
deleted_generations:
  description: Generation links deleted (in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [/nix/var/nix/profiles/per-user/postgres/profile-1-link]
bytes_freed:
  description:
    - Bytes freed (in check mode, that would be). A file hard-linked from several paths
      (an optimised store) counts once, when the last path linking it goes.
    - Nix counts differently there (any file with one or two links, whether its space is
      freed or not), so its figure for an optimised store may differ.
  returned: always
  type: int
mb_freed:
  description: RV(bytes_freed) in MiB.
  returned: always
  type: float
links_deleted:
  description: Entries of C(ROOT/nix/store/.links) deleted as unused (in check mode, that would be).
  returned: always
  type: int
alive:
  description: How many valid paths are kept.
  returned: always
  type: int
roots:
  description: How many roots were found.
  returned: always
  type: int
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils import gc
from ansible_collections.nixcache.closure.plugins.module_utils.common import module_errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            delete_old=dict(type='bool', default=False),
            delete_older_than=dict(type='str'),
            max_freed=dict(type='str'),
            runtime_roots=dict(type='bool', default=True),
            root=dict(type='path', default='/'),
        ),
        supports_check_mode=True,
    )
    with module_errors(module):
        result = gc.collect_garbage(
            module.params['root'], delete_old=module.params['delete_old'],
            delete_older_than=module.params['delete_older_than'],
            max_freed=module.params['max_freed'], runtime_roots=module.params['runtime_roots'],
            dry_run=module.check_mode)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
