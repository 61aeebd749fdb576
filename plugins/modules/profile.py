#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: profile
short_description: Point a Nix profile at a store path, with generations and rollback, without Nix
version_added: 0.1.0
description:
  - Makes a Nix profile (C(/nix/var/nix/profiles/NAME), a per-user profile, or any path) point at
    a store path the way C(nix-env --set) does, so that a real Nix sees the same generations.
  - Each switch adds a numbered generation C(NAME-N-link) and replaces the profile link
    atomically. The generations are garbage-collector roots, so C(nix-collect-garbage) keeps the
    closure of every generation kept.
  - The store path must already be valid in the store (see M(nixcache.closure.realise)).
  - On a switch, returns the closure difference between the old and the new target.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host (tested on CPython 3.8 to 3.13); the standard
    library is enough.
options:
  path:
    description:
      - The store path the profile should point at. Required with O(state=present).
    type: str
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
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The diff shows the old and the new target of the profile.
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
closure_diff:
  description: >-
    When the target changes: store paths C(added) to and C(removed) from the closure, and
    C(added_bytes), C(removed_bytes) (NAR sizes).
  returned: changed
  type: dict
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import failure
from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError, StoreError
from ansible_collections.nixcache.closure.plugins.module_utils.profiles import (
    PROFILES_DIR,
    Profile,
    store_path_of,
)
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root, user_entry
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath


def closure_diff(store, before, after):
    old = store.closure([before]) if before else set()
    new = store.closure([after]) if after else set()

    def size(paths):
        return sum((store.path_info(path) or {}).get('nar_size') or 0 for path in paths)

    added, removed = sorted(new - old), sorted(old - new)
    return dict(added=[str(p) for p in added], removed=[str(p) for p in removed],
                added_bytes=size(added), removed_bytes=size(removed))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='str'),
            name=dict(type='str', default='profile'),
            user=dict(type='str'),
            profile=dict(type='path'),
            link=dict(type='path'),
            state=dict(type='str', choices=['present', 'rollback', 'absent'], default='present'),
            keep=dict(type='int', no_log=False),
            root=dict(type='path', default='/'),
        ),
        required_if=[('state', 'present', ['path'])],
        supports_check_mode=True,
    )
    params = module.params
    root, state = params['root'], params['state']
    try:
        try:
            owner = user_entry(root, params['user']) if params['user'] else None
        except KeyError as error:
            raise StoreError('unknown user: %s' % error.args[0])
        if params['profile']:
            profile_path = params['profile']
        elif params['user']:
            profile_path = '%s/per-user/%s/%s' % (PROFILES_DIR, params['user'], params['name'])
        else:
            profile_path = '%s/%s' % (PROFILES_DIR, params['name'])
        link = params['link'] or (os.path.join(owner[2], '.nix-profile') if owner else None)
        profile = Profile(profile_path, root=root)
        with LocalStore(root=root, create=False) as store:
            result = apply(module, profile, store, state, params, link, owner)
    except (NixCacheError, OSError) as error:
        module.fail_json(**failure(error))
    module.exit_json(**result)


def apply(module, profile, store, state, params, link, owner):
    previous = profile.current_target()
    wanted = previous
    if state == 'present':
        wanted_path = StorePath.parse(params['path'])
        if not store.is_valid(wanted_path):
            raise StoreError('the store path is not valid in the store: realise it first',
                             path=str(wanted_path))
        wanted = str(wanted_path)
    elif state == 'rollback':
        wanted = profile.generations()[profile.previous_generation()]
    else:
        wanted = None

    real_link = under_root(profile.root, link) if link else None
    link_ok = (real_link is None or state == 'absent' and not os.path.lexists(real_link)
               or state != 'absent' and os.path.islink(real_link)
               and os.readlink(real_link) == profile.path)
    too_many = (state == 'present' and params['keep'] is not None
                and len(profile.generations()) - 1 > params['keep'])
    changed = wanted != previous or not link_ok or too_many or (
        state == 'absent' and bool(profile.generations()))

    if changed and not module.check_mode:
        if state == 'present':
            profile.switch_to(StorePath.parse(wanted), keep=params['keep'])
        elif state == 'rollback':
            profile.rollback()
        else:
            profile.remove()
        if real_link:
            if state == 'absent':
                if os.path.islink(real_link):
                    os.unlink(real_link)
            elif not link_ok:
                if os.path.lexists(real_link) and not os.path.islink(real_link):
                    raise StoreError('refusing to replace a file or directory with the profile link',
                                     path=link)
                if not os.path.isdir(os.path.dirname(real_link)):
                    os.makedirs(os.path.dirname(real_link), 0o755)
                temporary = real_link + '.tmp-link'
                if os.path.lexists(temporary):
                    os.unlink(temporary)
                os.symlink(profile.path, temporary)
                os.rename(temporary, real_link)
        if owner and state != 'absent':
            chown_profile(profile, real_link, owner)

    generations = profile.generations()
    result = dict(changed=changed, profile=profile.path, target=wanted, previous=previous,
                  generation=profile.current(),
                  generations=[dict(number=n, path=generations[n]) for n in sorted(generations)])
    if wanted != previous:
        result['closure_diff'] = closure_diff(store, store_path_of(previous),
                                              store_path_of(wanted))
        result['diff'] = dict(before='%s -> %s\n' % (profile.path, previous),
                              after='%s -> %s\n' % (profile.path, wanted))
    return result


def chown_profile(profile, real_link, owner):
    """A per-user profile belongs to its user: its directory and links (never their targets)."""
    uid, gid = owner[0], owner[1]
    os.chown(profile.real_directory, uid, gid)
    names = [profile.name] + [profile.generation_link(n) for n in profile.generations()]
    for name in names:
        os.lchown(os.path.join(profile.real_directory, name), uid, gid)
    if real_link:
        os.lchown(real_link, uid, gid)


if __name__ == '__main__':
    main()
