# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
name: sbom
short_description: The SBOM of a closure from the binary caches alone, before anything is built
version_added: 0.2.0
description:
  - Walks the closure of the given store paths through the caches' C(.narinfo) files (checking
    signatures as M(nixcache.closure.realise) does) and returns its SBOM as CycloneDX (1.5 or
    1.6) or SPDX 2.3 JSON text. Nothing is downloaded but C(.narinfo) files.
  - The text is byte for byte the file M(nixcache.closure.sbom) writes on a host where
    M(nixcache.closure.realise) put the same closure from the same caches, given the same
    O(name), O(timestamp), O(cyclonedx_version) and O(cpe_vendors). Pin O(timestamp) to
    review in CI the very document the image will carry.
  - Runs on the controller.
author:
  - nixcache.closure maintainers (@nixcache)
extends_documentation_fragment:
  - nixcache.closure.cache
  - nixcache.closure.cache.plugins
  - nixcache.closure.sbom
options:
  _terms:
    description: The top store paths; the document covers the closure of all of them.
    type: list
    elements: str
    required: true
  format:
    description: The document's format.
    type: str
    choices: [cyclonedx, spdx]
    default: cyclonedx
  jobs:
    description: How many C(.narinfo) files to fetch at the same time.
    type: int
    default: 8
notes:
  - A host's document names the cache of each path from its receipts. A path the host got
    in another way (a real Nix, a profile built on the host) has no cache there, so the
    documents then differ in that property.
seealso:
  - module: nixcache.closure.sbom
'''

EXAMPLES = r'''
- name: Review the image's SBOM in CI, before packer build
  ansible.builtin.copy:
    content: "{{ lookup('nixcache.closure.sbom', postgres_store_path, format='cyclonedx',
                        timestamp='2026-01-31T00:00:00Z',
                        substituters=nix_caches, trusted_public_keys=nix_trusted_keys) }}"
    dest: "{{ playbook_dir }}/postgres.cdx.json"
    mode: "0644"
  delegate_to: localhost
'''

RETURN = r'''
_raw:
  description: The document's JSON text (sorted keys, UTF-8, ending in a newline).
  type: list
  elements: str
'''

try:   # ansible-core before 2.19 turns text that looks like JSON into data, unless marked so
    from ansible.utils.native_jinja import NativeJinjaText as _Text
except ImportError:   # 2.19 and later keep a lookup's text as it is
    _Text = str

from ansible_collections.nixcache.closure.plugins.module_utils import sbom
from ansible_collections.nixcache.closure.plugins.module_utils.closure import plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.common import parse_store_paths
from ansible_collections.nixcache.closure.plugins.plugin_utils.cache_lookup import (
    CacheLookupBase,
    lookup_errors,
)


class LookupModule(CacheLookupBase):

    def run(self, terms, variables=None, **kwargs):
        options = self.cache_options(variables, kwargs)
        with lookup_errors():
            document_options = sbom.options_from(dict(
                (name, self.get_option(name)) for name in sbom.DOCUMENT_ARGUMENT_SPEC))
            tops = parse_store_paths(terms)
            if not tops:
                raise sbom.InvalidSbomOption('no store paths given')
            caches, trusted_keys = self.caches(options)
            plan = plan_closure(tops, caches, trusted_keys, require_sigs=options['require_sigs'],
                                jobs=self.get_option('jobs'))
            document = sbom.build(self.get_option('format'), sbom.records_from_plan(plan.to_fetch),
                                  tops, document_options)
        return [_Text(sbom.serialise(document).decode('utf-8'))]
