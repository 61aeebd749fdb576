"""The store optimiser (``optimise.py``) on stores made here, without Nix
(``nixtest.memstore``): after optimising, every path must still serialise to its NarHash,
and identical files must share one inode with their ``.links`` entry."""
import errno
import os
import stat
import threading

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import nar, optimise
from ansible_collections.nixcache.closure.plugins.module_utils.errors import StoreError
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from nixtest.memstore import SQL, TOOL, add, link_name, real, store_path, tree


@pytest.fixture
def root(tmp_path):
    with LocalStore(root=str(tmp_path)) as store:
        add(store, 'ext-1.0', tree('1.0'))
        add(store, 'ext-1.1', tree('1.1'))
        add(store, 'ext-1.2', tree('1.2'))
    return str(tmp_path)


def links_dir(root):
    return os.path.join(root, 'nix/store/.links')


def assert_paths_intact(root):
    """Every valid path still serialises to its registered NarHash."""
    with LocalStore(root=root, create=False) as store:
        graph = store.graph()
        infos = store.path_infos(graph)
        assert graph
        for path in graph:
            digest, size = nar.nar_hash(store.real_path(path))
            assert format_base32(digest) == infos[path]['nar_hash'], path
            assert size == infos[path]['nar_size']


def snapshot(root):
    """(name, inode, mode, mtime, nlink) of everything under the store."""
    seen = []
    for directory, dirs, files in os.walk(os.path.join(root, 'nix/store')):
        for name in sorted(dirs + files):
            info = os.lstat(os.path.join(directory, name))
            seen.append((os.path.join(directory, name), info.st_ino, info.st_mode,
                         info.st_mtime, info.st_nlink))
    return sorted(seen)


def test_identical_files_share_one_inode_named_by_their_nar_hash(root):
    savings = optimise.optimise_store(root)
    # per shared file (SQL, tool, empty, symlink): one link made, two copies replaced
    assert savings.links_created == 4 + 3      # and one for each unique README
    assert savings.files_linked == 4 * 2
    assert savings.bytes_saved == 2 * (len(SQL) + len(TOOL) + 0 + len('share'))
    assert savings.paths == 3 and savings.changed
    sql = [os.lstat(real(root, 'ext-1.%d' % n, 'share', 'ext--1.0.sql')) for n in range(3)]
    assert len(set(info.st_ino for info in sql)) == 1
    link = os.path.join(links_dir(root), link_name(('regular', SQL, False)))
    assert os.lstat(link).st_ino == sql[0].st_ino and sql[0].st_nlink == 4
    symlink = os.path.join(links_dir(root), link_name(('symlink', 'share')))
    assert os.path.islink(symlink) and os.lstat(symlink).st_nlink == 4
    assert_paths_intact(root)


def test_directories_are_left_read_only_with_mtime_1_and_no_temporary_link_remains(root):
    optimise.optimise_store(root)
    for name in ('ext-1.0', 'ext-1.1', 'ext-1.2'):
        for sub in ('share', 'bin'):
            info = os.lstat(real(root, name, sub))
            assert stat.S_IMODE(info.st_mode) == 0o555 and info.st_mtime == 1
    tool = os.lstat(real(root, 'ext-1.1', 'bin', 'tool'))
    assert stat.S_IMODE(tool.st_mode) == 0o555
    leftovers = [name for name in os.listdir(os.path.join(root, 'nix/store'))
                 if name.startswith('.tmp-link') or name.endswith('.lock')]
    assert leftovers == []


def test_same_contents_with_another_executable_bit_is_not_linked(tmp_path):
    with LocalStore(root=str(tmp_path)) as store:
        add(store, 'a', ('directory', {'f': ('regular', TOOL, True)}))
        add(store, 'b', ('directory', {'f': ('regular', TOOL, False)}))
    savings = optimise.optimise_store(str(tmp_path))
    assert savings.files_linked == 0 and savings.links_created == 2


def test_a_rerun_changes_nothing_and_saves_nothing(root):
    first = optimise.optimise_store(root)
    before = snapshot(root)
    second = optimise.optimise_store(root)
    assert first.files_linked > 0
    assert (second.files_linked, second.bytes_saved, second.links_created) == (0, 0, 0)
    assert not second.changed
    assert snapshot(root) == before


def test_check_mode_predicts_the_real_run_and_writes_nothing(root):
    before = snapshot(root)
    predicted = optimise.optimise_store(root, check_mode=True)
    assert snapshot(root) == before
    assert not os.path.exists(links_dir(root))
    done = optimise.optimise_store(root)
    assert predicted.as_dict() == done.as_dict()
    assert optimise.optimise_store(root, check_mode=True).as_dict()['files_linked'] == 0


def test_only_the_closure_of_given_paths(tmp_path):
    with LocalStore(root=str(tmp_path)) as store:
        base = add(store, 'base', tree('base'))
        top = add(store, 'top', tree('top'), references=[base])
        add(store, 'other', tree('other'))
    savings = optimise.optimise_store(str(tmp_path), [top])
    assert savings.paths == 2 and savings.files_linked == 4
    assert os.lstat(real(str(tmp_path), 'other', 'share', 'ext--1.0.sql')).st_nlink == 1
    with pytest.raises(StoreError, match='not valid'):
        optimise.optimise_store(str(tmp_path), [store_path('missing')])


