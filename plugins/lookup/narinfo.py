# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
name: narinfo
short_description: The parsed and verified C(.narinfo) of Nix store paths
version_added: 0.1.0
description:
  - Reads the C(.narinfo) of each store path from the first cache that has a trustworthy copy,
    checks it describes that path and (unless O(require_sigs=false)) that a trusted key signed
    it, and returns its fields.
  - Runs on the controller.
author:
  - nixcache.closure maintainers (@nixcache)
extends_documentation_fragment:
  - nixcache.closure.cache
  - nixcache.closure.cache.plugins
options:
  _terms:
    description: Store paths.
    type: list
    elements: str
    required: true
'''

EXAMPLES = r'''
- name: Show how big PostgreSQL is in the cache
  ansible.builtin.debug:
    msg: "{{ info.nar_size }} bytes, signed by {{ info.signed_by }}"
  vars:
    info: "{{ lookup('nixcache.closure.narinfo', postgres_store_path,
                     substituters=['https://cache.example.org'],
                     trusted_public_keys=['cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=']) }}"
'''

RETURN = r'''
_raw:
  description: One dictionary per store path.
  type: list
  elements: dict
  contains:
    store_path:
      description: The store path.
      type: str
    url:
      description: Where the NAR lies, relative to the cache.
      type: str
    compression:
      description: How the NAR is compressed (C(xz), C(zstd), C(bzip2), C(none), ...).
      type: str
    file_hash:
      description: Hash of the compressed file, when the cache gives it.
      type: str
    file_size:
      description: Size of the compressed file, when the cache gives it.
      type: int
    nar_hash:
      description: Hash of the NAR as C(sha256:<nix base32>).
      type: str
    nar_size:
      description: Size of the NAR (the unpacked path) in bytes.
      type: int
    references:
      description: Store paths this path refers to.
      type: list
      elements: str
    deriver:
      description: The derivation that built the path, when known.
      type: str
    sigs:
      description: The signatures as given by the cache.
      type: list
      elements: str
    signed_by:
      description: Name of the trusted key whose signature verified (null without O(require_sigs)).
      type: str
    cache:
      description: The cache that answered.
      type: str
'''

from ansible_collections.nixcache.closure.plugins.module_utils.closure import find_narinfo
from ansible_collections.nixcache.closure.plugins.module_utils.common import parse_store_paths
from ansible_collections.nixcache.closure.plugins.plugin_utils.cache_lookup import (
    CacheLookupBase,
    lookup_errors,
)


class LookupModule(CacheLookupBase):

    def run(self, terms, variables=None, **kwargs):
        options = self.cache_options(variables, kwargs)
        with lookup_errors():
            caches, trusted_keys = self.caches(options)
            return [find_narinfo(store_path, caches, trusted_keys, options['require_sigs']).as_dict()
                    for store_path in parse_store_paths(terms)]
