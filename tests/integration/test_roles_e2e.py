"""The roles on a fresh Debian host over SSH, then tasks written only against the contract.

The target is a debootstrap'd Debian root with its own sshd on loopback (a stand-in for a
fresh EC2 instance), shared by the session; the tests of this file run in order on it.
First a dry run (``--check --diff``) of ``playbooks/postgres.yml`` on the fresh host must
report the plan and change nothing.  Then ``nix_store`` realises Nix itself from a loopback
cache and ``postgres`` lays Postgres out with a second package in the same profile; plain
tasks that an existing playbook would run (initdb through /usr/lib/postgresql/bin/pg_ctl
with the locale environment, start, psql, pg_config, pg_prove) must work; tasks that add
lines to the files the roles write keep them and a re-run of the roles changes nothing; a
dry run on the up-to-date host reports nothing, and one of a switch reports the closure
difference; a switch and a rollback move every link, and the realised Nix verifies the
store, lists the profile's packages and keeps the profile's closure when collecting garbage.
"""
import json
import os
import platform

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.pins import nix_system
from nixtest import REPO, fixtures
from nixtest.ansible import run_playbook
from nixtest.http import CacheServer
from nixtest.sbom import cyclonedx_errors, spdx_errors

pytestmark = pytest.mark.slow

with open(os.path.join(REPO, 'playbooks', 'postgres.yml')) as _playbook:
    PLAYBOOK = _playbook.read()

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
    - name: Run the test tool of the second package
      ansible.builtin.command: /usr/bin/pg_prove
      register: pg_prove
      changed_when: false
    - name: Stop it
      ansible.builtin.shell:
        cmd: source /var/lib/postgresql/.bashrc && /usr/lib/postgresql/bin/pg_ctl -D /var/lib/postgresql/data -w stop
        executable: /bin/bash
      changed_when: true
