#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: profile
short_description: Point a Nix profile at a store path or several packages, with generations and rollback, without Nix
version_added: 0.1.0
description:
  - Makes a Nix profile (C(/nix/var/nix/profiles/NAME), a per-user profile, or any path) point at
    a store path the way C(nix-env --set) does (O(path)), or at several packages merged into one
    environment the way C(nix profile install) makes it (O(paths)), so that a real Nix sees the
    same generations.
  - With O(paths), the environment is a content-addressed store path named C(profile) holding the
    merged symlink tree of the packages and a C(manifest.json) listing each of them, registered
    with its references and its C(ca) field as Nix registers it. Real C(nix profile list),
    C(nix profile rollback) and C(nix profile history) work on these generations, and the same
    packages give the same store path as C(nix profile install) gives them.
  - Each switch adds a numbered generation C(NAME-N-link) and replaces the profile link
    atomically. The generations are garbage-collector roots, so C(nix-collect-garbage) keeps the
    closure of every generation kept.
  - The store paths must already be valid in the store (see M(nixcache.closure.realise)). In check
    mode, paths that are not valid yet are reported in RV(pending) (a run that realises them
    first would switch), so a dry run of a whole playbook on a fresh host works.
  - On a switch, returns the closure difference between the old and the new target.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host (tested on CPython 3.8 to 3.13); the standard
    library is enough.
extends_documentation_fragment:
  - nixcache.closure.attributes
options:
  path:
    description:
      - The store path the profile should point at, as C(nix-env --set) sets it.
      - One of O(path) and O(paths) is required with O(state=present).
    type: str
  paths:
    description:
      - Store paths of packages to merge into one environment that the profile points at, as
        one generation of C(nix profile install) with all of them. The order is the order of
        the elements of C(manifest.json) (C(nix profile list)).
      - Where two packages provide the same file, the task fails and names both files, unless
        O(priorities) says which one wins. A directory provided by several packages becomes a
        directory of links to the entries of each.
      - Mutually exclusive with O(path).
    type: list
    elements: str
    version_added: 0.2.0
  priorities:
    description:
      - Priorities of some of O(paths), a store path to a number for each. Lower numbers win a file both
        packages provide; the default is 5, as in Nix. A priority other than 5 is recorded in
        C(manifest.json) as newer Nix records it (Nix 2.8 reads the profile but not the
        priority).
    type: dict
    default: {}
    version_added: 0.2.0
  name:
    description:
      - The profile's name. Without O(user) the profile is C(/nix/var/nix/profiles/NAME); with
        O(user) it is C(/nix/var/nix/profiles/per-user/USER/NAME).
      - Ignored when O(profile) is set.
    type: str
    default: profile
  user:
    description:
      - Make it a per-user profile of this user, owned by the user, and link the user's
        C(~/.nix-profile) to it (see O(link)).
    type: str
  profile:
    description:
      - An explicit profile path (for example C(/opt/app/profile)). Such a profile gets an
        indirect garbage-collector root in C(/nix/var/nix/gcroots/auto), as with C(nix-env -p).
    type: path
  link:
    description:
      - A symlink to create that points at the profile, such as C(/var/lib/postgresql/.nix-profile).
      - Defaults to C(~USER/.nix-profile) when O(user) is set (home directory from C(ROOT/etc/passwd)).
    type: path
  state:
    description:
      - V(present) points the profile at O(path) (a new generation unless it already does).
      - V(rollback) switches to the newest generation older than the current one.
      - V(absent) removes the profile, its generations and O(link).
    type: str
    choices: [present, rollback, absent]
    default: present
  keep:
    description:
      - How many generations older than the current one to keep; older ones are deleted.
        By default all are kept, as Nix does.
    type: int
  root:
    description:
      - Alternate root, as for M(nixcache.closure.realise). Paths above are as seen from inside it.
    type: path
    default: /
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: >-
      The diff shows the old and the new target of the profile, the packages of each and their
      closures (added and removed store paths).
  idempotent:
    support: partial
    details: With O(state=rollback), each run goes back one more generation.
seealso:
  - module: nixcache.closure.realise
'''

EXAMPLES = r'''
- name: Realise PostgreSQL
  nixcache.closure.realise:
    paths: ["{{ postgres_store_path }}"]

- name: Make it the postgres user's profile (~postgres/.nix-profile)
  nixcache.closure.profile:
    user: postgres
    path: "{{ postgres_store_path }}"
    keep: 2

- name: Go back to the previous PostgreSQL
  nixcache.closure.profile:
    user: postgres
    state: rollback

