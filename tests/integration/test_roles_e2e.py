"""The roles on a fresh Debian host over SSH, then tasks written only against the contract.

The target is a debootstrap'd Debian root with its own sshd on loopback (a stand-in for a
fresh EC2 instance).  ``nix_store`` realises Nix itself from a loopback cache, ``postgres``
lays Postgres out; then plain tasks that an existing playbook would run (initdb through
/usr/lib/postgresql/bin/pg_ctl with the locale environment, start, psql, pg_config) must
work, a second run changes nothing, a switch and a rollback move every link, and the
realised Nix verifies the store and keeps the profile's closure when collecting garbage.
"""
import os

import pytest

from nixtest import fixtures
from nixtest.ansible import run_playbook
from nixtest.http import CacheServer

pytestmark = pytest.mark.slow

ROLES = '''
- name: Nix and PostgreSQL from the cache
  hosts: target
  gather_facts: false
  roles:
    - role: nixcache.closure.nix_store
      vars:
        nix_store_substituters: ["{{ nix_cache }}"]
        nix_store_trusted_public_keys: ["{{ key }}"]
        nix_store_nix_path: "{{ nix_path }}"
    - role: nixcache.closure.postgres
      vars:
        postgres_store_path: "{{ postgres_path }}"
        postgres_substituters: ["{{ pg_cache }}"]
        postgres_trusted_public_keys: ["{{ key }}"]
'''

CONTRACT = '''
- name: Tasks written against the contract only
  hosts: target
  gather_facts: false
  become: true
  become_user: postgres
  tasks:
    - name: Initialise the cluster
      ansible.builtin.shell:
        cmd: >-
          source /var/lib/postgresql/.bashrc &&
          /usr/lib/postgresql/bin/pg_ctl -D /var/lib/postgresql/data initdb
          -o --allow-group-access -o --username=supabase_admin
        executable: /bin/bash
        creates: /var/lib/postgresql/data/PG_VERSION
    - name: Start it
      ansible.builtin.shell:
        cmd: >-
          source /var/lib/postgresql/.bashrc &&
          /usr/lib/postgresql/bin/pg_ctl -D /var/lib/postgresql/data -l /tmp/pg.log -w
          -o "-c listen_addresses='' -k /tmp" start
        executable: /bin/bash
      changed_when: true
    - name: Ask it
      ansible.builtin.command: /usr/lib/postgresql/bin/psql -h /tmp -U supabase_admin -d postgres -Atc 'select version()'
      register: answer
      changed_when: false
    - name: Ask pg_config
      ansible.builtin.command: /usr/bin/pg_config --version
      register: pg_config
      changed_when: false
    - name: Stop it
      ansible.builtin.shell:
        cmd: source /var/lib/postgresql/.bashrc && /usr/lib/postgresql/bin/pg_ctl -D /var/lib/postgresql/data -w stop
        executable: /bin/bash
      changed_when: true
'''


@pytest.fixture(scope='module')
def servers(caches):
    """The PostgreSQL caches and a cache holding Nix itself, over HTTP on loopback."""
    keys = fixtures.keys()
    nix_closure = fixtures.nix_closure()
    nix_caches = fixtures.caches(keys, [nix_closure], root=os.path.join(
        fixtures.FIXTURES_BUILD_DIR, 'caches-nix'), compressions=('xz',))
    with CacheServer(caches.root) as pg_server, CacheServer(nix_caches.root) as nix_server:
        yield dict(pg_cache=pg_server.url_for('xz'), nix_cache=nix_server.url_for('xz'),
                   key=keys.trusted.public, nix_path=nix_closure.top)


def apply_roles(target, servers, postgres_path):
    result = run_playbook(ROLES, target.inventory(), extra_vars=dict(servers, postgres_path=postgres_path))
    result.assert_ok()
    return result


def link_target(target, path):
    """Where a link leads, resolved inside the target (its links are absolute there)."""
    return target.run('readlink -f %s' % path, check=True).stdout.strip()


def test_roles_then_contract_tasks(target_host, servers, pg_closure, pg_closure_b):
    target = target_host
    first = apply_roles(target, servers, pg_closure.top)
    assert first.changed_tasks()

    # users and groups exactly as the contract says
    groups = target.run('id -nG postgres', check=True).stdout.split()
    assert sorted(groups) == ['postgres', 'ssl-cert']
    assert target.run('getent passwd postgres', check=True).stdout.split(':')[5:7] == \
        ['/var/lib/postgresql', '/bin/bash\n']

    # the layout goes through the profile, never straight into the store
    assert os.readlink(target.path('/usr/lib/postgresql/bin/psql')) == \
        '/var/lib/postgresql/.nix-profile/bin/psql'
    assert os.readlink(target.path('/usr/bin/pg_config')) == '/var/lib/postgresql/.nix-profile/bin/pg_config'
    assert os.path.isdir(target.path('/usr/lib/postgresql/share/postgresql/extension'))
    assert not os.path.islink(target.path('/usr/lib/postgresql/share/postgresql/extension'))
    assert link_target(target, '/var/lib/postgresql/.nix-profile') == pg_closure.top
    assert os.stat(target.path('/usr/lib/postgresql/bin')).st_uid == \
        int(target.run('id -u postgres', check=True).stdout)
    assert os.stat(target.path(pg_closure.top)).st_uid == 0
    env_file = open(target.path('/etc/environment.d/postgresql.env')).read()
    assert 'LOCALE_ARCHIVE=/usr/lib/locale/locale-archive' in env_file and 'LC_ALL=en_US.UTF-8' in env_file
    assert oct(os.stat(target.path('/etc/ssl/private')).st_mode & 0o777) == '0o750'
    assert os.readlink(target.path('/var/lib/postgresql/data')) == '/data/pgdata'

    contract = run_playbook(CONTRACT, target.inventory())
    contract.assert_ok()
    assert 'PostgreSQL %s' % pg_closure.version in contract.registered('answer')['stdout']
    assert contract.registered('pg_config')['stdout'].startswith('PostgreSQL %s' % pg_closure.version)

    again = apply_roles(target, servers, pg_closure.top)
    assert again.changed_tasks() == []

    # switch to another build, then back: one variable each, and the links follow
    apply_roles(target, servers, pg_closure_b.top)
    assert link_target(target, '/usr/lib/postgresql/bin/psql').startswith(pg_closure_b.top + '/')
    apply_roles(target, servers, pg_closure.top)
    assert link_target(target, '/usr/lib/postgresql/bin/psql').startswith(pg_closure.top + '/')

    # the realised Nix, on the target, agrees with everything we wrote
    verify = target.run('nix-store --verify --check-contents', check=True)
    assert 'error' not in verify.stderr.lower()
    target.run('nix-collect-garbage', check=True)
    for path in pg_closure.paths + pg_closure_b.paths:  # both are generations of the profile
        assert os.path.exists(target.path(path)), path
    valid = target.run('nix-store -q --requisites /var/lib/postgresql/.nix-profile', check=True)
    assert set(valid.stdout.split()) == set(pg_closure.paths)
