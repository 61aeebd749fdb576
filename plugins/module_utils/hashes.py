# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nix hash strings (sha256 only, as binary caches use) and hashing a stream as it flows."""

import base64
import binascii
import hashlib

from ansible_collections.nixcache.closure.plugins.module_utils import nixbase32
from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidHash

SHA256_SIZE = 32


def parse_hash(text: str, algorithm: str = 'sha256') -> bytes:
    """The digest of ``sha256:<base32|base16|base64>`` or SRI ``sha256-<base64>``."""
    if not isinstance(text, str):
        raise InvalidHash('a hash must be a string', found=repr(text))
    if text.startswith(algorithm + '-'):
        return _digest_from_base64(text[len(algorithm) + 1:], text)
    prefix, sep, encoded = text.partition(':')
    if not sep or prefix != algorithm:
        raise InvalidHash('expected a %s hash as "%s:..." or "%s-..."' % (algorithm, algorithm, algorithm),
                          found=text)
    if len(encoded) == nixbase32.encoded_length(SHA256_SIZE):
        return nixbase32.decode(encoded)
    if len(encoded) == 2 * SHA256_SIZE:
        try:
            return binascii.unhexlify(encoded)
        except (binascii.Error, ValueError):
            raise InvalidHash('invalid base16 hash', found=text) from None
    return _digest_from_base64(encoded, text)


def _digest_from_base64(encoded, text):
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidHash('invalid base64 hash', found=text) from None
    if len(digest) != SHA256_SIZE:
        raise InvalidHash('a sha256 hash has %d bytes, not %d' % (SHA256_SIZE, len(digest)), found=text)
    return digest


def format_base32(digest: bytes) -> str:
    return 'sha256:' + nixbase32.encode(digest)


def format_base16(digest: bytes) -> str:
    return 'sha256:' + binascii.hexlify(digest).decode('ascii')


def format_sri(digest: bytes) -> str:
    return 'sha256-' + base64.b64encode(digest).decode('ascii')


class HashingReader(object):
    """Passes a stream through, hashing (sha256) and counting every byte read."""

    def __init__(self, stream):
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size=-1):
        data = self._stream.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def digest(self):
        return self._hash.digest()
