"""Push mode (``fetch_on: controller``) over SSH to the debootstrapped target host.

The caches are ``file://`` directories of the controller (paths that do not exist on the
target) or a loopback HTTP server whose log shows who read what: the controller fetches
and verifies, sends what the host lacks, and the host verifies again before it unpacks
and registers.  Every realised store is judged by real ``nix-store --verify
--check-contents``.
"""
import json
import os

import pytest

from nixtest import REPO, fixtures, nix
from nixtest.ansible import run_playbook
from nixtest.target import TargetHost

pytestmark = pytest.mark.slow

PLAY = '''
- hosts: all
  gather_facts: false
  tasks:
    - name: Realise
      nixcache.closure.realise:
        paths: "{{ paths }}"
        root: "{{ root }}"
        substituters: "{{ substituters }}"
        trusted_public_keys: "{{ keys }}"
        fetch_on: controller
        controller_cache_dir: "{{ controller_cache }}"
      register: realised
'''


def push(target_inventory, paths, root, substituters, keys, controller_cache, check=False,
         args=()):
    result = run_playbook(PLAY, target_inventory, check=check, args=args, extra_vars=dict(
        paths=list(paths), root=root, substituters=list(substituters), keys=list(keys),
        controller_cache=str(controller_cache)))
    return result


def assert_store_matches(root, closure):
    assert nix.verify_store(root) == []
    realised = nix.path_info(root, [closure.top])
    assert set(realised) == set(closure.paths)
    for path, info in realised.items():
        assert info['narHash'] == closure.infos[path]['narHash'], path
        assert info.get('signatures'), path
    assert nix.unregistered_entries(root) == []


def test_push_to_a_host_that_cannot_reach_the_cache(caches, pg_closure, target_host, tmp_path):
    cache = caches['zstd']
    cache_dir = cache.url[len('file://'):]
    assert not os.path.exists(target_host.path(cache_dir))   # only the controller has it
    controller_cache = tmp_path / 'controller-cache'
    root = '/srv/push-pg'
    inventory = target_host.inventory()

    # Check mode: a plan from the controller's narinfos; nothing is sent or made.
    planned = push(inventory, [pg_closure.top], root, [cache.url], [cache.public_key],
                   controller_cache, check=True).assert_ok().registered('realised')
    assert planned['changed'] is True
    assert sorted(planned['to_fetch']) == sorted(pg_closure.paths)
    assert planned['unpacked_bytes'] == pg_closure.nar_size
    assert planned['push']['sent_bytes'] == 0 and planned['push']['cache_bytes_read'] == 0
    assert not os.path.exists(target_host.path(root))
    assert os.listdir(str(controller_cache / 'nar')) == []

    result = push(inventory, [pg_closure.top], root, [cache.url], [cache.public_key],
                  controller_cache, args=['-v']).assert_ok()
    realised = result.registered('realised')
    assert realised['changed'] is True
    assert sorted(realised['fetched']) == sorted(pg_closure.paths)
    assert realised['push']['cache_bytes_read'] == realised['download_bytes'] > 0
    assert realised['push']['sent_files'] == len(pg_closure.paths)
    assert realised['invocation']['module_args']['pushed'] is None
    assert 'realise [target]: sending 3 NAR(s)' in result.stdout
    assert all(entry['cache'] == cache.url for entry in realised['closure'])
    assert_store_matches(target_host.path(root), pg_closure)

    receipt_file = target_host.path(os.path.join(
        root, 'nix/var/nixcache/receipts', os.path.basename(pg_closure.top) + '.json'))
    receipt = json.loads(open(receipt_file).read())
    assert receipt['paths'] == len(pg_closure.paths)
    assert all(entry['cache'] == cache.url and entry['signatures'] for entry in receipt['closure'])
    # Nothing of the push is left in the host's temporary space.
    leftovers = target_host.run('find /root/.ansible/tmp -name "nixcache-*"').stdout
    assert leftovers.strip() == ''

    again = push(inventory, [pg_closure.top], root, [cache.url], [cache.public_key],
                 controller_cache).assert_ok().registered('realised')
    assert again['changed'] is False
    assert again['fetched'] == [] and again['receipts'] == []
    assert again['push']['sent_bytes'] == 0 and again['push']['cache_bytes_read'] == 0


