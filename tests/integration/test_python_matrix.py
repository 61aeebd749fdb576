"""The modules on every managed-host Python and under the oldest and newest controller.

Managed hosts: ``realise`` (an xz and a zstd cache), ``profile`` and ``link_tree`` run end
to end through ``ansible-playbook`` on each CPython from 3.8 to 3.13 found on the machine,
each with its standard library only: signatures and zstd through the system's libcrypto
and libzstd (``ctypes``).  A second run changes nothing, and real Nix verifies what
was written.

Controllers: the same play under the oldest ansible-core ``meta/runtime.yml`` claims and
the newest one the machine's Pythons support (``make controllers`` builds both).
"""
import os
import platform

import pytest
from ansible.release import __version__ as default_core_version

from nixtest import interpreters, nix
from nixtest.ansible import run_playbook

pytestmark = pytest.mark.slow

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: The Python that runs the modules
      ansible.builtin.setup:
        gather_subset: ['!all']
      register: facts

    - name: Realise from the xz cache
      nixcache.closure.realise:
        paths: ["{{ top }}"]
        root: "{{ root }}/xz"
        substituters: ["{{ xz_url }}"]
        trusted_public_keys: ["{{ key }}"]

    - name: Realise from the zstd cache
      nixcache.closure.realise:
        paths: ["{{ top }}"]
        root: "{{ root }}/zstd"
        substituters: ["{{ zstd_url }}"]
        trusted_public_keys: ["{{ key }}"]

    - name: Make it the default profile
      nixcache.closure.profile:
        root: "{{ root }}/xz"
        name: default
        path: "{{ top }}"

    - name: Link its programs
      nixcache.closure.link_tree:
        root: "{{ root }}/xz"
        source: /nix/var/nix/profiles/default/bin
        dest: /usr/local/bin

    - name: Describe the store
      nixcache.closure.store_info:
        root: "{{ root }}/xz"
        check_contents: true
      register: info

    - name: Collect garbage (the profile keeps everything)
      nixcache.closure.gc:
        root: "{{ root }}/xz"
        runtime_roots: false
      register: collected
'''

MANAGED_HOSTS = interpreters.managed_host_pythons()


def run_twice(root, caches, http_cache, small_closure, interpreter, ansible_playbook=None):
    """Run the play twice (xz over loopback HTTP, zstd from a file:// cache); return the
    module Python's version as the first run saw it."""
    extra_vars = dict(top=small_closure.top, root=str(root), key=caches['xz'].public_key,
                      xz_url=http_cache.url_for('xz'), zstd_url=caches['zstd'].url)
    inventory = 'host ansible_connection=local ansible_python_interpreter=%s\n' % interpreter
    first = run_playbook(PLAY, inventory, extra_vars=extra_vars,
                         ansible_playbook=ansible_playbook).assert_ok()
    assert first.changed_tasks() == ['Realise from the xz cache', 'Realise from the zstd cache',
                                     'Make it the default profile', 'Link its programs']
    again = run_playbook(PLAY, inventory, extra_vars=extra_vars,
                         ansible_playbook=ansible_playbook).assert_ok()
    assert again.changed_tasks() == []

    for compression in ('xz', 'zstd'):
        store = root / compression
        assert nix.verify_store(str(store)) == []
        assert sorted(nix.valid_paths(str(store))) == small_closure.paths
        assert nix.unregistered_entries(str(store)) == []
    info = again.registered('info')
    assert info['consistency']['ok'] is True and info['path_count'] == len(small_closure.paths)
    assert first.registered('collected')['deleted'] == []
    assert first.registered('collected')['alive'] == len(small_closure.paths)
    link = root / 'xz/usr/local/bin/small-hello'
    assert os.readlink(str(link)) == '/nix/var/nix/profiles/default/bin/small-hello'
    python = first.registered('facts')['ansible_facts']['ansible_python']
    return '%d.%d.%d' % tuple(python['version_info'][:3]), python['executable']


@pytest.mark.parametrize('version, python', MANAGED_HOSTS,
                         ids=['python%d.%d' % v[:2] for v, path in MANAGED_HOSTS])
def test_modules_on_a_bare_managed_host_python(version, python, caches, http_cache,
                                               small_closure, tmp_path):
    interpreter = interpreters.bare(version, python)
    ran, executable = run_twice(tmp_path, caches, http_cache, small_closure, interpreter)
    assert ran == '%d.%d.%d' % version
    assert executable == interpreter
    interpreters.RAN['managed host python%d.%d' % version[:2]] = '%s (from %s), standard library only' % (ran, python)
    interpreters.RAN.setdefault('controller default', 'ansible-core %s on Python %s' % (
        default_core_version, platform.python_version()))


def test_every_supported_managed_host_python_was_found():
    """Which Pythons ran depends on the machine; Debian's own is always among them."""
    found = {version[:2] for version, path in MANAGED_HOSTS}
    assert (3, 11) in found
    missing = [v for v in interpreters.MANAGED_HOST_VERSIONS if v not in found]
    if missing:
        interpreters.RAN['managed host (not on this machine)'] = ', '.join(
            'python%d.%d' % v for v in missing)


@pytest.mark.parametrize('name', interpreters.CONTROLLERS)
def test_modules_under_the_oldest_and_newest_controller(name, caches, http_cache, small_closure,
                                                        tmp_path):
    found = interpreters.controller(name)
    if found is None:
        message = 'no %s controller: run `make controllers`' % name
        if os.environ.get('NIXTEST_STRICT'):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    ansible_playbook, core_version, controller_python = found
    # The managed host: Debian's own Python, bare.
    host = interpreters.bare(interpreters.version_of('/usr/bin/python3'), '/usr/bin/python3')
    ran = run_twice(tmp_path, caches, http_cache, small_closure, host,
                    ansible_playbook=ansible_playbook)[0]
    interpreters.RAN['controller %s' % name] = 'ansible-core %s on Python %s (managed host %s)' % (
        core_version, controller_python, ran)