def test_a_missing_store_has_nothing_to_save(tmp_path):
    savings = optimise.optimise_store(str(tmp_path / 'nothing'))
    assert savings.as_dict()['bytes_saved'] == 0 and not savings.changed
    assert not os.path.exists(str(tmp_path / 'nothing'))


def test_writable_files_are_skipped_with_a_warning(root):
    sql = real(root, 'ext-1.1', 'share', 'ext--1.0.sql')
    os.chmod(sql, 0o644)
    savings = optimise.optimise_store(root)
    assert savings.skipped_writable == 1 and os.lstat(sql).st_nlink == 1
    assert any('writable' in warning and sql in warning for warning in savings.warnings)


def test_a_corrupted_link_is_replaced(root):
    optimise.optimise_store(root)
    link = os.path.join(links_dir(root), link_name(('regular', SQL, False)))
    os.unlink(link)
    with open(link, 'wb') as handle:
        handle.write(b'not the contents')
    with LocalStore(root=root) as store:
        new = add(store, 'ext-2.0', tree('2.0'))
    savings = optimise.optimise_store(root, [new])
    assert any('corrupted' in warning for warning in savings.warnings)
    assert os.lstat(link).st_size == len(SQL)
    assert_paths_intact(root)


@pytest.mark.parametrize('failing_call', ['link', 'rename'])
def test_the_link_limit_keeps_the_copy(root, monkeypatch, failing_call):
    """EMLINK, as a file system at its link limit answers, at the temporary link or at
    the rename (where some file systems count it)."""
    real_call = getattr(os, failing_call)

    def at_limit(source, target, *args, **kwargs):
        if failing_call == 'link' and os.path.basename(target).startswith('.tmp-link-') or \
           failing_call == 'rename' and os.path.basename(source).startswith('.tmp-link-'):
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK), target)
        return real_call(source, target, *args, **kwargs)

    monkeypatch.setattr(optimise.os, failing_call, at_limit)
    savings = optimise.optimise_store(root)
    monkeypatch.undo()
    assert savings.files_linked == 0 and savings.kept_at_link_limit == 8
    assert savings.links_created == 7
    assert not [n for n in os.listdir(os.path.join(root, 'nix/store')) if n.startswith('.tmp-link')]
    copies = [os.lstat(real(root, 'ext-1.%d' % n, 'share', 'ext--1.0.sql')) for n in range(3)]
    assert len(set(info.st_ino for info in copies)) == 3
    assert stat.S_IMODE(os.lstat(real(root, 'ext-1.1', 'share')).st_mode) == 0o555
    assert_paths_intact(root)


def test_other_link_failures_are_errors_naming_the_file(root, monkeypatch):
    def refuse(source, target, *args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), target)

    monkeypatch.setattr(optimise.os, 'link', refuse)
    with pytest.raises(StoreError, match='cannot link') as caught:
        optimise.optimise_store(root)
    assert '.links' in caught.value.path


def test_a_real_link_limit_keeps_the_copy(tmp_path):
    """The file system's own limit (65000 links on ext4): the ``.links`` entry of a
    file is brought one link short of it, so the first copy is linked and the next two
    stay copies."""
    limit = os.pathconf(str(tmp_path), 'PC_LINK_MAX')
    if limit > 70000:
        pytest.skip('the link limit here is %d: too many links to make for a test' % limit)
    with LocalStore(root=str(tmp_path)) as store:
        add(store, 'many', ('directory', {'a': ('regular', SQL, False), 'b': ('regular', SQL, False),
                                          'c': ('regular', SQL, False)}))
    os.makedirs(links_dir(str(tmp_path)))
    link = os.path.join(links_dir(str(tmp_path)), link_name(('regular', SQL, False)))
    with open(link, 'wb') as handle:
        handle.write(SQL)
    os.chmod(link, 0o444)
    filler = tmp_path / 'filler'
    filler.mkdir()
    for number in range(limit - 2):
        os.link(link, str(filler / str(number)))
    savings = optimise.optimise_store(str(tmp_path))
    assert (savings.files_linked, savings.kept_at_link_limit) == (1, 2)
    assert os.lstat(link).st_nlink == limit
    assert_paths_intact(str(tmp_path))


def test_two_optimisers_at_once_link_each_file_once(tmp_path):
    with LocalStore(root=str(tmp_path)) as store:
        for number in range(12):
            add(store, 'ext-%d' % number, tree(str(number)))
    results, failures = [], []

    def run():
        try:
            results.append(optimise.optimise_store(str(tmp_path)))
        except Exception as error:     # reported below
            failures.append(error)

    threads = [threading.Thread(target=run) for _number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert sum(result.files_linked for result in results) == 4 * 11
    assert sum(result.links_created for result in results) == 4 + 12
    assert_paths_intact(str(tmp_path))
    assert optimise.optimise_store(str(tmp_path)).files_linked == 0
