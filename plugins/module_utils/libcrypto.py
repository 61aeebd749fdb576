# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ed25519 from the OpenSSL library the Python interpreter itself is linked with.

Every CPython with ``ssl`` or ``hashlib`` carries a libcrypto; from OpenSSL 1.1.1 on it
signs and verifies Ed25519.  Through ``ctypes`` (standard library) a host without the
``cryptography`` package still verifies a signature in microseconds instead of the
milliseconds pure Python needs, and outside the GIL.  ``load()`` returns None when no
usable libcrypto is found, or when it fails a known-answer test.
"""

import ctypes
import ctypes.util
import threading
from typing import Optional

from ansible_collections.nixcache.closure.plugins.module_utils.clibrary import bind

NID_ED25519 = 1087
SIGNATURE_SIZE = 64

# RFC 8032, section 7.1, test 1: the empty message.
_TEST_SEED = bytes.fromhex('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60')
_TEST_PUBLIC = bytes.fromhex('d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a')
_TEST_SIGNATURE = bytes.fromhex(
    'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b'
    'd25bf5f0595bbe24655141438e7a100b')

_loaded = None
_load_lock = threading.Lock()


def _library_path():
    """The libcrypto this process has loaded already (through ``_hashlib``), else the
    one the dynamic linker finds."""
    try:
        import _hashlib  # noqa: F401  (loads the interpreter's libcrypto)
    except ImportError:
        pass
    try:
        with open('/proc/self/maps') as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and '/libcrypto.so' in fields[5]:
                    return fields[5]
    except (IOError, OSError):
        pass
    return ctypes.util.find_library('crypto')


class Libcrypto(object):
    """Ed25519 signing and verification through one libcrypto."""

    name = 'libcrypto'

    def __init__(self, library: ctypes.CDLL) -> None:
        c_size_t_p = ctypes.POINTER(ctypes.c_size_t)
        pointer, integer, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        self._new_public = bind(library, 'EVP_PKEY_new_raw_public_key', pointer,
                                integer, pointer, ctypes.c_char_p, size)
        self._new_private = bind(library, 'EVP_PKEY_new_raw_private_key', pointer,
                                 integer, pointer, ctypes.c_char_p, size)
        self._free_key = bind(library, 'EVP_PKEY_free', None, pointer)
        self._new_context = bind(library, 'EVP_MD_CTX_new', pointer)
        self._free_context = bind(library, 'EVP_MD_CTX_free', None, pointer)
        self._verify_init = bind(library, 'EVP_DigestVerifyInit', integer,
                                 pointer, pointer, pointer, pointer, pointer)
        self._verify = bind(library, 'EVP_DigestVerify', integer,
                            pointer, ctypes.c_char_p, size, ctypes.c_char_p, size)
        self._sign_init = bind(library, 'EVP_DigestSignInit', integer,
                               pointer, pointer, pointer, pointer, pointer)
        self._sign = bind(library, 'EVP_DigestSign', integer,
                          pointer, ctypes.c_char_p, c_size_t_p, ctypes.c_char_p, size)
        # failures leave entries in OpenSSL's per-thread error queue, which the ssl
        # module would otherwise find later
        self._clear_errors = bind(library, 'ERR_clear_error', None)

    def verify(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        if len(public_key) != 32 or len(signature) != SIGNATURE_SIZE:
            return False
        key = self._new_public(NID_ED25519, None, public_key, len(public_key))
        if not key:
            self._clear_errors()
            return False
        context = self._new_context()
        try:
            if not context or self._verify_init(context, None, None, None, key) != 1:
                raise MemoryError('libcrypto could not start an Ed25519 verification')
            valid = self._verify(context, signature, len(signature), message, len(message)) == 1
            if not valid:
                self._clear_errors()
            return valid
        finally:
            self._free_context(context)
            self._free_key(key)

    def sign(self, seed: bytes, message: bytes) -> bytes:
        key = self._new_private(NID_ED25519, None, seed, len(seed))
        if not key:
            self._clear_errors()
            raise ValueError('libcrypto refused the Ed25519 seed')
        context = self._new_context()
        try:
            signature = ctypes.create_string_buffer(SIGNATURE_SIZE)
            length = ctypes.c_size_t(SIGNATURE_SIZE)
            if not context or self._sign_init(context, None, None, None, key) != 1 or \
                    self._sign(context, signature, ctypes.byref(length), message, len(message)) != 1:
                self._clear_errors()
                raise ValueError('libcrypto could not sign with Ed25519')
            return signature.raw[:length.value]
        finally:
            self._free_context(context)
            self._free_key(key)

    def works(self) -> bool:
        """The RFC 8032 known answer: a signature made, checked, and a forgery refused."""
        return (self.sign(_TEST_SEED, b'') == _TEST_SIGNATURE
                and self.verify(_TEST_PUBLIC, _TEST_SIGNATURE, b'')
                and not self.verify(_TEST_PUBLIC, _TEST_SIGNATURE, b'x'))


def load() -> Optional[Libcrypto]:
    """The process's Libcrypto, or None when there is no usable one (loaded once)."""
    global _loaded
    with _load_lock:
        if _loaded is None:
            _loaded = False
            try:
                path = _library_path()
                if path:
                    candidate = Libcrypto(ctypes.CDLL(path))
                    if candidate.works():
                        _loaded = candidate
            except (OSError, AttributeError, ValueError, MemoryError):
                _loaded = False
        return _loaded or None
