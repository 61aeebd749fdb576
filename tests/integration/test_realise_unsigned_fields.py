"""Fields the signature does not cover, added to a correctly signed narinfo.

The fingerprint covers StorePath, NarHash, NarSize and References only: anyone between
the signer and us can change CA, Deriver, FileHash, System or add Sig lines.  Whatever
we accept must leave a store real Nix reads (``nix path-info``) and verifies.
"""
import os

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import nix
from nixtest.spoil import CacheCopy, attempt, leaf_of, realiser

VALID_CA = 'fixed:r:sha256:' + '1' * 52


@pytest.fixture
def signed_copy(caches, small_closure, nix_keys, tmp_path):
    cache = CacheCopy(caches['none'].directory, tmp_path / 'cache', small_closure.paths,
                      nix_keys.trusted.secret_file)
    target = leaf_of(small_closure)
    cache.write_narinfo(cache.narinfo(target))     # signed, as the cache had it
    return cache, target


def add_to_narinfo(cache, path, lines):
    """Add ``Key: value`` lines to a narinfo without re-signing it; a line replaces any
    line of its key, except Sig lines, which are added."""
    name = os.path.join(cache.directory, StorePath.parse(path).hash_part + '.narinfo')
    with open(name) as handle:
        kept = handle.read().splitlines()
    for line in lines:
        key = line.partition(':')[0]
        if key != 'Sig':
            kept = [old for old in kept if not old.startswith(key + ':')]
        kept.append(line)
    with open(name, 'w') as handle:
        handle.write(''.join(line + '\n' for line in kept))


def assert_nix_reads_the_store(root, paths):
    nix.verify_store(str(root))
    infos = nix.path_info(str(root), paths)
    assert set(infos) == set(paths)
    assert nix.unregistered_entries(str(root)) == []
    return infos


@pytest.mark.parametrize('field, value', [
    ('CA', 'fixed:r:sha256:not-a-hash'),
    ('CA', 'sha256:' + '1' * 52),
    ('CA', 'text:sha1:' + '1' * 32),
    ('CA', 'fixed:r:sha256:' + '1' * 52 + ' trailing'),
    ('FileHash', 'sha256:zzzz'),
], ids=['ca-bad-hash', 'ca-no-method', 'ca-text-not-sha256', 'ca-trailing', 'filehash'])
def test_malformed_unsigned_field_is_refused_and_named(field, value, signed_copy, nix_keys,
                                                       alt_root):
    cache, target = signed_copy
    add_to_narinfo(cache, target, ['%s: %s' % (field, value)])
    error = attempt(alt_root, [cache.url], [nix_keys.trusted.public], [target])
    assert isinstance(error, errors.InvalidNarInfo)
    assert field in error.message and error.found == value
    assert error.path == target and error.cache == cache.url
    assert nix.valid_paths(str(alt_root)) == set()
    nix.verify_store(str(alt_root))


def test_well_formed_ca_is_kept_and_nix_reads_it(signed_copy, nix_keys, alt_root):
    cache, target = signed_copy
    add_to_narinfo(cache, target, ['CA: ' + VALID_CA])
    store, subject = realiser(alt_root, [cache.url], [nix_keys.trusted.public])
    with store:
        subject.realise([StorePath.parse(target)])
    infos = assert_nix_reads_the_store(alt_root, [target])
    assert infos[target]['ca'] == VALID_CA


def test_signatures_that_cannot_verify_are_not_stored(signed_copy, nix_keys, alt_root):
    cache, target = signed_copy
    junk = ['Sig: no-colon-here', 'Sig: name:not base64!', 'Sig: short:AAAA',
            'System: x86_64-linux; rm -rf /']
    add_to_narinfo(cache, target, junk)
    store, subject = realiser(alt_root, [cache.url], [nix_keys.trusted.public])
    with store:
        subject.realise([StorePath.parse(target)])
    infos = assert_nix_reads_the_store(alt_root, [target])
    signatures = infos[target]['signatures']
    assert len(signatures) == 1 and signatures[0].startswith(nix_keys.trusted.name + ':')
