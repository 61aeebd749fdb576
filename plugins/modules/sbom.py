#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: sbom
short_description: Write the SBOM of a closure in a host's Nix store (CycloneDX and SPDX)
version_added: 0.2.0
description:
  - Writes a software bill of materials of the closure of the given store paths, as it is
    in the host's Nix store, as CycloneDX (1.5 or 1.6) JSON and SPDX 2.3 JSON, for
    vulnerability scanners (grype, Dependency-Track) and security reviews. Returns the
    documents too.
  - One component (SPDX package) per store path, named and versioned as Nix splits the
    store path's name (C(postgresql-15.8) is C(postgresql) version C(15.8)), with its
    NarHash as its SHA-256 hash, a purl C(pkg:nix/NAME@VERSION) and a CPE; the store path,
    NarSize, references, deriver, signatures, content address and the cache it came from
    as C(nix:store_path), C(nix:narinfo:*) and C(nixcache:substituter) properties (SPDX
    annotations of the same names); the dependency graph from the references; the top
    paths, the tool and the timestamp as the document's metadata.
  - The facts come from the Nix database; the cache of each path from the receipts
    M(nixcache.closure.realise) left. The P(nixcache.closure.sbom#lookup) lookup writes the
    same document, byte for byte, from the caches alone before anything is built.
  - A document is rewritten only when it changes. Without O(timestamp), an unchanged
    closure keeps the document's earlier time, so a re-run changes nothing.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
extends_documentation_fragment:
  - nixcache.closure.attributes
  - nixcache.closure.sbom
options:
  paths:
    description:
      - The top store paths; the document covers their closure. They must be valid.
      - Default, the paths of every receipt under O(root) that are still valid, so everything
        M(nixcache.closure.realise) put on the host (an image's SBOM).
    type: list
    elements: str
  formats:
    description: The documents to write.
    type: list
    elements: str
    choices: [cyclonedx, spdx]
    default: [cyclonedx, spdx]
  dest:
    description:
      - The directory the documents are written to, as C(NAME.cdx.json) (CycloneDX) and
        C(NAME.spdx.json) (SPDX) with NAME from O(name). It is created if missing.
      - Default, C(/nix/var/nixcache/sbom) under O(root), beside the receipts.
    type: path
  root:
    description:
      - The root of the system whose store is described (the store is C(ROOT/nix/store)).
    type: path
    default: /
attributes:
  check_mode:
    support: full
    details: Reports whether the documents would change and writes nothing. Paths that are
      not valid yet (a preceding realise would fetch them) are returned as RV(pending).
  diff_mode:
    support: full
  idempotent:
    support: full
seealso:
  - plugin: nixcache.closure.sbom
    plugin_type: lookup
  - module: nixcache.closure.realise
  - module: nixcache.closure.store_info
'''

EXAMPLES = r'''
- name: The SBOM of everything realise put on this image, beside the receipts
  nixcache.closure.sbom:
    name: image
  register: sbom

- name: A reproducible CycloneDX 1.5 document of the PostgreSQL closure
  nixcache.closure.sbom:
    paths: ["{{ postgres_store_path }}"]
    formats: [cyclonedx]
    cyclonedx_version: "1.5"
    timestamp: "2026-01-31T00:00:00Z"
    dest: /var/lib/sbom

- name: Bring the documents back
  ansible.builtin.fetch:
    src: "{{ item }}"
    dest: "sbom/{{ inventory_hostname }}/"
    flat: true
  loop: "{{ sbom.files.values() | list }}"
'''

RETURN = r'''
files:
  description: The document files, by format (also in check mode, where they would be written).
  returned: unless pending
  type: dict
  sample: {cyclonedx: /nix/var/nixcache/sbom/image.cdx.json, spdx: /nix/var/nixcache/sbom/image.spdx.json}
written:
  description: The files written (in check mode, that would be).
  returned: always
  type: list
  elements: str
documents:
  description: The documents, by format, as written.
  returned: unless pending
  type: dict
top_paths:
  description: The top paths the documents describe, sorted.
  returned: always
  type: list
  elements: str
path_count:
  description: How many store paths the closure has (components in each document).
  returned: unless pending
  type: int
pending:
  description: In check mode, top paths not valid yet, so no document was made.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils import sbom
from ansible_collections.nixcache.closure.plugins.module_utils.common import module_errors, parse_store_paths
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore


def main():
    argument_spec = dict(
        paths=dict(type='list', elements='str'),
        formats=dict(type='list', elements='str', choices=list(sbom.FORMATS),
                     default=list(sbom.FORMATS)),
        dest=dict(type='path'),
        root=dict(type='path', default='/'),
    )
    argument_spec.update(sbom.DOCUMENT_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    with module_errors(module):
        options = sbom.options_from(params)
        tops = None if params['paths'] is None else parse_store_paths(params['paths'])
        directory = params['dest'] or under_root(params['root'], sbom.SBOM_DIR)
        with LocalStore(root=params['root'], create=False) as store:
            found = sbom.host_sbom(store, tops, params['formats'], directory, options,
                                   check_mode=module.check_mode)
        outputs = found.outputs
        if module.check_mode:
            written = [output.path for output in outputs if output.changed]
        else:
            written = sbom.write(outputs)
    result = dict(changed=bool(written) or not outputs, written=written,
                  top_paths=[str(path) for path in found.top_paths], pending=found.pending)
    if outputs:
        result.update(files=dict((output.fmt, output.path) for output in outputs),
                      documents=dict((output.fmt, output.document) for output in outputs),
                      path_count=len(found.records))
    if module._diff:
        result['diff'] = [dict(before_header=output.path, after_header=output.path,
                               before=(output.before or b'').decode('utf-8', 'replace'),
                               after=output.data.decode('utf-8'))
                          for output in outputs if output.changed]
    module.exit_json(**result)


if __name__ == '__main__':
    main()
