# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ed25519 (RFC 8032) in pure Python, for hosts without ``cryptography`` or PyNaCl.

Points are kept in extended twisted Edwards coordinates (X, Y, Z, T) with x = X/Z,
y = Y/Z and x*y = T/Z, so that adding needs no field inversion.  Verification follows
RFC 8032 section 5.1.7 and, like libsodium, refuses a non-canonical S, points that do
not decode and public keys of small order.  This is not constant time: it is meant for
verifying public signatures; signing is only offered for tests and tools.
"""

import hashlib
from typing import Optional, Tuple

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493  # order of the base point
D = -121665 * pow(121666, P - 2, P) % P
SQRT_MINUS_ONE = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def _add(first, second):
    x1, y1, z1, t1 = first
    x2, y2, z2, t2 = second
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _negate(point):
    x, y, z, t = point
    return (-x % P, y, z, -t % P)


def _recover_x(y, sign):
    """The x of the curve point with this y and x's lowest bit, or None."""
    if y >= P:
        return None
    square = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if square == 0:
        return None if sign else 0
    x = pow(square, (P + 3) // 8, P)
    if (x * x - square) % P:
        x = x * SQRT_MINUS_ONE % P
    if (x * x - square) % P:
        return None
    return P - x if (x & 1) != sign else x


def decode_point(data: bytes) -> Optional[Tuple[int, int, int, int]]:
    """The point of a 32-byte encoding, or None when it is not a canonical curve point."""
    if len(data) != 32:
        return None
    number = int.from_bytes(data, 'little')
    y, sign = number & ((1 << 255) - 1), number >> 255
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


def encode_point(point: Tuple[int, int, int, int]) -> bytes:
    x, y, z = point[:3]
    inverse = pow(z, P - 2, P)
    x, y = x * inverse % P, y * inverse % P
    return (y | ((x & 1) << 255)).to_bytes(32, 'little')


BASE = decode_point((4 * pow(5, P - 2, P) % P).to_bytes(32, 'little'))


def _double_scalar_multiply(scalar1, point1, scalar2, point2):
    """scalar1 * point1 + scalar2 * point2, sharing the doublings (Straus' trick)."""
    both = _add(point1, point2)
    result = IDENTITY
    for bit in reversed(range(max(scalar1.bit_length(), scalar2.bit_length()))):
        result = _add(result, result)
        pick = ((scalar1 >> bit) & 1, (scalar2 >> bit) & 1)
        if pick == (1, 1):
            result = _add(result, both)
        elif pick == (1, 0):
            result = _add(result, point1)
        elif pick == (0, 1):
            result = _add(result, point2)
    return result


def _multiply(scalar, point):
    return _double_scalar_multiply(scalar, point, 0, IDENTITY)


def _hash_to_scalar(*parts):
    return int.from_bytes(hashlib.sha512(b''.join(parts)).digest(), 'little') % L


def _has_small_order(point):
    return encode_point(_multiply(8, point)) == encode_point(IDENTITY)


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` (64 bytes) is valid for ``message`` under ``public_key`` (32 bytes)."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    public_point = decode_point(public_key)
    if public_point is None or _has_small_order(public_point):
        return False
    encoded_r, s = signature[:32], int.from_bytes(signature[32:], 'little')
    if s >= L or decode_point(encoded_r) is None:
        return False
    h = _hash_to_scalar(encoded_r, public_key, message)
    # [S]B - [h]A must be R.
    return encode_point(_double_scalar_multiply(s, BASE, h, _negate(public_point))) == encoded_r


def _expand_seed(seed):
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], 'little')
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    return scalar, digest[32:]


def public_key_of(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte secret seed."""
    scalar = _expand_seed(seed)[0]
    return encode_point(_multiply(scalar, BASE))


def sign(seed: bytes, message: bytes) -> bytes:
    """The 64-byte signature of ``message`` by the key with this 32-byte seed."""
    scalar, prefix = _expand_seed(seed)
    public_key = encode_point(_multiply(scalar, BASE))
    r = _hash_to_scalar(prefix, message)
    encoded_r = encode_point(_multiply(r, BASE))
    h = _hash_to_scalar(encoded_r, public_key, message)
    return encoded_r + ((r + h * scalar) % L).to_bytes(32, 'little')
