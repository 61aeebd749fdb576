"""``nixcache.closure.gc`` and ``store_info``: collect and inspect a store without Nix,
judged by real Nix 2.8 on the same store and roots."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import gc
from ansible_collections.nixcache.closure.plugins.module_utils.profiles import Profile
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from nixtest import nix
from nixtest.ansible import run_playbook

pytestmark = pytest.mark.slow

PLAY = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Run
      {{ module }}: {{ args }}
      register: out
'''


def run(module, check=False, **args):
    result = run_playbook(PLAY.replace('{{ module }}', 'nixcache.closure.' + module)
                          .replace('{{ args }}', json.dumps(args)), check=check)
    return result, result.registered('out')


def base(path):
    return os.path.basename(path)


@pytest.fixture
def store_with_garbage(alt_root, caches, small_closure, pg_closure, pg_closure_b):
    """Three closures valid under ``alt_root``; the default profile had small, then Postgres
    "a" (current); a direct gcroot keeps nothing else; Postgres "b" and leftovers are garbage."""
    cache = caches['none']
    with LocalStore(root=str(alt_root)) as store:
        Realiser(store, [make_substituter(cache.url)], TrustedKeys([cache.public_key])).realise(
            [StorePath.parse(p) for p in (small_closure.top, pg_closure.top, pg_closure_b.top)])
    profile = Profile('/nix/var/nix/profiles/default', root=str(alt_root))
    profile.switch_to(StorePath.parse(small_closure.top))
    old = alt_root / 'nix/var/nix/profiles/default-1-link'
    os.utime(str(old), (time.time() - 40 * 86400,) * 2, follow_symlinks=False)
    profile.switch_to(StorePath.parse(pg_closure.top))
    # A direct root on one path of the small closure, and leftovers a crash could leave.
    os.symlink(small_closure.by_name('small-note'), str(alt_root / 'nix/var/nix/gcroots/note'))
    (alt_root / 'nix/store/leftover-not-a-store-path').mkdir()
    (alt_root / 'nix/store' / ('%s-half-unpacked' % ('0' * 32))).mkdir()
    return alt_root


def nix_dead(root):
    out = nix.run(['nix-store', '--store', str(root), '--gc', '--print-dead']).stdout
    return sorted(base(line) for line in out.split())


def test_check_mode_lists_what_real_nix_calls_dead_and_deletes_nothing(
        store_with_garbage, pg_closure_b, small_closure):
    root = store_with_garbage
    before = sorted(os.listdir(str(root / 'nix/store')))
    result, planned = run('gc', check=True, root=str(root), runtime_roots=False)
    result.assert_ok()
    assert planned['changed'] is True
    ours = sorted(base(p) for p in planned['deleted'])
    assert base(pg_closure_b.top) in ours
    assert small_closure.top not in planned['deleted']
    assert planned['bytes_freed'] > 0
    assert sorted(os.listdir(str(root / 'nix/store'))) == before
    # (Real Nix's --print-dead deletes the entries that are not store paths as it lists them.)
    assert ours == nix_dead(root)


def test_collects_what_nix_would_and_real_nix_verifies_the_rest(
        store_with_garbage, pg_closure, pg_closure_b, small_closure):
    root = store_with_garbage
    result, planned = run('gc', check=True, root=str(root), runtime_roots=False)
    result, done = run('gc', root=str(root), runtime_roots=False)
    result.assert_ok()
    assert done['changed'] is True
    assert done['deleted'] == planned['deleted'] and done['bytes_freed'] == planned['bytes_freed']
    assert nix.verify_store(str(root)) == []
    assert nix.unregistered_entries(str(root)) == []
    valid = sorted(base(p) for p in nix.valid_paths(str(root)))
    live = nix.run(['nix-store', '--store', str(root), '--gc', '--print-live']).stdout.split()
    assert valid == sorted(base(p) for p in live)
    assert base(pg_closure.top) in valid and base(small_closure.top) in valid
    assert base(pg_closure_b.top) not in valid
    assert nix_dead(root) == []
    # Again: nothing to do.
    result, again = run('gc', root=str(root), runtime_roots=False)
    result.assert_ok()
    assert again['changed'] is False and again['deleted'] == []


def test_old_generations_go_first_as_nix_collect_garbage_does(
        store_with_garbage, small_closure, pg_closure):
    root = store_with_garbage
    result, planned = run('gc', check=True, root=str(root), runtime_roots=False,
                          delete_older_than='30d')
    result.assert_ok()
    # Generation 1 is 40 days old, but it was current 30 days ago: Nix keeps it.
    assert planned['deleted_generations'] == []
    result, planned = run('gc', check=True, root=str(root), runtime_roots=False, delete_old=True)
    result.assert_ok()
    assert planned['deleted_generations'] == ['/nix/var/nix/profiles/default-1-link']
    assert base(small_closure.top) in [base(p) for p in planned['deleted']]
    assert os.path.lexists(str(root / 'nix/var/nix/profiles/default-1-link'))

    result, done = run('gc', root=str(root), runtime_roots=False, delete_old=True)
    result.assert_ok()
    assert sorted(done['deleted']) == sorted(planned['deleted'])
    assert not os.path.lexists(str(root / 'nix/var/nix/profiles/default-1-link'))
    assert nix.verify_store(str(root)) == []
    # The note stays: a gcroot keeps it.
    valid = set(nix.valid_paths(str(root)))
    assert small_closure.by_name('small-note') in valid
    assert small_closure.top not in valid
    assert pg_closure.top in valid


def test_max_freed_stops_early_and_leaves_a_consistent_store(store_with_garbage):
    root = store_with_garbage
    result, done = run('gc', root=str(root), runtime_roots=False, max_freed='1')
    result.assert_ok()
    assert len(done['deleted']) >= 1
    assert nix.verify_store(str(root)) == []
    assert len(nix_dead(root)) > 0


def test_a_path_sent_to_the_roots_socket_is_kept(store_with_garbage, pg_closure_b):
    """A Nix process that wants a path while we collect sends it to gc-socket/socket."""
    root = str(store_with_garbage)
    store = LocalStore(root=root, create=False, hold_gc_lock=False)
    with gc.Collector(store) as collector:
        with store:
            plan = collector.plan(gc.find_roots(store, runtime=False))
            assert base(pg_closure_b.top) in plan.dead
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(os.path.join(root, 'nix/var/nix/gc-socket/socket'))
            client.sendall((pg_closure_b.top + '\n').encode())
            assert client.recv(1) == b'1'
            deleted = collector.delete(plan)[0]
            client.close()
    assert base(pg_closure_b.top) not in deleted
    assert pg_closure_b.top in nix.valid_paths(root)
    assert nix.verify_store(root) == []


def test_real_nix_adds_paths_while_we_collect(store_with_garbage, tmp_path):
    """Real Nix 2.8, finding gc.lock taken, sends its new path to our roots socket."""
    root = str(store_with_garbage)
    new_file = tmp_path / 'added-while-collecting'
    new_file.write_text('hello')
    store = LocalStore(root=root, create=False, hold_gc_lock=False)
    with gc.Collector(store) as collector:
        with store:
            plan = collector.plan(gc.find_roots(store, runtime=False))
            added = nix.run(['nix-store', '--store', root, '--add', str(new_file)]).stdout.strip()
            assert collector.late_roots == {base(added)[:32]}
            collector.delete(plan)
    assert added in nix.valid_paths(root)
    assert nix.verify_store(root) == []


def test_waits_for_a_running_realise(store_with_garbage):
    """An open store holds gc.lock shared: the collector waits for it to close."""
    root = str(store_with_garbage)
    finished = []
    with LocalStore(root=root):
        worker = threading.Thread(target=lambda: finished.append(
            gc.collect_garbage(root, runtime_roots=False)))
        worker.start()
        time.sleep(1.5)
        assert finished == []
    worker.join(60)
    assert finished and finished[0]['changed'] is True


def test_store_info_describes_the_store(store_with_garbage, pg_closure, small_closure):
    root = store_with_garbage
    result, info = run('store_info', root=str(root), runtime_roots=False)
    result.assert_ok()
    assert info['changed'] is False
    valid = sorted(nix.valid_paths(str(root)))
    assert [entry['path'] for entry in info['paths']] == valid
    sizes = nix.path_info(str(root), valid, recursive=False)
    assert all(entry['nar_size'] == sizes[entry['path']]['narSize'] for entry in info['paths'])
    assert info['store_nar_bytes'] == sum(i['narSize'] for i in sizes.values())
    [profile] = info['profiles']
    assert profile['profile'] == '/nix/var/nix/profiles/default'
    assert profile['current'] == 2
    assert [(g['number'], g['path']) for g in profile['generations']] == [
        (1, small_closure.top), (2, pg_closure.top)]
    roots = dict((entry['path'], entry['roots']) for entry in info['gc_roots'])
    assert roots[small_closure.by_name('small-note')] == ['/nix/var/nix/gcroots/note']
    assert '/nix/var/nix/profiles/default-2-link' in roots[pg_closure.top]
    consistency = info['consistency']
    assert consistency['ok'] is False
    assert consistency['missing'] == []
    assert sorted(consistency['unregistered']) == sorted(
        ['leftover-not-a-store-path', '%s-half-unpacked' % ('0' * 32)])

    # Only the Postgres closure, hashed again; then with one file changed behind its back.
    result, info = run('store_info', root=str(root), paths=[pg_closure.top], check_contents=True,
                       runtime_roots=False)
    result.assert_ok()
    assert [entry['path'] for entry in info['paths']] == pg_closure.paths
    assert info['consistency']['ok'] is True
    victim = root / 'nix/store' / base(pg_closure.top) / 'receipt.json'
    os.chmod(str(victim.parent), 0o755)
    os.chmod(str(victim), 0o644)
    victim.write_text('{}')
    result, info = run('store_info', root=str(root), paths=[pg_closure.top], check_contents=True,
                       runtime_roots=False)
    result.assert_ok()
    assert info['consistency']['modified'] == [pg_closure.top]
    assert nix.verify_store(str(root), raise_on_error=False)   # real Nix agrees


def test_runtime_roots_keep_what_a_running_process_uses(store_with_garbage, pg_closure_b):
    """A process with a file of a dead path open keeps that path (Nix reads /proc too)."""
    root = store_with_garbage
    target = str(root / 'nix/store' / base(pg_closure_b.top) / 'receipt.json')
    # /proc shows host paths: run the holder where ROOT/nix is /nix.
    holder = subprocess.Popen(
        ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
         'mount --bind "$1/nix" /nix && exec sleep 60 < "$2"', 'sh', str(root),
         os.path.join(pg_closure_b.top, 'receipt.json')])
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            fds = os.listdir('/proc/%d/fd' % holder.pid)
            if any(os.readlink('/proc/%d/fd/%s' % (holder.pid, fd)).endswith('receipt.json')
                   for fd in fds if os.path.exists('/proc/%d/fd/%s' % (holder.pid, fd))):
                break
            time.sleep(0.1)
        result, planned = run('gc', check=True, root=str(root))
        result.assert_ok()
        assert base(pg_closure_b.top) not in [base(p) for p in planned['deleted']]
    finally:
        holder.kill()
        holder.wait()
    assert os.path.exists(target)


def test_per_user_profiles_and_indirect_roots_outside_nix(store_with_garbage, pg_closure_b,
                                                          small_closure):
    """A per-user profile (Nix agrees), and an indirect root as ``nix-build -o`` or
    ``nix-env -p`` leave one: ``gcroots/auto/X`` -> a link elsewhere -> a store path
    (resolved under the root; a chroot Nix would look on the host instead)."""
    root = store_with_garbage
    Profile('/nix/var/nix/profiles/per-user/postgres/profile', root=str(root)).switch_to(
        StorePath.parse(pg_closure_b.top))
    assert base(pg_closure_b.top) not in nix_dead(root)
    (root / 'srv').mkdir()
    os.symlink(small_closure.by_name('small-blob'), str(root / 'srv/result'))
    os.makedirs(str(root / 'nix/var/nix/gcroots/auto'), exist_ok=True)
    os.symlink('/srv/result', str(root / 'nix/var/nix/gcroots/auto/result'))
    result, done = run('gc', root=str(root), runtime_roots=False, delete_old=True)
    result.assert_ok()
    valid = nix.valid_paths(str(root))
    assert pg_closure_b.top in valid
    assert small_closure.by_name('small-blob') in valid
    assert small_closure.top not in valid
    assert nix.verify_store(str(root)) == []
    # Once the link elsewhere is gone, the auto link is stale: it is removed, the blob goes.
    os.unlink(str(root / 'srv/result'))
    result, done = run('gc', root=str(root), runtime_roots=False)
    result.assert_ok()
    assert small_closure.by_name('small-blob') in done['deleted']
    assert not os.path.lexists(str(root / 'nix/var/nix/gcroots/auto/result'))
    assert nix.verify_store(str(root)) == []
