# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
name: cache_info
short_description: Probe Nix binary caches before using them
version_added: 0.1.0
description:
  - Asks each cache for its C(nix-cache-info) and reports whether it answered, how fast, its
    C(StoreDir) and C(Priority), and, for the store paths given in O(paths), whether the cache
    holds a copy signed by a trusted key.
  - Meant for pre-flight checks in playbooks and Packer builds, so that a missing path or an
    unreachable cache fails early with a clear message.
  - Never fails for a cache that does not answer; it reports it.
author:
  - nixcache.closure maintainers (@nixcache)
extends_documentation_fragment:
  - nixcache.closure.cache
  - nixcache.closure.cache.plugins
options:
  _terms:
    description: Cache URLs to probe. When none are given, O(substituters) (or C(nix.conf)) are used.
    type: list
    elements: str
    required: false
  paths:
    description: Store paths to look for in every cache.
    type: list
    elements: str
    default: []
'''

EXAMPLES = r'''
- name: Fail early when the cache lacks the PostgreSQL closure's top path
  ansible.builtin.assert:
    that: probe.reachable and probe.paths[postgres_store_path].present
    fail_msg: "{{ probe.url }}: {{ probe.error | default('path missing') }}"
  vars:
    probe: "{{ lookup('nixcache.closure.cache_info', 'https://cache.example.org',
                      paths=[postgres_store_path], trusted_public_keys=nix_trusted_keys) }}"
'''

RETURN = r'''
_raw:
  description: One dictionary per cache, in the order probed.
  type: list
  elements: dict
  contains:
    url:
      description: The cache URL.
      type: str
    reachable:
      description: Whether the cache answered.
      type: bool
    error:
      description: Why the cache did not answer (only when RV(_raw[].reachable) is false).
      type: str
    seconds:
      description: How long the C(nix-cache-info) request took.
      type: float
    store_dir:
      description: The cache's C(StoreDir).
      type: str
    store_dir_matches:
      description: Whether C(StoreDir) is C(/nix/store), the store the modules fill.
      type: bool
    priority:
      description: The cache's C(Priority) (lower is preferred; 50 when not given).
      type: int
    want_mass_query:
      description: The cache's C(WantMassQuery).
      type: bool
    paths:
      description: >-
        For each path of O(paths): C(present) (the cache has a narinfo), C(signed_by) (the trusted
        key that signed it, or null) and C(nar_size); C(error) when the narinfo is unusable.
      type: dict
'''

import time

from ansible_collections.nixcache.closure.plugins.module_utils.common import parse_store_paths
from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError
from ansible_collections.nixcache.closure.plugins.module_utils.signing import verify_narinfo
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import DEFAULT_PRIORITY
from ansible_collections.nixcache.closure.plugins.plugin_utils.cache_lookup import (
    CacheLookupBase,
    lookup_errors,
)


class LookupModule(CacheLookupBase):

    def run(self, terms, variables=None, **kwargs):
        options = self.cache_options(variables, kwargs)
        if terms:
            options['substituters'] = list(terms)
        with lookup_errors():
            caches, trusted_keys = self.caches(options, probe=False)
            paths = parse_store_paths(self.get_option('paths'))
        return [probe(cache, paths, trusted_keys) for cache in caches]


def probe(cache, paths, trusted_keys):
    result = dict(url=cache.url, reachable=False, paths={})
    started = time.monotonic()
    try:
        info = cache.cache_info()
    except NixCacheError as error:
        result.update(error=error.message, seconds=round(time.monotonic() - started, 3))
        return result
    store_dir = info.get('StoreDir', STORE_DIR)
    result.update(reachable=True, seconds=round(time.monotonic() - started, 3),
                  store_dir=store_dir, store_dir_matches=store_dir == STORE_DIR,
                  priority=cache.priority() if 'Priority' in info else DEFAULT_PRIORITY,
                  want_mass_query=info.get('WantMassQuery') == '1')
    for path in paths:
        entry = dict(present=False, signed_by=None, nar_size=None)
        try:
            narinfo = cache.narinfo(path)
            if narinfo is not None:
                entry.update(present=True, nar_size=narinfo.nar_size)
                entry['signed_by'] = verify_narinfo(narinfo, trusted_keys)
        except NixCacheError as error:
            entry['error'] = error.message
        result['paths'][str(path)] = entry
    return result
