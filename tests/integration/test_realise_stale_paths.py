"""Unregistered leftovers in the store (a crash, another user): removed without ever
following a link out of the store, and a clean error, not a traceback, when the file
system refuses.  The race itself (a directory swapped for a symlink mid-removal) is
tested in tests/unit/module_utils/test_nar.py."""
import os
import pwd
import subprocess

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import nix
from nixtest.ansible import realise_play, run_playbook
from nixtest.spoil import realiser

PLAY = realise_play()


def stale_copy(root, store_path, outside):
    """A half-written, unregistered tree at ``store_path``'s name, owned by nobody,
    read-only, with links out of the store."""
    stale = os.path.join(str(root), 'nix', 'store', os.path.basename(store_path))
    os.makedirs(os.path.join(stale, 'sub', 'deeper'))
    os.symlink(str(outside), os.path.join(stale, 'sub', 'escape'))
    os.symlink(str(outside / 'precious'), os.path.join(stale, 'precious-link'))
    with open(os.path.join(stale, 'sub', 'deeper', 'half-written'), 'w') as handle:
        handle.write('x')
    nobody = pwd.getpwnam('nobody')
    for top, dirs, files in os.walk(stale, topdown=False):
        for name in files + dirs:
            os.lchown(os.path.join(top, name), nobody.pw_uid, nobody.pw_gid)
        os.chmod(top, 0o555)
    os.lchown(stale, nobody.pw_uid, nobody.pw_gid)
    return stale


def realise(root, caches, closure):
    return run_playbook(PLAY, extra_vars=dict(
        paths=[closure.top], root=str(root), substituters=[caches['xz'].url],
        keys=[caches['xz'].public_key]))


@pytest.fixture
def outside(tmp_path):
    directory = tmp_path / 'outside'
    directory.mkdir()
    (directory / 'precious').write_text('keep me')
    directory.chmod(0o750)
    return directory


@pytest.mark.slow
def test_stale_tree_of_another_user_is_replaced_and_nothing_outside_is_touched(
        caches, small_closure, alt_root, outside):
    stale = stale_copy(alt_root, small_closure.by_name('small-lib'), outside)
    result = realise(alt_root, caches, small_closure)
    result.assert_ok()
    assert (outside / 'precious').read_text() == 'keep me'
    assert oct(os.stat(str(outside)).st_mode & 0o777) == oct(0o750)
    assert not os.path.islink(stale)
    nix.verify_store(str(alt_root))
    assert nix.valid_paths(str(alt_root)) == set(small_closure.paths)
    assert nix.unregistered_entries(str(alt_root)) == []


@pytest.mark.slow
def test_stale_tree_that_cannot_be_removed_is_a_clean_error_naming_it(
        caches, small_closure, alt_root, outside):
    stale = stale_copy(alt_root, small_closure.by_name('small-lib'), outside)
    stuck = os.path.join(stale, 'sub', 'deeper', 'half-written')
    subprocess.run(['chattr', '+i', stuck], check=True)
    try:
        result = realise(alt_root, caches, small_closure)
    finally:
        subprocess.run(['chattr', '-i', stuck], check=True)
    result.assert_failed()
    failed = result.registered('realised')
    assert failed['error'] == 'StoreError', failed
    assert stale in failed['msg'] and 'half-written' in failed['msg']
    assert 'Operation not permitted' in failed['msg']
    assert 'Traceback' not in result.stdout + result.stderr
    assert 'MODULE FAILURE' not in result.stdout + result.stderr
    nix.verify_store(str(alt_root))
    valid = nix.valid_paths(str(alt_root))
    assert small_closure.by_name('small-lib') not in valid
    for path in valid:   # what is valid is a closed set
        assert set(nix.references(path, root=str(alt_root))) <= valid


def test_temporary_copies_of_dead_runs_go_and_those_of_live_runs_stay(
        caches, small_closure, alt_root):
    """A run downloads without holding the path's lock, so another run's cleanup must
    leave its temporary directory alone while it lives, and remove it once it is gone."""
    target = small_closure.by_name('small-note')
    store_dir = alt_root / 'nix' / 'store'
    store_dir.mkdir(parents=True)
    gone = subprocess.run(['sh', '-c', 'echo $$'], capture_output=True, text=True,
                          check=True).stdout.strip()
    names = {'dead': '.nixcache-tmp-%s-0123456789ab-%s' % (gone, os.path.basename(target)),
             'live': '.nixcache-tmp-1-0123456789ab-%s' % os.path.basename(target),
             'old': '.nixcache-tmp-0123456789ab-%s' % os.path.basename(target)}
    for name in names.values():
        (store_dir / name).mkdir()
        (store_dir / name / 'partial').write_text('x')
    store, subject = realiser(alt_root, [caches['xz'].url], [caches['xz'].public_key])
    with store:
        subject.realise([StorePath.parse(target)])
    assert sorted(nix.unregistered_entries(str(alt_root))) == [names['live']]
    nix.verify_store(str(alt_root))
