# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
name: closure
short_description: The closure of Nix store paths in a binary cache, with sizes and totals
version_added: 0.1.0
description:
  - Walks the closure of the given store paths through the caches' C(.narinfo) files (checking
    signatures like M(nixcache.closure.realise) does) and returns every path with its sizes,
    plus totals. Nothing is downloaded but C(.narinfo) files.
  - Use it to report what an image will contain, or to fail early when a cache lacks a path.
  - Runs on the controller.
author:
  - nixcache.closure maintainers (@nixcache)
extends_documentation_fragment:
  - nixcache.closure.cache
  - nixcache.closure.cache.plugins
options:
  _terms:
    description: Store paths; the result is the closure of all of them together.
    type: list
    elements: str
    required: true
  jobs:
    description: How many C(.narinfo) files to fetch at the same time.
    type: int
    default: 8
'''

EXAMPLES = r'''
- name: Report how much PostgreSQL will add to the image
  ansible.builtin.debug:
    msg: "{{ pg.paths | length }} paths, {{ pg.nar_mb }} MiB unpacked, {{ pg.download_mb }} MiB to download"
  vars:
    pg: "{{ lookup('nixcache.closure.closure', postgres_store_path,
                   substituters=nix_caches, trusted_public_keys=nix_trusted_keys) }}"
'''

RETURN = r'''
_raw:
  description: One dictionary describing the closure of all terms.
  type: list
  elements: dict
  contains:
    paths:
      description: Every path of the closure (references first), with C(path), C(nar_size),
        C(file_size), C(nar_hash), C(references), C(cache) and C(signed_by).
      type: list
      elements: dict
    nar_bytes:
      description: Total unpacked size in bytes.
      type: int
    download_bytes:
      description: Total compressed size in bytes, as the caches announce it.
      type: int
    nar_mb:
      description: RV(_raw[].nar_bytes) in MiB.
      type: float
    download_mb:
      description: RV(_raw[].download_bytes) in MiB.
      type: float
'''

from ansible_collections.nixcache.closure.plugins.module_utils.closure import plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.common import parse_store_paths
from ansible_collections.nixcache.closure.plugins.plugin_utils.cache_lookup import (
    CacheLookupBase,
    lookup_errors,
)

MIB = 1024.0 * 1024.0


class LookupModule(CacheLookupBase):

    def run(self, terms, variables=None, **kwargs):
        options = self.cache_options(variables, kwargs)
        with lookup_errors():
            caches, trusted_keys = self.caches(options)
            plan = plan_closure(parse_store_paths(terms), caches, trusted_keys,
                                require_sigs=options['require_sigs'], jobs=self.get_option('jobs'))
        paths = []
        for item in plan.to_fetch:
            entry = item.as_dict()
            entry['path'] = entry.pop('store_path')
            paths.append(entry)
        return [dict(paths=paths,
                     nar_bytes=plan.unpacked_bytes,
                     download_bytes=plan.download_bytes,
                     nar_mb=round(plan.unpacked_bytes / MIB, 2),
                     download_mb=round(plan.download_bytes / MIB, 2))]
