# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
name: pins
short_description: Store paths pinned for each system, from a JSON release manifest
version_added: 0.2.0
description:
  - Reads a release manifest (a JSON file a CI job writes after building a release on each
    architecture) and returns the store path of each named package for one system, such as
    C(x86_64-linux) or C(aarch64-linux), so that a playbook or a Packer build picks the right
    paths for the host it provisions.
  - 'The manifest: C({"version": 1, "packages": {NAME: {SYSTEM: STORE_PATH, ...}, ...}}).'
  - The manifest may be a local file (a path or C(file://)), an C(https://) or C(http://) URL or an
    C(s3://bucket/key) object. It is read with the same clients as the caches, so the
    credential, certificate and S3 options of the C(cache) fragment apply to it; the options
    about substituters and keys are not used. The store paths themselves are checked for
    signatures when they are realised.
  - Runs on the controller.
author:
  - nixcache.closure maintainers (@nixcache)
extends_documentation_fragment:
  - nixcache.closure.cache
  - nixcache.closure.cache.plugins
options:
  _terms:
    description: Package names, as the manifest lists them.
    type: list
    elements: str
    required: true
  manifest:
    description: Where the release manifest is (a file path, C(file://), C(https://) or C(s3://) URL).
    type: str
    required: true
  system:
    description:
      - The Nix system to pick, for example C(x86_64-linux) or C(aarch64-linux).
      - By default the system of the host the task runs for, from its gathered
        C(ansible_facts.architecture) (C(x86_64) gives C(x86_64-linux), C(aarch64) gives
        C(aarch64-linux)); without facts, set it.
    type: str
'''

EXAMPLES = r'''
- name: PostgreSQL and pg_prove as built for this host's architecture
  ansible.builtin.include_role:
    name: nixcache.closure.postgres
  vars:
    postgres_store_path: "{{ lookup('nixcache.closure.pins', 'psql_15', manifest=release_manifest) }}"
    postgres_packages: "{{ query('nixcache.closure.pins', 'pg_prove', manifest=release_manifest) }}"
    release_manifest: https://releases.example.org/postgres/15.8/pins.json

- name: The aarch64 build, from a private bucket (for a Packer build of an arm64 AMI)
  ansible.builtin.set_fact:
    postgres_store_path: >-
      {{ lookup('nixcache.closure.pins', 'psql_15', system='aarch64-linux',
                manifest='s3://example-releases/postgres/15.8/pins.json?region=eu-west-1') }}
'''

RETURN = r'''
_raw:
  description: One store path per package name, in the order asked.
  type: list
  elements: str
  sample: [/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8]
'''

from ansible.errors import AnsibleLookupError

from ansible_collections.nixcache.closure.plugins.module_utils.common import client_options
from ansible_collections.nixcache.closure.plugins.module_utils.pins import (
    nix_system,
    pin,
    read_manifest,
)
from ansible_collections.nixcache.closure.plugins.plugin_utils.cache_lookup import (
    CacheLookupBase,
    lookup_errors,
)


class LookupModule(CacheLookupBase):

    def run(self, terms, variables=None, **kwargs):
        options = self.cache_options(variables, kwargs)
        manifest = self.get_option('manifest')
        system = self.get_option('system') or self._host_system(variables or {})
        with lookup_errors():
            pins = read_manifest(manifest, client_options(options))
            return [str(pin(pins, package, system, manifest)) for package in terms]

    @staticmethod
    def _host_system(variables):
        facts = variables.get('ansible_facts') or {}
        architecture = facts.get('architecture') or variables.get('ansible_architecture')
        system = nix_system(architecture, facts.get('system') or 'linux')
        if system is None:
            raise AnsibleLookupError(
                'no system given and none known for this host (architecture: %s): set system, '
                'for example system=x86_64-linux, or gather facts' % (architecture or 'not gathered'))
        return system
