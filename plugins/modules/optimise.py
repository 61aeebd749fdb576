#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: optimise
short_description: Hard-link identical files of a Nix store, as nix-store --optimise does, without Nix
version_added: 0.2.0
description:
  - Replaces every file of the store that is identical to another by a hard link to one
    shared copy, as C(nix-store --optimise) does, on hosts that have no Nix installed. An
    image whose store holds several versions of an extension, or two PostgreSQL majors,
    then stores each identical file once.
  - Files count as identical when their NAR serialisations are (the contents and the
    executable bit). The shared copy is C(ROOT/nix/store/.links/<hash>), named by the
    SHA-256 of that serialisation as Nix names it, so a real Nix later sees the store as
    optimised and its garbage collector, like M(nixcache.closure.gc), removes links that
    nothing uses any more.
  - Each file is replaced atomically (a new link renamed over it), so a program reading
    the store meanwhile never misses a file; NarHashes do not change, and
    C(nix-store --verify --check-contents) stays clean.
  - Safe next to other work on the same store. It holds the garbage collector lock shared,
    as M(nixcache.closure.realise) does, so no collection runs meanwhile, and optimises
    each path under Nix's per-path lock.
  - When the file system's limit of links to one file is reached (65000 on ext4, often
    for empty files), the file is kept as a copy, as Nix keeps it.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
extends_documentation_fragment:
  - nixcache.closure.attributes
options:
  paths:
    description:
      - Only deduplicate these store paths and their closure (they must be valid). By
        default every valid path of the store is.
    type: list
    elements: str
  root:
    description:
      - The root of the system whose store is optimised (the store is C(ROOT/nix/store)),
        for example an image's volume mounted at C(/mnt).
    type: path
    default: /
attributes:
  check_mode:
    support: full
    details: Hashes the files and returns what a real run would link and save; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A second run finds every file linked already, and saves nothing.
notes:
  - It reads every file of the store once (a few seconds per GiB); the C(.links) entries of
    files already linked are recognised without reading them again.
  - M(nixcache.closure.realise) with O(nixcache.closure.realise#module:optimise=true)
    deduplicates the paths it fetches as they arrive.
seealso:
  - module: nixcache.closure.realise
  - module: nixcache.closure.gc
  - name: nix-store --optimise
    description: What Nix does, and this module does the same way.
    link: https://nix.dev/manual/nix/stable/command-ref/nix-store/optimise
'''

EXAMPLES = r'''
- name: Deduplicate the store of an image being built, before its snapshot
  nixcache.closure.optimise:
    root: /mnt
  register: optimised

- name: Report what it saved
  ansible.builtin.debug:
    msg: "{{ optimised.mb_saved }} MiB saved by linking {{ optimised.files_linked }} files"

- name: How much would deduplicating PostgreSQL's closure save?
  nixcache.closure.optimise:
    paths:
      - /nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8
  check_mode: true
  register: would
'''

RETURN = r'''
files_linked:
  description: Files replaced by a hard link (in check mode, that would be).
  returned: always
  type: int
  sample: 412
bytes_saved:
  description:
    - The sizes of those files in bytes, as C(nix-store --optimise) counts what it frees
      ("X MiB freed by hard-linking N files").
  returned: always
  type: int
  sample: 35123456
mb_saved:
  description: RV(bytes_saved) in MiB.
  returned: always
  type: float
  sample: 33.5
links_created:
  description: New entries in C(ROOT/nix/store/.links) (in check mode, that would be made).
  returned: always
  type: int
kept_at_link_limit:
  description: Files kept as copies because the file system's link limit was reached.
  returned: always
  type: int
skipped_writable:
  description:
    - Files left alone because their owner may write them (something changed the store; a
      warning names them).
  returned: always
  type: int
paths:
  description: How many store paths were walked.
  returned: always
  type: int
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import module_errors, parse_store_paths
from ansible_collections.nixcache.closure.plugins.module_utils.optimise import optimise_store


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type='list', elements='str'),
            root=dict(type='path', default='/'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    with module_errors(module):
        chosen = None if params['paths'] is None else parse_store_paths(params['paths'])
        savings = optimise_store(params['root'], chosen, check_mode=module.check_mode)
    for warning in savings.warnings:
        module.warn(warning)
    module.exit_json(changed=savings.changed, **savings.as_dict())


if __name__ == '__main__':
    main()
