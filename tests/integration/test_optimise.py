"""``nixcache.closure.optimise`` and ``realise`` with ``optimise: true``, judged by real
Nix 2.8: ``nix-store --verify --check-contents`` stays clean, a following real
``nix-store --optimise`` finds nothing more to save, and on a twin store real Nix links
the same files into the same ``.links`` names and reports the same savings."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import optimise
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.realise import realise_closure
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import COLLECTIONS_PATH, nix
from nixtest.links import links, unique_bytes
from nixtest.ansible import realise_play, run_playbook

pytestmark = [pytest.mark.slow, pytest.mark.nix]

PLAY = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Run
      nixcache.closure.{{ module }}: {{ args }}
      register: out
'''

# Nix 2.8 prints "%.2f MiB freed by hard-linking %d files" when it is done.
NIX_FREED = re.compile(r'^([0-9]+\.[0-9]{2}) MiB freed by hard-linking ([0-9]+) files$', re.M)


def run(module, check=False, **args):
    result = run_playbook(PLAY.replace('{{ module }}', module).replace('{{ args }}', json.dumps(args)),
                          check=check)
    result.assert_ok()
    return result.registered('out')


def realise_into(root, cache, closures, optimise_paths=False):
    return realise_closure(str(root), [StorePath.parse(c.top) for c in closures],
                           [make_substituter(cache.url)], TrustedKeys([cache.public_key]),
                           optimise=optimise_paths)


def nix_optimise(root):
    """Real ``nix-store --optimise`` on ``root``: (MiB freed, files linked)."""
    proc = nix.run(['nix-store', '--store', str(root), '--optimise'])
    match = NIX_FREED.search(proc.stderr)
    assert match, 'no summary in the output of nix-store --optimise:\n' + proc.stderr
    return float(match.group(1)), int(match.group(2))


def walk_files(top, root):
    """The regular files of the store path ``top`` under ``root``, in name order."""
    found = []
    for directory, _dirs, files in os.walk(os.path.join(str(root), top.lstrip('/'))):
        found.extend(os.path.join(directory, name) for name in files
                     if os.path.isfile(os.path.join(directory, name))
                     and not os.path.islink(os.path.join(directory, name)))
    return sorted(found)


def assert_nix_finds_nothing_more(root):
    assert nix.verify_store(str(root)) == []
    assert nix_optimise(root) == (0.0, 0)
    assert nix.verify_store(str(root)) == []


@pytest.fixture
def duplicated_root(alt_root, caches, small_closure, pg_closure, pg_closure_b):
    """Two builds of the same PostgreSQL side by side (most files identical) and the
    small closure, realised without optimisation."""
    realise_into(alt_root, caches['zstd'], [small_closure, pg_closure, pg_closure_b])
    return alt_root


def test_the_module_saves_what_real_nix_saves_and_nix_agrees(duplicated_root, tmp_path, caches,
                                                             small_closure, pg_closure, pg_closure_b):
    root = duplicated_root
    twin = tmp_path / 'twin'
    twin.mkdir()
    realise_into(twin, caches['zstd'], [small_closure, pg_closure, pg_closure_b])

    predicted = run('optimise', check=True, root=str(root))
    assert predicted['changed'] is True and predicted['files_linked'] > 0
    assert not os.path.exists(str(root / 'nix/store/.links'))
    done = run('optimise', root=str(root))
    assert done['changed'] is True
    for key in ('files_linked', 'bytes_saved', 'links_created', 'paths'):
        assert done[key] == predicted[key], key
    assert done['kept_at_link_limit'] == 0 and done['skipped_writable'] == 0

    # Real Nix on the twin store links the same files under the same names.
    freed_mib, linked = nix_optimise(twin)
    assert linked == done['files_linked']
    assert freed_mib == done['mb_saved'] == round(done['bytes_saved'] / 1048576.0, 2)
    assert links(root) == links(twin)

    assert_nix_finds_nothing_more(root)
    again = run('optimise', root=str(root))
    assert again['changed'] is False and again['files_linked'] == 0 and again['bytes_saved'] == 0


def test_only_given_paths_and_their_closure(duplicated_root, pg_closure, pg_closure_b):
    root = duplicated_root
    done = run('optimise', root=str(root), paths=[pg_closure.top])
    assert done['paths'] == len(pg_closure.paths)
    # The paths of the other build that the first one does not share are left as they were.
    only_other = set(pg_closure_b.paths) - set(pg_closure.paths)
    untouched = [name for top in sorted(only_other) for name in walk_files(top, root)]
    assert untouched and all(os.stat(name).st_nlink == 1 for name in untouched)
    # The other copy of Postgres is then linked to the files of the first.
    rest = run('optimise', root=str(root), paths=[pg_closure_b.top])
    assert rest['files_linked'] > 0
    assert nix.verify_store(str(root)) == []


def test_realise_with_optimise_links_the_new_paths(alt_root, caches, pg_closure, pg_closure_b):
    cache = caches['xz']
    play = realise_play(optimise=True)

    def realise(top, check=False):
        result = run_playbook(play, check=check, extra_vars=dict(
            paths=[top], root=str(alt_root), substituters=[cache.url], keys=[cache.public_key]))
        result.assert_ok()
        return result.registered('realised')

    first = realise(pg_closure.top)
    assert first['optimised']['paths'] == len(pg_closure.paths)
    planned = realise(pg_closure_b.top, check=True)
    assert planned['optimised']['files_linked'] == 0
    second = realise(pg_closure_b.top)
    assert second['fetched'] == [pg_closure_b.top]
    assert second['optimised']['paths'] == 1 and second['optimised']['files_linked'] > 0
    assert second['optimised']['bytes_saved'] > 1 << 20
    assert_nix_finds_nothing_more(alt_root)
    again = realise(pg_closure_b.top)
    assert again['changed'] is False and again['optimised']['files_linked'] == 0


def test_two_optimisers_and_a_realisation_at_once(alt_root, caches, small_closure, pg_closure,
                                                  pg_closure_b):
    cache = caches['none']
    realise_into(alt_root, cache, [small_closure, pg_closure])
    failures, results = [], {}

    def work(name, job):
        try:
            results[name] = job()
        except Exception as error:     # reported below
            failures.append((name, error))

    jobs = {
        'optimise-1': lambda: optimise.optimise_store(str(alt_root)),
        'optimise-2': lambda: optimise.optimise_store(str(alt_root)),
        'realise': lambda: realise_into(alt_root, cache, [pg_closure_b], optimise_paths=True),
    }
    threads = [threading.Thread(target=work, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert results['realise'].fetched
    assert_nix_finds_nothing_more(alt_root)
    assert [n for n in os.listdir(str(alt_root / 'nix/store')) if n.startswith('.tmp-link')] == []


def test_optimise_beside_a_real_nix_optimise(duplicated_root):
    """Ours and Nix's at once on one store: both safe, together they leave nothing."""
    root = duplicated_root
    results = []
    thread = threading.Thread(target=lambda: results.append(optimise.optimise_store(str(root))))
    thread.start()
    nix_optimise(root)
    thread.join()
    assert results and results[0].paths > 0
    assert_nix_finds_nothing_more(root)


