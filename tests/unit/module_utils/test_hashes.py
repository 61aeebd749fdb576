"""Nix base32 and hash strings, against digests converted by real nix-hash."""
import binascii
import hashlib
import io

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import nixbase32
from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidHash
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import (
    HashingReader,
    format_base16,
    format_base32,
    format_sri,
    parse_hash,
)

from nixtest.vectors import BASE32, BASE32_SHA1


@pytest.mark.parametrize('base16, base32', BASE32 + [BASE32_SHA1])
def test_base32_matches_nix(base16, base32):
    digest = binascii.unhexlify(base16)
    assert nixbase32.encode(digest) == base32
    assert nixbase32.decode(base32) == digest
    assert nixbase32.is_valid(base32, len(digest))


@pytest.mark.parametrize('text', [
    '0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7',    # one character short
    '0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e',   # 'e' is not in the alphabet
    'zmdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73',   # bits beyond 256
])
def test_base32_rejects(text):
    with pytest.raises(InvalidHash):
        nixbase32.decode(text)
    assert not nixbase32.is_valid(text, 32)


def test_every_form_of_a_hash_parses_to_the_same_digest():
    base16, base32 = BASE32[1]
    digest = binascii.unhexlify(base16)
    forms = [format_base32(digest), format_base16(digest), format_sri(digest),
             'sha256:' + format_sri(digest)[len('sha256-'):]]
    assert forms[0] == 'sha256:' + base32
    assert forms[1] == 'sha256:' + base16
    assert forms[2] == 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='
    assert [parse_hash(form) for form in forms] == [digest] * 4


@pytest.mark.parametrize('text', [
    'sha1:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73',
    '0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73',
    'sha256:' + 'g' * 64,
    'sha256-AAAA',
    'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=!',
    None,
])
def test_bad_hashes_are_refused(text):
    with pytest.raises(InvalidHash):
        parse_hash(text)


def test_hashing_reader_counts_and_hashes():
    data = b'x' * 100000
    reader = HashingReader(io.BytesIO(data))
    while reader.read(4096):
        pass
    assert reader.size == len(data)
    assert reader.digest() == hashlib.sha256(data).digest()
