# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Environments of several packages, merged as Nix's buildenv merges them (the store
paths themselves are compared with real `nix profile install` in
tests/integration/test_profile_packages.py)."""

import io
import json
import os

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import nar
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.userenv import (
    Element,
    ProfileConflict,
    build_environment,
    read_manifest,
)

A = '/nix/store/vxygwb7rm97z1rwphvayz2lvq231zxx6-pkga-1.0'
B = '/nix/store/hi8589gp90zmkvbmm79awz5fd9hwb59n-pkgb-2.0'
C = '/nix/store/6swsqddig6yi7b3hww4sp1sswnv0j8sh-pkgc-3.0'


def write(root, path, text='x'):
    full = os.path.join(str(root), path.lstrip('/'))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'w') as handle:
        handle.write(text)


@pytest.fixture
def root(tmp_path):
    write(tmp_path, A + '/bin/toola')
    write(tmp_path, A + '/share/doc/a.txt')
    write(tmp_path, A + '/share/common')
    os.makedirs(str(tmp_path) + A + '/lib')
    write(tmp_path, B + '/bin/toolb')
    write(tmp_path, B + '/share/doc/b.txt')
    write(tmp_path, B + '/nix-support/propagated-build-inputs')
    write(tmp_path, B + '/.hidden')
    write(tmp_path, C + '/share/common', 'other')
    return tmp_path


def unpacked(environment, tmp_path):
    dest = str(tmp_path / 'unpacked')
    nar.unpack(io.BytesIO(environment.nar), dest)
    return dest


def test_merged_tree_and_manifest(root, tmp_path):
    env = build_environment([Element(StorePath.parse(A)), Element(StorePath.parse(B))],
                            root=str(root))
    dest = unpacked(env, tmp_path)
    assert sorted(os.listdir(dest)) == ['bin', 'lib', 'manifest.json', 'share']
    assert os.readlink(dest + '/lib') == A + '/lib'          # one package: one link
    assert os.readlink(dest + '/bin/toolb') == B + '/bin/toolb'  # several: a directory
    assert os.readlink(dest + '/share/doc/a.txt') == A + '/share/doc/a.txt'
    assert not os.path.lexists(dest + '/nix-support') and not os.path.lexists(dest + '/.hidden')
    with open(dest + '/manifest.json') as handle:
        assert json.load(handle) == {'version': 2, 'elements': [
            {'active': True, 'storePaths': [A]}, {'active': True, 'storePaths': [B]}]}
    assert [str(p) for p in env.info.references] == sorted([A, B])
    assert env.info.ca.startswith('fixed:r:sha256:') and env.store_path.name == 'profile'


def test_same_file_twice_is_a_conflict_naming_both(root):
    with pytest.raises(ProfileConflict) as caught:
        build_environment([Element(StorePath.parse(A)), Element(StorePath.parse(C))],
                          root=str(root))
    assert A + '/share/common' in str(caught.value) and C + '/share/common' in str(caught.value)


def test_a_priority_says_which_wins(root, tmp_path):
    env = build_environment([Element(StorePath.parse(A)), Element(StorePath.parse(C), priority=4)],
                            root=str(root))
    dest = unpacked(env, tmp_path)
    assert os.readlink(dest + '/share/common') == C + '/share/common'
    with open(dest + '/manifest.json') as handle:
        assert json.load(handle)['elements'][1]['priority'] == 4
    other = build_environment([Element(StorePath.parse(A)), Element(StorePath.parse(C), priority=6)],
                              root=str(root))
    assert other.store_path != env.store_path


def test_the_same_packages_give_the_same_path_and_manifest_reads_back(root, tmp_path):
    elements = [Element(StorePath.parse(A)), Element(StorePath.parse(B))]
    first = build_environment(elements, root=str(root))
    assert build_environment(elements, root=str(root)).store_path == first.store_path
    target = str(first.store_path)
    os.makedirs(str(root) + '/nix/store', exist_ok=True)
    nar.unpack(io.BytesIO(first.nar), str(root) + target)
    read = read_manifest(str(root), target)
    assert [(str(e.store_path), e.priority, e.active) for e in read] == [(A, 5, True), (B, 5, True)]
    assert read_manifest(str(root), A) is None


def test_propagated_packages_follow_at_a_lower_priority(root, tmp_path):
    write(root, A + '/nix-support/propagated-user-env-packages', C + '\n')
    env = build_environment([Element(StorePath.parse(A))], root=str(root))
    dest = unpacked(env, tmp_path)
    # C comes along (its share/doc-less tree merges into share/), and where it clashes with
    # A it loses instead of failing: propagated packages have priority 1000 and up
    assert os.readlink(dest + '/share/common') == A + '/share/common'
    assert [str(p) for p in env.info.references] == [A]


def test_a_package_that_is_a_single_file_is_left_out_with_a_warning(root):
    single = '/nix/store/vq3as72cn7nlfp00fksafsqpbc1wr00k-small-note-1.0'
    write(root, single, 'just a file')
    env = build_environment([Element(StorePath.parse(A)), Element(StorePath.parse(single))],
                            root=str(root))
    assert env.warnings == ["not including '%s' in the user environment because it's not a "
                            "directory" % single]


def test_links_are_resolved_inside_the_root(tmp_path):
    from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import resolve
    (tmp_path / 'a/b').mkdir(parents=True)
    os.symlink('/a', str(tmp_path / 'abs'))           # absolute: stays in the root
    os.symlink('../a/b', str(tmp_path / 'a/rel'))
    os.symlink('/../../../a', str(tmp_path / 'up'))  # cannot climb out of the root
    os.symlink('loop', str(tmp_path / 'loop'))
    assert resolve(str(tmp_path), '/abs/b') == '/a/b'
    assert resolve(str(tmp_path), '/abs/rel/missing') == '/a/b/missing'
    assert resolve(str(tmp_path), '/up/b') == '/a/b'
    with pytest.raises(OSError):
        resolve(str(tmp_path), '/loop')