def test_host_refuses_a_tampered_controller_cache(caches, small_closure, target_host, tmp_path):
    cache = caches['none']
    controller_cache = tmp_path / 'controller-cache'
    inventory = target_host.inventory()
    push(inventory, [small_closure.top], '/srv/push-first', [cache.url], [cache.public_key],
         controller_cache).assert_ok()
    # Someone changes a NAR in the controller's cache, keeping its size.
    nar_dir = controller_cache / 'nar'
    victim = max(nar_dir.iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[-200] ^= 0x01
    victim.write_bytes(bytes(data))

    root = '/srv/push-tampered'
    result = push(inventory, [small_closure.top], root, [cache.url], [cache.public_key],
                  controller_cache)
    result.assert_failed()
    failed = result.registered('realised')
    assert failed['error'] in ('HashMismatch', 'InvalidNar'), failed
    assert failed['cache'] == cache.url
    store = target_host.path(root)
    assert nix.unregistered_entries(store) == []
    valid = nix.valid_paths(store)
    assert str(failed['path']) not in valid
    assert len(valid) < len(small_closure.paths)
    if valid:   # what got in before the refusal is complete and correct
        assert nix.verify_store(store) == []


def test_two_hosts_share_one_download(caches, small_closure, http_cache, target_host, tmp_path):
    """Two targets, forks 2: the HTTP cache serves each NAR once, both stores verify."""
    second = TargetHost(tmp_path / 'second-target').start()
    try:
        url = http_cache.url_for('xz')
        inventory = (target_host.inventory('one') + second.inventory('two'))
        controller_cache = tmp_path / 'controller-cache'
        root = '/srv/push-two'
        result = push(inventory, [small_closure.top], root, [url], [caches['xz'].public_key],
                      controller_cache, args=['--forks', '2']).assert_ok()
        nar_gets = http_cache.requests_for('/xz/nar/*', 'GET')
        assert sorted(r.path for r in nar_gets) == sorted(set(r.path for r in nar_gets))
        assert len(nar_gets) == len(small_closure.paths)
        read = sum(r.bytes_sent for r in nar_gets)
        one = result.registered('realised', host='one')
        two = result.registered('realised', host='two')
        assert one['push']['cache_bytes_read'] + two['push']['cache_bytes_read'] == read
        for host in (target_host, second):
            assert_store_matches(host.path(root), small_closure)

        http_cache.clear_log()
        again = push(inventory, [small_closure.top], root, [url], [caches['xz'].public_key],
                     controller_cache, args=['--forks', '2']).assert_ok()
        assert again.changed_tasks() == []
        assert http_cache.fetched('*/nar/*') == []
    finally:
        second.stop()


def test_roles_in_push_mode(caches, pg_closure, pg_extra, tmp_path):
    """playbooks/postgres.yml with fetch_on=controller on a fresh host, every cache a
    directory of the controller: Nix and Postgres go in, a re-run changes nothing."""
    keys = fixtures.keys()
    nix_closure = fixtures.nix_closure()
    nix_caches = fixtures.caches(keys, [nix_closure], root=os.path.join(
        fixtures.FIXTURES_BUILD_DIR, 'caches-nix'), compressions=('xz',))
    extra_caches = fixtures.caches(keys, [pg_extra], root=os.path.join(
        fixtures.FIXTURES_BUILD_DIR, 'caches-extra'), compressions=('xz',))
    with open(os.path.join(REPO, 'playbooks', 'postgres.yml')) as playbook:
        play = playbook.read()
    extra_vars = dict(substituters=[caches['xz'].url, extra_caches['xz'].url, nix_caches['xz'].url],
                      trusted_public_keys=[keys.trusted.public], nix_store_path=nix_closure.top,
                      postgres_store_path=pg_closure.top, postgres_packages=[pg_extra.top],
                      fetch_on='controller')
    env = dict(XDG_CACHE_HOME=str(tmp_path / 'xdg'))
    target = TargetHost(tmp_path / 'roles-target').start()
    try:
        inventory = target.inventory()
        dry = run_playbook(play, inventory, check=True, extra_vars=extra_vars, env=env).assert_ok()
        assert sorted(dry.registered('postgres_realised')['to_fetch']) == \
            sorted(set(pg_closure.paths) | {pg_extra.top})
        assert not os.path.exists(target.path('/nix/store'))

        first = run_playbook(play, inventory, extra_vars=extra_vars, env=env).assert_ok()
        realised = first.registered('postgres_realised')
        assert realised['push']['sent_files'] == len(realised['fetched']) > 0
        assert realised['push']['controller_cache'] == str(tmp_path / 'xdg/nixcache/controller')
        assert '(PostgreSQL) %s' % pg_closure.version in first.task('Ask the installed server for its version')['stdout']
        assert nix.verify_store(target.root) == []

        again = run_playbook(play, inventory, extra_vars=extra_vars, env=env).assert_ok()
        assert again.changed_tasks() == []
    finally:
        target.stop()


def test_push_as_an_unprivileged_user_with_become(caches, small_closure, target_host, tmp_path):
    """As on a cloud image: SSH as a user with sudo, the task with become.  The files are
    sent as that user into its temporary directory; the module reads them as root."""
    setup = ('id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy; '
             'install -d -o deploy -m 700 /home/deploy/.ssh; '
             'install -o deploy -m 600 /root/.ssh/authorized_keys /home/deploy/.ssh/; '
             "echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy; "
             'chmod 440 /etc/sudoers.d/deploy')
    target_host.run(setup, check=True)
    cache = caches['xz']
    root = '/srv/push-become'
    inventory = target_host.inventory(ansible_user='deploy', ansible_become='true')
    result = push(inventory, [small_closure.top], root, [cache.url], [cache.public_key],
                  tmp_path / 'controller-cache').assert_ok()
    realised = result.registered('realised')
    assert sorted(realised['fetched']) == sorted(small_closure.paths)
    assert realised['push']['sent_files'] == len(small_closure.paths)
    store = target_host.path(root)
    assert_store_matches(store, small_closure)
    assert os.stat(os.path.join(store, 'nix/store')).st_uid == 0
    left = target_host.run('ls -A /home/deploy/.ansible/tmp')
    assert left.returncode == 0 and left.stdout.strip() == ''   # the sent files are gone
