#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: cache_needs
short_description: Tell what a host lacks to realise store paths from its caches
version_added: 0.2.0
description:
  - Reads the C(.narinfo) files of the paths still to fetch (as M(nixcache.closure.realise)
    plans them in check mode) and returns what this host lacks to fetch them, and nothing
    else - C(boto3) when a cache is an C(s3://) bucket and boto3 cannot be imported,
    C(zstd) when a NAR is compressed with zstd and none of the system's zstd library
    (C(libzstd.so.1)), the C(zstandard) package and the C(zstd) program is there, C(brotli)
    for br.
  - While boto3 is missing the C(s3://) caches cannot be read, so RV(complete) is false and
    the compression methods are not known yet; ask again once boto3 is installed.
  - Changes nothing on the host.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
extends_documentation_fragment:
  - nixcache.closure.attributes
  - nixcache.closure.attributes.action_group
  - nixcache.closure.cache
options:
  paths:
    description: Store paths to be realised; only the part of their closure not yet valid counts.
    type: list
    elements: str
    default: []
  root:
    description: Alternate root of the store, as for M(nixcache.closure.realise).
    type: path
    default: /
attributes:
  check_mode:
    support: full
    details: Reads the caches and the host only.
  diff_mode:
    support: none
  idempotent:
    support: full
'''

EXAMPLES = r'''
- name: What does this host lack for the caches?
  nixcache.closure.cache_needs:
    paths: [/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8]
    substituters: [https://cache.example.org]
    trusted_public_keys: ["cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]
  register: needs

- name: Install the zstd program when a NAR needs it
  ansible.builtin.package:
    name: zstd
  when: "'zstd' in needs.missing"
'''

RETURN = r'''
missing:
  description: What the host lacks, among C(boto3), C(zstd) and C(brotli).
  returned: always
  type: list
  elements: str
  sample: [zstd]
compressions:
  description: The compression methods of the NARs still to fetch.
  returned: always
  type: list
  elements: str
  sample: [zstd]
complete:
  description: Whether every cache could be read (false while boto3 is missing for an C(s3://) cache).
  returned: always
  type: bool
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.closure import plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.common import (
    cache_argument_spec,
    caches_from_options,
    module_errors,
    parse_store_paths,
)
from ansible_collections.nixcache.closure.plugins.module_utils.host_needs import (
    compression_needs,
    scheme_needs,
)
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore


def main():
    module = AnsibleModule(
        argument_spec=cache_argument_spec(
            paths=dict(type='list', elements='str', default=[]),
            root=dict(type='path', default='/'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    result = dict(changed=False, missing=[], compressions=[], complete=True)
    with module_errors(module):
        requested = parse_store_paths(params['paths'])
        if requested:
            caches, trusted_keys = caches_from_options(params, root=params['root'], probe=False)
            result['missing'] = scheme_needs([cache.url for cache in caches])
            if result['missing']:
                result['complete'] = False
                module.exit_json(**result)
            caches, trusted_keys = caches_from_options(params, root=params['root'])
            with LocalStore(root=params['root'], create=False) as store:
                plan = plan_closure(requested, caches, trusted_keys,
                                    present=store.valid_subset,
                                    require_sigs=params['require_sigs'])
            methods = sorted(set(item.narinfo.compression or 'none' for item in plan.to_fetch))
            result['compressions'] = methods
            result['missing'] = compression_needs(methods)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
