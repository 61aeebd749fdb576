"""The controller-side lookups, run by ansible-playbook against a loopback HTTP cache."""

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.hashes import parse_hash
from nixtest import interpreters
from nixtest.ansible import run_playbook

LOOKUPS = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: One narinfo
      ansible.builtin.set_fact:
        info: "{{ lookup('nixcache.closure.narinfo', top, substituters=[url], trusted_public_keys=[key]) }}"
      register: narinfo_lookup
    - name: The closure
      ansible.builtin.set_fact:
        closure: "{{ lookup('nixcache.closure.closure', top, substituters=[url], trusted_public_keys=[key]) }}"
      register: closure_lookup
'''


def test_narinfo_and_closure_lookups(caches, small_closure, http_cache):
    url, key = http_cache.url_for('xz'), caches['xz'].public_key
    result = run_playbook(LOOKUPS, extra_vars=dict(url=url, key=key, top=small_closure.top))
    result.assert_ok()
    info = result.registered('narinfo_lookup')['ansible_facts']['info']
    expected = small_closure.infos[small_closure.top]
    assert info['store_path'] == small_closure.top
    assert parse_hash(info['nar_hash']) == parse_hash(expected['narHash'])  # Nix prints SRI
    assert info['nar_size'] == expected['narSize']
    assert sorted(info['references']) == sorted(expected['references'])
    assert info['signed_by'] == 'nixtest-trusted-1' and info['cache'] == url

    closure = result.registered('closure_lookup')['ansible_facts']['closure']
    assert sorted(entry['path'] for entry in closure['paths']) == sorted(small_closure.paths)
    assert closure['nar_bytes'] == small_closure.nar_size
    position = dict((entry['path'], n) for n, entry in enumerate(closure['paths']))
    for entry in closure['paths']:   # references first
        assert all(position[ref] <= position[entry['path']] for ref in entry['references'])


@pytest.mark.parametrize('key_kind', ['untrusted', 'malformed'])
def test_lookup_fails_with_the_reason(key_kind, caches, small_closure, http_cache, nix_keys):
    key = nix_keys.untrusted.public if key_kind == 'untrusted' else nix_keys.trusted.public + '%'
    result = run_playbook(LOOKUPS, extra_vars=dict(url=http_cache.url_for('xz'), key=key,
                                                   top=small_closure.top))
    result.assert_failed()
    reason = 'no signature' if key_kind == 'untrusted' else 'not valid base64'
    assert reason in result.stdout + result.stderr


PLAY_VARIABLES = '''
- hosts: localhost
  gather_facts: false
  vars:
    nixcache_substituters: ["{{ url }}"]
    nixcache_trusted_public_keys: ["{{ key }}"]
  tasks:
    - name: One narinfo, the caches from the play's variables
      ansible.builtin.set_fact:
        info: "{{ lookup('nixcache.closure.narinfo', top) }}"
      register: narinfo_lookup
'''

ENVIRONMENT = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: One narinfo, the caches from the controller's environment
      ansible.builtin.set_fact:
        info: "{{ lookup('nixcache.closure.narinfo', top) }}"
      register: narinfo_lookup
'''


@pytest.mark.parametrize('controller', ('default',) + interpreters.CONTROLLERS)
@pytest.mark.parametrize('source', ['play variables', 'environment'])
def test_lookup_takes_cache_options_from_variables_or_environment(source, controller, caches, small_closure):
    ansible_playbook = interpreters.controller_playbook(controller)
    url, key = caches['xz'].url, caches['xz'].public_key
    if source == 'play variables':
        result = run_playbook(PLAY_VARIABLES, extra_vars=dict(url=url, key=key, top=small_closure.top),
                              ansible_playbook=ansible_playbook)
    else:
        result = run_playbook(ENVIRONMENT, extra_vars=dict(top=small_closure.top), ansible_playbook=ansible_playbook,
                              env=dict(NIXCACHE_SUBSTITUTERS=url, NIXCACHE_TRUSTED_PUBLIC_KEYS=key))
    result.assert_ok()
    info = result.registered('narinfo_lookup')['ansible_facts']['info']
    assert info['cache'] == url and info['signed_by'] == 'nixtest-trusted-1'


def test_lookup_keyword_wins_over_play_variable(caches, small_closure, http_cache, nix_keys):
    play = PLAY_VARIABLES.replace("lookup('nixcache.closure.narinfo', top)",
                                  "lookup('nixcache.closure.narinfo', top, trusted_public_keys=[untrusted])")
    result = run_playbook(play, extra_vars=dict(url=http_cache.url_for('xz'), key=caches['xz'].public_key,
                                                untrusted=nix_keys.untrusted.public, top=small_closure.top))
    result.assert_failed()
    assert 'no signature' in result.stdout + result.stderr


def test_module_defaults_group_sets_cache_options(caches, small_closure, alt_root):
    play = '''
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/nixcache.closure.cache:
      substituters: ["{{ url }}"]
      trusted_public_keys: ["{{ key }}"]
  tasks:
    - name: Realise with the group's cache options
      nixcache.closure.realise:
        paths: ["{{ top }}"]
        root: "{{ root }}"
      register: realised
'''
    cache = caches['zstd']
    result = run_playbook(play, extra_vars=dict(url=cache.url, key=cache.public_key,
                                                top=small_closure.top, root=str(alt_root)))
    result.assert_ok()
    assert sorted(result.registered('realised')['fetched']) == sorted(small_closure.paths)


def test_cache_info_probes_every_cache(caches, small_closure, http_cache, nix_keys):
    import socket
    with socket.socket() as spare:
        spare.bind(('127.0.0.1', 0))
        dead = 'http://127.0.0.1:%d' % spare.getsockname()[1]
    missing = '/nix/store/' + '0' * 32 + '-not-pushed'
    play = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Probe
      ansible.builtin.set_fact:
        probes: "{{ query('nixcache.closure.cache_info', url, dead, paths=[top, missing],
                          trusted_public_keys=[key], retries=0, timeout=2) }}"
      register: probed
'''
    url = http_cache.url_for('xz')
    result = run_playbook(play, extra_vars=dict(url=url, dead=dead, top=small_closure.top,
                                                missing=missing, key=caches['xz'].public_key))
    result.assert_ok()
    live, gone = result.registered('probed')['ansible_facts']['probes']
    assert live['url'] == url and live['reachable'] is True and live['store_dir_matches'] is True
    assert live['priority'] == 40 and live['want_mass_query'] is True
    assert live['paths'][small_closure.top]['present'] is True
    assert live['paths'][small_closure.top]['signed_by'] == nix_keys.trusted.name
    assert live['paths'][missing] == dict(present=False, signed_by=None, nar_size=None)
    assert gone['reachable'] is False and gone['url'] == dead and 'refused' in gone['error'].lower()