- name: Several packages in one profile, as several nix profile install calls would make it
  nixcache.closure.profile:
    user: postgres
    paths:
      - "{{ postgres_store_path }}"
      - /nix/store/3m6ld6a0fkvq1bxr7gqmfd4y8cq9hgb1-pg_prove-3.36
      - /nix/store/xk1q7n2d8yhlm9rz7v9kb3c8d0q0pxwz-groonga-14.0.5
    priorities:
      /nix/store/xk1q7n2d8yhlm9rz7v9kb3c8d0q0pxwz-groonga-14.0.5: 6
    keep: 2

- name: A system profile
  nixcache.closure.profile:
    name: tools
    path: /nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-tools
'''

RETURN = r'''
profile:
  description: The profile path.
  returned: always
  type: str
  sample: /nix/var/nix/profiles/per-user/postgres/profile
target:
  description: The store path the profile points at now (null when absent).
  returned: always
  type: str
previous:
  description: The store path it pointed at before (null when it did not exist).
  returned: always
  type: str
generation:
  description: The current generation number (null when absent).
  returned: always
  type: int
generations:
  description: Every generation kept, oldest first, as C(number) and C(path).
  returned: always
  type: list
  elements: dict
  contains:
    number:
      description: The generation number.
      type: int
    path:
      description: The store path of the generation.
      type: str
elements:
  description: >-
    The packages of the profile's target: those of O(paths), or those the target's
    C(manifest.json) lists (empty for a target set with O(path)).
  returned: always
  type: list
  elements: dict
  version_added: 0.2.0
  contains:
    path:
      description: The store path of the package.
      type: str
    priority:
      description: Its priority (lower wins).
      type: int
    active:
      description: Whether it is linked into the environment.
      type: bool
pending:
  description: >-
    In check mode, store paths of O(path) or O(paths) that are not valid yet; the new target
    is then known only once they are realised, and RV(target) is null for O(paths).
  returned: always
  type: list
  elements: str
  version_added: 0.2.0
closure_diff:
  description: >-
    When the target changes: store paths C(added) to and C(removed) from the closure, and
    C(added_bytes), C(removed_bytes) (NAR sizes).
  returned: changed
  type: dict
  contains:
    added:
      description: Store paths the new closure adds.
      type: list
      elements: str
    removed:
      description: Store paths it no longer has.
      type: list
      elements: str
    added_bytes:
      description: NAR size of the paths added (paths still to be made count as 0).
      type: int
    removed_bytes:
      description: NAR size of the paths removed.
      type: int
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import failure
from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError, StoreError
from ansible_collections.nixcache.closure.plugins.module_utils.profiles import (
    PROFILES_DIR,
    Profile,
    apply,
)
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import user_entry
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.userenv import elements_from


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='str'),
            paths=dict(type='list', elements='str'),
            priorities=dict(type='dict', default={}),
            name=dict(type='str', default='profile'),
            user=dict(type='str'),
            profile=dict(type='path'),
            link=dict(type='path'),
            state=dict(type='str', choices=['present', 'rollback', 'absent'], default='present'),
            keep=dict(type='int', no_log=False),
            root=dict(type='path', default='/'),
        ),
        mutually_exclusive=[('path', 'paths')],
        required_if=[('state', 'present', ['path', 'paths'], True)],
        supports_check_mode=True,
    )
    params = module.params
    root, state = params['root'], params['state']
    try:
        owner = None
        if params['user']:
            try:
                owner = user_entry(root, params['user'])
            except KeyError as error:
                if not module.check_mode:  # a user made earlier in the same check run
                    raise StoreError('unknown user: %s' % error.args[0]) from error
        if params['profile']:
            profile_path = params['profile']
        elif params['user']:
            profile_path = '%s/per-user/%s/%s' % (PROFILES_DIR, params['user'], params['name'])
        else:
            profile_path = '%s/%s' % (PROFILES_DIR, params['name'])
        link = params['link'] or (os.path.join(owner[2], '.nix-profile') if owner else None)
        if params['paths'] is not None and not params['paths'] and state == 'present':
            raise StoreError('paths is empty: give at least one store path')
        elements = elements_from(params['paths'], params['priorities']) if params['paths'] else None
        path = StorePath.parse(params['path']) if params['path'] and state == 'present' else None
        profile = Profile(profile_path, root=root)
        with LocalStore(root=root, create=False) as store:
            result = apply(profile, store, state, path=path, elements=elements,
                           keep=params['keep'], link=link, owner=owner,
                           check_mode=module.check_mode)
    except (NixCacheError, OSError) as error:
        module.fail_json(**failure(error))
    for warning in result.pop('warnings'):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
