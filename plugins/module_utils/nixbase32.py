# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nix's own base32: the alphabet lacks e, o, t and u, and the digest is read as one
little-endian number whose 5-bit groups are written most significant first."""

import re

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidHash

ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz'
_VALUES = dict((char, value) for value, char in enumerate(ALPHABET))
# a character for each group of five bits written as text ('00000' -> '0', ...)
_GROUPS = dict((format(value, '05b'), char) for value, char in enumerate(ALPHABET))
_GROUP = re.compile('.{5}')


def encoded_length(size: int) -> int:
    """Characters needed for ``size`` bytes."""
    return (size * 8 + 4) // 5


def encode(data: bytes) -> str:
    # the number's bits, most significant first, cut into groups of five: no Python loop
    bits = format(int.from_bytes(data, 'little'), '0%db' % (5 * encoded_length(len(data))))
    return ''.join(map(_GROUPS.__getitem__, _GROUP.findall(bits)))


def decode(text: str) -> bytes:
    size = len(text) * 5 // 8
    if encoded_length(size) != len(text):
        raise InvalidHash('invalid length %d for Nix base32' % len(text), found=text)
    number = 0
    for char in text:
        value = _VALUES.get(char)
        if value is None:
            raise InvalidHash('invalid character %r in Nix base32' % char, found=text)
        number = (number << 5) | value
    if number >> (8 * size):
        raise InvalidHash('Nix base32 string has bits beyond its length', found=text)
    return number.to_bytes(size, 'little')


def is_valid(text: str, size: int) -> bool:
    """Whether ``text`` is the Nix base32 form of exactly ``size`` bytes."""
    try:
        return len(text) == encoded_length(size) and len(decode(text)) == size
    except InvalidHash:
        return False