'''

EDITS = """
- name: Other tasks of a real playbook, editing the files the roles write
  hosts: target
  gather_facts: false
  tasks:
    - name: Add a setting to the environment file
      ansible.builtin.lineinfile:
        path: /etc/environment.d/postgresql.env
        line: PGTZ=UTC
    - name: Add an alias to the postgres user's .bashrc
      ansible.builtin.lineinfile:
        path: /var/lib/postgresql/.bashrc
        line: alias pgs='pg_ctl status'
    - name: Add a setting to nix.conf
      ansible.builtin.lineinfile:
        path: /etc/nix/nix.conf
        line: max-jobs = 2
"""

OTHER_SYSTEM_BUILD = '/nix/store/1d5w1hqic2hm3yq1gz7gcch7qz2c3cz3-postgresql-and-plugins-15.8'

# What a dry run must leave alone on the target.
WATCHED = ('/etc', '/usr', '/var/lib', '/root', '/nix', '/data')


@pytest.fixture(scope='module')
def servers(caches, pg_extra):
    """The PostgreSQL caches and a cache holding Nix itself, over HTTP on loopback."""
    keys = fixtures.keys()
    nix_closure = fixtures.nix_closure()
    nix_caches = fixtures.caches(keys, [nix_closure], root=os.path.join(
        fixtures.FIXTURES_BUILD_DIR, 'caches-nix'), compressions=('xz',))
    extra_caches = fixtures.caches(keys, [pg_extra], root=os.path.join(
        fixtures.FIXTURES_BUILD_DIR, 'caches-extra'), compressions=('xz',))
    with CacheServer(caches.root) as pg_server, CacheServer(nix_caches.root) as nix_server, \
            CacheServer(extra_caches.root) as extra_server:
        yield dict(substituters=[pg_server.url_for('xz'), extra_server.url_for('xz'),
                                 nix_server.url_for('xz')],
                   trusted_public_keys=[keys.trusted.public], nix_store_path=nix_closure.top)


def apply_roles(target, servers, postgres_path, packages, check=False, diff=False, **options):
    result = run_playbook(PLAYBOOK, target.inventory(), check=check, diff=diff,
                          extra_vars=dict(servers, postgres_store_path=postgres_path,
                                          postgres_packages=packages, **options))
    result.assert_ok()
    return result


def snapshot(target):
    """Every file, link and directory under WATCHED on the target, with its mode and owner
    and (files and links) size, mtime and target."""
    found = {}
    for top in WATCHED:
        for directory, dirs, files in os.walk(target.path(top)):
            dirs[:] = [name for name in dirs if name != '.ansible']  # Ansible's own temp files
            for name in dirs + files:
                path = os.path.join(directory, name)
                info = os.lstat(path)
                if name in dirs:  # entries added or removed show up on their own; SQLite's
                    found[path] = (info.st_mode, info.st_uid)  # transient -wal touches db/
                    continue
                found[path] = (info.st_mode, info.st_uid, info.st_size, info.st_mtime,
                               os.readlink(path) if os.path.islink(path) else None)
    return found


def link_target(target, path):
    """Where a link leads, resolved inside the target (its links are absolute there)."""
    return target.run('readlink -f %s' % path, check=True).stdout.strip()


def changed(result):
    return {event['task']: event['result'] for event in result.events if event['changed']}


def assert_image_sbom(target, paths):
    """The roles left the image's SBOM beside the receipts: valid, covering ``paths``."""
    directory = target.path('/nix/var/nixcache/sbom')
    with open(os.path.join(directory, 'image.cdx.json')) as f:
        text = f.read()
    assert cyclonedx_errors(text, '1.6') == []
    assert spdx_errors(os.path.join(directory, 'image.spdx.json')) == []
    assert paths <= set(component['bom-ref'] for component in json.loads(text)['components'])


def test_dry_run_on_a_fresh_host_reports_the_plan_and_changes_nothing(
        target_host, servers, pg_closure, pg_extra, tmp_path):
    target = target_host
    assert not os.path.exists(target.path('/nix'))
    # the packages picked by name for the host's architecture from a release manifest (the
    # fixtures were built for this machine's system; another system's pin must not be taken)
    system = nix_system(platform.machine())
    other = 'riscv64-linux' if system != 'riscv64-linux' else 'aarch64-linux'
    manifest = tmp_path / 'pins.json'
    manifest.write_text(json.dumps({'version': 1, 'packages': {
        'psql_15': {system: pg_closure.top, other: OTHER_SYSTEM_BUILD},
        'pg_prove': {system: pg_extra.top}}}))
    before = snapshot(target)
    result = run_playbook(PLAYBOOK, target.inventory(), check=True, diff=True, extra_vars=dict(
        servers, release_manifest=str(manifest), release_packages=['psql_15', 'pg_prove']))
    result.assert_ok()
    assert snapshot(target) == before

    plan = result.registered('postgres_realised')
    assert sorted(plan['to_fetch']) == sorted(set(pg_closure.paths) | {pg_extra.top})
    assert plan['download_bytes'] > 0 and plan['unpacked_bytes'] == \
        pg_closure.nar_size + pg_extra.nar_size
    profile = result.registered('postgres_profile')
    assert profile['changed'] and profile['pending'] == [pg_closure.top, pg_extra.top]
    reported = changed(result)
    assert 'Link every tool into /usr/bin through the profile' in reported
    assert any(task.startswith('Keep the locale settings') for task in reported)
    assert "Keep the role's settings in /etc/nix/nix.conf (other settings are left alone)" \
        in reported
    # diff mode: what would be fetched, with sizes, and the profile's packages
    assert '+%s (' % pg_extra.top in result.stdout and 'MiB unpacked)' in result.stdout
    assert '+to realise %s' % pg_extra.top in result.stdout
    assert result.stats['target']['failures'] == 0


def test_roles_then_contract_tasks(target_host, servers, pg_closure, pg_closure_b, pg_extra):
    target = target_host
    # every run deduplicates the store as it fills it (the Packer template's default)
    servers = dict(servers, optimise=True)
    first = apply_roles(target, servers, pg_closure.top, [pg_extra.top])
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
    # the second package's tool and extension files sit beside the server's
    assert os.readlink(target.path('/usr/bin/pg_prove')) == '/var/lib/postgresql/.nix-profile/bin/pg_prove'
    assert link_target(target, '/usr/lib/postgresql/bin/pg_prove') == pg_extra.top + '/bin/pg_prove'
    extension = '/usr/lib/postgresql/share/postgresql/extension/'
    assert link_target(target, extension + 'pgtap.control') == \
        pg_extra.top + '/share/postgresql/extension/pgtap.control'
    assert link_target(target, extension + 'plpgsql.control').startswith(pg_closure.top + '/')
    profile_target = link_target(target, '/var/lib/postgresql/.nix-profile')
    assert profile_target.endswith('-profile')
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
    assert contract.registered('pg_prove')['stdout'] == 'pg_prove 3.36 from %s' % pg_extra.top

    # other tasks add lines to the files the roles write: the lines stay, nothing flips
    run_playbook(EDITS, target.inventory()).assert_ok()
    again = apply_roles(target, servers, pg_closure.top, [pg_extra.top])
    assert again.changed_tasks() == []
    assert_image_sbom(target, set(pg_closure.paths) | {pg_extra.top, servers['nix_store_path']})
    edits_again = run_playbook(EDITS, target.inventory())
    edits_again.assert_ok()
    assert edits_again.changed_tasks() == []
    assert 'PGTZ=UTC' in open(target.path('/etc/environment.d/postgresql.env')).read()
    assert 'max-jobs = 2' in open(target.path('/etc/nix/nix.conf')).read()
    bashrc = open(target.path('/var/lib/postgresql/.bashrc')).read()
    assert bashrc.startswith('# BEGIN nixcache.closure.postgres\n')  # before skel's early return
    assert "alias pgs='pg_ctl status'" in bashrc

    # a dry run on the up-to-date host reports nothing; one of a switch to a build not
    # fetched yet reports what to fetch; nothing changes
    assert apply_roles(target, servers, pg_closure.top, [pg_extra.top], check=True,
                       diff=True).changed_tasks() == []
    before = snapshot(target)
    planned = apply_roles(target, servers, pg_closure_b.top, [pg_extra.top], check=True, diff=True)
    assert snapshot(target) == before
    assert planned.registered('postgres_realised')['to_fetch'] == [pg_closure_b.top]
    switch = planned.registered('postgres_profile')
    assert switch['changed'] and switch['pending'] == [pg_closure_b.top]
    assert '+to realise %s' % pg_closure_b.top in planned.stdout

    # switch to another build, then back: one variable each, and the links follow; the new
    # build's files identical to the first's become links to one copy
    switched = apply_roles(target, servers, pg_closure_b.top, [pg_extra.top])
    optimised = switched.registered('postgres_realised')['optimised']
    assert optimised['files_linked'] > 100 and optimised['bytes_saved'] > 0, optimised
    assert 'auto-optimise-store = true' in open(target.path('/etc/nix/nix.conf')).read()
    assert link_target(target, '/usr/lib/postgresql/bin/psql').startswith(pg_closure_b.top + '/')
    apply_roles(target, servers, pg_closure.top, [pg_extra.top])
    assert link_target(target, '/usr/lib/postgresql/bin/psql').startswith(pg_closure.top + '/')
    assert link_target(target, '/var/lib/postgresql/.nix-profile') == profile_target

    # with both builds in the store, a dry run of the switch shows the closure difference
    before = snapshot(target)
    planned = apply_roles(target, servers, pg_closure_b.top, [pg_extra.top], check=True, diff=True)
    assert snapshot(target) == before
    switch = planned.registered('postgres_profile')
    assert switch['changed'] and switch['previous'] == profile_target and not switch['pending']
    assert pg_closure_b.top in switch['closure_diff']['added']
    assert sorted(switch['closure_diff']['removed']) == sorted([pg_closure.top, profile_target])
    assert '+closure %s' % pg_closure_b.top in planned.stdout
    assert '-closure %s' % pg_closure.top in planned.stdout

    # a dry run without the second package shows its links going, and changes nothing
    dropped = apply_roles(target, servers, pg_closure.top, [], check=True, diff=True)
    assert snapshot(target) == before
    removed = [path for result in changed(dropped).values() for path in result.get('removed', [])]
    assert sorted(removed) == ['/usr/bin/pg_prove', '/usr/lib/postgresql/bin/pg_prove',
                               '/usr/lib/postgresql/share/postgresql/extension/pgtap--1.0.sql',
                               '/usr/lib/postgresql/share/postgresql/extension/pgtap.control']
    assert '-/usr/bin/pg_prove -> /var/lib/postgresql/.nix-profile/bin/pg_prove' in dropped.stdout

    # the realised Nix, on the target, agrees with everything we wrote
    verify = target.run('nix-store --verify --check-contents', check=True)
    assert 'error' not in verify.stderr.lower()
    nix_cmd = "NIX_CONFIG='experimental-features = nix-command' nix profile %s --profile " \
              "/nix/var/nix/profiles/per-user/postgres/profile"
    listed = target.run(nix_cmd % 'list', check=True).stdout.splitlines()
    assert listed == ['0 - - %s' % pg_closure.top, '1 - - %s' % pg_extra.top]
    history = target.run(nix_cmd % 'history', check=True).stdout
    assert 'pg_prove: \u2205 -> 3.36' in history
    target.run('nix-collect-garbage', check=True)
    for path in pg_closure.paths + pg_closure_b.paths:  # both are generations of the profile
        assert os.path.exists(target.path(path)), path
    valid = target.run('nix-store -q --requisites /var/lib/postgresql/.nix-profile', check=True)
    assert set(valid.stdout.split()) == set(pg_closure.paths) | {pg_extra.top, profile_target}
