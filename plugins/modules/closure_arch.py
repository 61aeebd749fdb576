#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: closure_arch
short_description: Refuse a closure built for another architecture than the host's
version_added: 0.2.0
description:
  - Reads the ELF headers of the realised closure of O(paths) (the first program or library
    of each store path) and fails, naming both architectures and the file, when any of them
    does not run on this host (an C(aarch64-linux) build on an C(x86_64) host, for example).
    Run it after M(nixcache.closure.realise) and before switching a profile, so that a wrong
    pin never becomes the active profile.
  - Paths without ELF files (scripts, data) are accepted. C(i686) code counts as running on
    C(x86_64) hosts.
  - Changes nothing on the host.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
extends_documentation_fragment:
  - nixcache.closure.attributes
options:
  paths:
    description: Realised store paths; their closure (from the Nix database) is checked.
    type: list
    elements: str
    required: true
  architecture:
    description:
      - The machine the closure must run on, as C(uname -m) names it (C(x86_64), C(aarch64);
        C(arm64) and C(amd64) are understood).
      - Default the host's own.
    type: str
  root:
    description: Alternate root of the store, as for M(nixcache.closure.realise).
    type: path
    default: /
attributes:
  check_mode:
    support: full
    details: Reads the store only.
  diff_mode:
    support: none
  idempotent:
    support: full
'''

EXAMPLES = r'''
- name: Refuse a closure built for another architecture
  nixcache.closure.closure_arch:
    paths: [/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8]
'''

RETURN = r'''
architecture:
  description: The machine the closure was checked against.
  returned: always
  type: str
  sample: x86_64
architectures:
  description: Each store path of the closure with an ELF file, and its machine.
  returned: always
  type: dict
  sample: {/nix/store/6jsbyzk0x1lmj2jwh0sj0pd4mfpzi5c9-glibc-runtime: x86_64}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.architecture import (
    check_closure,
    host_machine,
    normalise,
    path_architecture,
)
from ansible_collections.nixcache.closure.plugins.module_utils.common import (
    module_errors,
    parse_store_paths,
)
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type='list', elements='str', required=True),
            architecture=dict(type='str'),
            root=dict(type='path', default='/'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    host = normalise(params['architecture']) if params['architecture'] else host_machine()
    found = {}
    with module_errors(module, architecture=host):
        requested = parse_store_paths(params['paths'])
        with LocalStore(root=params['root'], create=False) as store:
            closure = store.closure(requested) | set(
                path for path in requested if store.exists(path))
            for store_path in closure:
                machine, where = path_architecture(store.real_path(store_path))
                if machine:
                    shown = str(store_path) + where[len(store.real_path(store_path)):]
                    found[str(store_path)] = (machine, shown)
        check_closure(found, host, ', '.join(str(path) for path in requested))
    module.exit_json(changed=False, architecture=host,
                     architectures=dict((path, machine) for path, (machine, where) in found.items()))


if __name__ == '__main__':
    main()