def test_a_real_link_limit_keeps_copies_and_nix_agrees(alt_root, caches, pg_closure, pg_closure_b):
    """ext4 allows 65000 links to a file: bring a file of the first Postgres build to the
    limit, so its identical copy in the second build must stay a copy."""
    limit = os.pathconf(str(alt_root), 'PC_LINK_MAX')
    if limit > 70000:
        pytest.skip('the link limit here is %d: too many links to make for a test' % limit)
    realise_into(alt_root, caches['none'], [pg_closure, pg_closure_b])
    optimise.optimise_store(str(alt_root), [StorePath.parse(pg_closure.top)])
    first, second = (os.path.join(str(alt_root), top.lstrip('/')) for top in (pg_closure.top, pg_closure_b.top))
    shared = next(path for path in walk_files(pg_closure.top, alt_root)
                  if os.lstat(path).st_nlink == 2 and os.lstat(path).st_size > 0
                  and same_contents(path, second + path[len(first):]))
    filler = alt_root / 'filler'
    filler.mkdir()
    for number in range(limit - 2):
        os.link(shared, str(filler / str(number)))
    with LocalStore(root=str(alt_root)) as opened:
        savings = optimise.Optimiser(opened).optimise_paths([StorePath.parse(pg_closure_b.top)])
    assert savings.kept_at_link_limit == 1 and savings.files_linked > 0
    assert os.lstat(second + shared[len(first):]).st_nlink == 1
    assert nix.verify_store(str(alt_root)) == []
    # Nix meets the same limit and saves nothing more either.
    assert nix_optimise(alt_root) == (0.0, 0)


