"""The collector (``gc.py``) on an optimised store made here, without Nix: unused
``.links`` entries go, and bytes freed are counted by inode."""
import os

from ansible_collections.nixcache.closure.plugins.module_utils import gc, optimise
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore

from nixtest.links import unique_bytes
from nixtest.memstore import SQL, TOOL, add, real, store_path, tree


def make_store(root, optimised=True):
    with LocalStore(root=root) as store:
        for version in ('1.0', '1.1', '1.2'):
            add(store, 'ext-' + version, tree(version))
    if optimised:
        optimise.optimise_store(root)
    keep = os.path.join(root, 'nix/var/nix/gcroots/keep')
    os.symlink('/nix/store/' + store_path('ext-1.0').base, keep)
    return keep


def collect(root, dry_run=False):
    return gc.collect_garbage(root, runtime_roots=False, dry_run=dry_run)


def test_shared_files_free_nothing_while_a_live_path_links_them(tmp_path):
    root = str(tmp_path)
    make_store(root)
    before = unique_bytes(root)
    planned = collect(root, dry_run=True)
    readmes = len(b'version 1.1\n') + len(b'version 1.2\n')
    assert planned['bytes_freed'] == readmes and planned['links_deleted'] == 2
    done = collect(root)
    assert (done['bytes_freed'], done['links_deleted']) == (readmes, 2)
    assert before - unique_bytes(root) == readmes
    names = os.listdir(os.path.join(root, 'nix/store/.links'))
    assert len(names) == 5       # ext-1.0's SQL, tool, empty file, symlink and README
    for name in names:
        assert os.lstat(os.path.join(root, 'nix/store/.links', name)).st_nlink == 2
    assert os.lstat(real(root, 'ext-1.0', 'share', 'ext--1.0.sql')).st_nlink == 2
    again = collect(root)
    assert again['changed'] is False and again['links_deleted'] == 0


def test_the_last_path_frees_each_shared_file_once_and_empties_links(tmp_path):
    root = str(tmp_path)
    keep = make_store(root)
    os.unlink(keep)
    total = unique_bytes(root)
    planned = collect(root, dry_run=True)
    assert planned['bytes_freed'] == total
    assert planned['bytes_freed'] == len(SQL) + len(TOOL) + len('share') + 3 * len(b'version 1.0\n')
    done = collect(root)
    assert done['bytes_freed'] == total and done['links_deleted'] == 7
    assert os.listdir(os.path.join(root, 'nix/store/.links')) == []


def test_an_unoptimised_store_counts_every_file(tmp_path):
    root = str(tmp_path)
    keep = make_store(root, optimised=False)
    os.unlink(keep)
    total = unique_bytes(root)
    done = collect(root)
    assert done['bytes_freed'] == total == 3 * (len(SQL) + len(TOOL) + len('share')) + 3 * len(b'version 1.0\n')
    assert done['links_deleted'] == 0


def test_links_nothing_used_before_go_too(tmp_path):
    root = str(tmp_path)
    make_store(root)
    stray = os.path.join(root, 'nix/store/.links', '0' * 52)
    with open(stray, 'wb') as handle:
        handle.write(b'x' * 100)
    planned = collect(root, dry_run=True)
    assert planned['links_deleted'] == 3 and planned['bytes_freed'] == 100 + 24
    done = collect(root)
    assert done['links_deleted'] == 3 and done['bytes_freed'] == 100 + 24
    assert not os.path.exists(stray)
