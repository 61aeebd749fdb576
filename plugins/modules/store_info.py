#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: store_info
short_description: What a host's Nix store holds, without Nix
version_added: 0.2.0
description:
  - Lists the valid store paths with their sizes (or only the closure of given paths),
    the profiles with their generations, the garbage-collector roots, the receipts
    M(nixcache.closure.realise) left, and the store's total size.
  - Checks that the store and its database agree; valid paths missing on disk and
    entries the database does not know. With O(check_contents=true) it also hashes every
    listed path again and compares it with its NarHash, as
    C(nix-store --verify --check-contents) does.
  - Changes nothing.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
attributes:
  check_mode:
    support: full
    details: It changes nothing in any mode.
  diff_mode:
    support: none
  idempotent:
    support: full
extends_documentation_fragment:
  - nixcache.closure.attributes
options:
  paths:
    description:
      - Only list these store paths and their closure (they must be valid), and check
        only them.
    type: list
    elements: str
  check_contents:
    description:
      - Hash the contents of every listed path again (slow on large stores).
    type: bool
    default: false
  runtime_roots:
    description:
      - Count the store paths running processes use as roots (read from C(/proc)).
    type: bool
    default: true
  root:
    description:
      - The root of the system whose store is described (the store is C(ROOT/nix/store)).
    type: path
    default: /
seealso:
  - module: nixcache.closure.gc
'''

EXAMPLES = r'''
- name: What is on this image?
  nixcache.closure.store_info:
  register: store

- name: Is the PostgreSQL closure intact?
  nixcache.closure.store_info:
    paths: ["{{ postgres_store_path }}"]
    check_contents: true
  register: pg

- name: Fail when it is not
  ansible.builtin.assert:
    that: pg.consistency.ok
'''

RETURN = r'''
paths:
  description: The valid paths listed (all, or the closure of O(paths)).
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The store path.
      type: str
    nar_size:
      description: Its NarSize in bytes.
      type: int
    registered_at:
      description: When it became valid (UTC, ISO 8601).
      type: str
    references:
      description: The store paths it refers to.
      type: list
      elements: str
path_count:
  description: How many paths are listed.
  returned: always
  type: int
nar_bytes:
  description: The NarSize of the listed paths, added up.
  returned: always
  type: int
store_nar_bytes:
  description: The NarSize of every valid path, added up.
  returned: always
  type: int
profiles:
  description: Every profile under C(/nix/var/nix/profiles).
  returned: always
  type: list
  elements: dict
  contains:
    profile:
      description: The profile link.
      type: str
    current:
      description: The number of its current generation.
      type: int
    generations:
      description: Its generations, oldest first.
      type: list
      elements: dict
      contains:
        number:
          description: The generation number.
          type: int
        path:
          description: The store path it points at.
          type: str
        current:
          description: Whether it is the current one.
          type: bool
        created_at:
          description: When it was made (UTC, ISO 8601).
          type: str
gc_roots:
  description: The valid paths the garbage collector keeps as roots, and why.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The store path.
      type: str
    roots:
      description: The links, or C({proc}) and C({temp:PID}), that make it a root.
      type: list
      elements: str
receipts:
  description: The receipts under C(/nix/var/nixcache/receipts).
  returned: always
  type: list
  elements: dict
  contains:
    file:
      description: The receipt file.
      type: str
    requested:
      description: The store path it describes.
      type: str
    paths:
      description: How many paths its closure has.
      type: int
    nar_bytes:
      description: The NarSize of its closure.
      type: int
    written_at:
      description: When it was written.
      type: str
consistency:
  description: Whether the store and its database agree.
  returned: always
  type: dict
  contains:
    ok:
      description: True when nothing below is listed.
      type: bool
    missing:
      description: Valid paths with nothing on disk.
      type: list
      elements: str
    unregistered:
      description: Store entries the database does not know (only when O(paths) is not given).
      type: list
      elements: str
    modified:
      description: Paths whose contents no longer match their NarHash (with O(check_contents)).
      type: list
      elements: str
    contents_checked:
      description: Whether contents were hashed.
      type: bool
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import module_errors, parse_store_paths
from ansible_collections.nixcache.closure.plugins.module_utils.errors import StoreError
from ansible_collections.nixcache.closure.plugins.module_utils.inventory import describe
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type='list', elements='str'),
            check_contents=dict(type='bool', default=False),
            runtime_roots=dict(type='bool', default=True),
            root=dict(type='path', default='/'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    with module_errors(module):
        only = None if params['paths'] is None else parse_store_paths(params['paths'])
        with LocalStore(root=params['root'], create=False) as store:
            if only is not None:
                invalid = sorted(set(only) - store.valid_subset(only))
                if invalid:
                    raise StoreError('not valid in the store', path=str(invalid[0]))
            result = describe(store, only=only, check_contents=params['check_contents'],
                              runtime_roots=params['runtime_roots'])
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