def same_contents(one, other):
    try:
        with open(one, 'rb') as a, open(other, 'rb') as b:
            return a.read() == b.read()
    except OSError:
        return False


def nix_gc(root):
    """Real ``nix-store --gc`` on ``root``, seeing no running process as a root (as our gc
    with ``runtime_roots: false``): in its own PID namespace with its own /proc, since
    other processes on this machine may run programs from these very store paths."""
    nix.run(['unshare', '--pid', '--fork', '--mount-proc',
             'nix-store', '--store', str(root), '--gc'])


def test_our_gc_and_nix_gc_leave_the_same_links(duplicated_root, tmp_path, caches, small_closure,
                                                pg_closure, pg_closure_b):
    """Twin optimised stores, one root kept in each: our gc on one, real Nix's on the
    other, and the two stores (paths and .links) come out the same."""
    twin = tmp_path / 'twin'
    twin.mkdir()
    realise_into(twin, caches['zstd'], [small_closure, pg_closure, pg_closure_b])
    for root in (duplicated_root, twin):
        optimise.optimise_store(str(root))
        os.symlink(pg_closure.top, str(root / 'nix/var/nix/gcroots/keep'))
    before = unique_bytes(duplicated_root)
    planned = run('gc', check=True, root=str(duplicated_root), runtime_roots=False)
    done = run('gc', root=str(duplicated_root), runtime_roots=False)
    nix_gc(twin)
    assert done['links_deleted'] == planned['links_deleted'] > 0
    assert done['bytes_freed'] == planned['bytes_freed'] == before - unique_bytes(duplicated_root)
    assert links(duplicated_root) == links(twin)
    assert all(count > 1 for count in links(duplicated_root).values())
    assert nix.store_entries(duplicated_root) == nix.store_entries(twin)
    assert nix.verify_store(str(duplicated_root)) == []
    # Without the root, both collectors empty .links.
    for root in (duplicated_root, twin):
        os.unlink(str(root / 'nix/var/nix/gcroots/keep'))
    before = unique_bytes(duplicated_root)
    done = run('gc', root=str(duplicated_root), runtime_roots=False)
    nix_gc(twin)
    assert done['bytes_freed'] == before - unique_bytes(duplicated_root)
    assert links(duplicated_root) == links(twin) == {}


def test_killed_in_the_middle_the_store_stays_whole(duplicated_root):
    """kill -9 while it links: every file is still there (each was replaced by a rename),
    Nix verifies the store, and a new run finishes the work."""
    root = duplicated_root
    script = ('import sys; sys.path.insert(0, %r); '
              'from ansible_collections.nixcache.closure.plugins.module_utils.optimise import optimise_store; '
              'optimise_store(%r)' % (COLLECTIONS_PATH, str(root)))
    proc = subprocess.Popen([sys.executable, '-c', script])
    deadline = time.monotonic() + 60
    while len(links(root)) < 200 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'it finished before it could be killed'
    assert nix.verify_store(str(root)) == []
    done = optimise.optimise_store(str(root))
    assert done.files_linked > 0
    assert_nix_finds_nothing_more(root)
    # What the kill left (a temporary link at most) is not a store path: gc removes it.
    run('gc', root=str(root), runtime_roots=False)
    assert [n for n in os.listdir(str(root / 'nix/store')) if n.startswith('.tmp-link')] == []
