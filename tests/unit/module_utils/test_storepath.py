"""Store paths: strict parsing is the first defence against escaping the store."""
import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidStorePath
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import (
    StorePath,
    references_first,
)

HASH = 'pbwxn9xhigdm89rg5pl56h36qncc8nyr'


def test_parse_and_print():
    path = StorePath.parse('/nix/store/%s-postgresql-15.8' % HASH)
    assert (path.hash_part, path.name) == (HASH, 'postgresql-15.8')
    assert path.base == '%s-postgresql-15.8' % HASH
    assert str(path) == '/nix/store/%s-postgresql-15.8' % HASH
    assert path.path('/opt/store') == '/opt/store/%s-postgresql-15.8' % HASH
    assert StorePath.parse('/opt/store/%s-x' % HASH, '/opt/store/') == StorePath(HASH, 'x')
    assert StorePath.from_base('%s-a+b=c?d_e.f' % HASH).name == 'a+b=c?d_e.f'


@pytest.mark.parametrize('text', [
    '/nix/store/%s-x/bin/sh' % HASH,          # below a store path
    '/nix/store/%s-..' % HASH,                # name starts with a dot
    '/nix/store/%s-.hidden' % HASH,
    '/nix/store/%s-' % HASH,                  # empty name
    '/nix/store/%s-a b' % HASH,               # space
    '/nix/store/%s-a\0b' % HASH,
    '/nix/store/%s-%s' % (HASH, 'n' * 212),   # name too long
    '/nix/store/%s-x' % HASH[:-1],            # hash too short
    '/nix/store/%s-x' % HASH.replace('p', 'e'),  # 'e' is not Nix base32
    '/nix/store/../etc/%s-x' % HASH,
    '/nix/storex/%s-x' % HASH,
    'nix/store/%s-x' % HASH,
    '/etc/passwd',
    '',
    None,
])
def test_malformed_paths_are_refused(text):
    with pytest.raises(InvalidStorePath):
        StorePath.parse(text)


def test_ordering_and_hashing_follow_the_base_name():
    a, b = StorePath('0' * 32, 'b'), StorePath('1' * 32, 'a')
    assert sorted([b, a]) == [a, b]
    assert len({a, StorePath('0' * 32, 'b')}) == 1


def test_references_first_puts_dependencies_before_dependants():
    lib, tool, env, other = (StorePath(c * 32, n) for c, n in
                             (('1', 'lib'), ('2', 'tool'), ('3', 'env'), ('4', 'other')))
    refs = {lib: [lib], tool: [lib], env: [tool, lib, env, other], other: []}
    order = references_first([env, tool, lib], lambda p: refs[p])
    assert order == [lib, tool, env]


def test_references_first_survives_a_claimed_cycle():
    a, b = StorePath('1' * 32, 'a'), StorePath('2' * 32, 'b')
    refs = {a: [b], b: [a]}
    assert sorted(references_first([a, b], lambda p: refs[p])) == [a, b]


def test_content_addressed_path_as_nix_profile_computes_it():
    from ansible_collections.nixcache.closure.plugins.module_utils.storepath import (
        fixed_output_ca,
        make_fixed_output_path,
    )
    from nixtest import vectors
    digest = bytes.fromhex(vectors.PROFILE_NAR_HASH16)
    references = [StorePath.parse(p) for p in reversed(vectors.PROFILE_REFERENCES)]
    assert str(make_fixed_output_path('profile', digest, references)) == vectors.PROFILE_PATH
    assert fixed_output_ca(digest) == vectors.PROFILE_CA
    # the references are part of the path: another set gives another path
    assert str(make_fixed_output_path('profile', digest, references[:1])) != vectors.PROFILE_PATH
