# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nix signing keys and narinfo signatures.

Keys and signatures are written ``<name>:<base64>``: a public key holds 32 bytes, a
secret key 64 (seed then public key, as libsodium keeps them), a signature 64.  A
narinfo is trusted when one of its ``Sig`` lines verifies its fingerprint under a
trusted key of the same name.

Ed25519 comes from the interpreter's own OpenSSL library through ``ctypes`` (see
``libcrypto``) when it has one, else ``cryptography``, else PyNaCl, else the pure-Python
implementation in ``ed25519``, so a host with only the standard library verifies too.
``backends()`` lists those available, the first one is used; each optional package is
imported only when a signature is first checked, so a run that checks none pays nothing.
"""

import base64
import binascii
import importlib
import threading
from typing import Any, Iterable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidKey, UntrustedPath
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR

PUBLIC_KEY_SIZE = 32
SECRET_KEY_SIZE = 64
SIGNATURE_SIZE = 64


class _ImportedBackend(object):
    """A backend whose implementation (anything with ``verify`` and ``sign``) is imported
    the first time it is used: ``load()`` returns it, or None when this host has none."""

    def __init__(self, name, load):
        self.name = name
        self._load = load

    def available(self):
        return self._load() is not None

    def verify(self, public_key, signature, message):
        return self._load().verify(public_key, signature, message)

    def sign(self, seed, message):
        return self._load().sign(seed, message)


def _libcrypto():
    from ansible_collections.nixcache.closure.plugins.module_utils import libcrypto
    return libcrypto.load()


def _ed25519():
    from ansible_collections.nixcache.closure.plugins.module_utils import ed25519
    return ed25519


LibcryptoBackend = _ImportedBackend('libcrypto', _libcrypto)
PurePythonBackend = _ImportedBackend('python', _ed25519)


def _importable(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


class CryptographyBackend(object):
    name = 'cryptography'

    @staticmethod
    def available():
        return _importable('cryptography.hazmat.primitives.asymmetric.ed25519')

    @staticmethod
    def verify(public_key, signature, message):
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    @staticmethod
    def sign(seed, message):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


class NaclBackend(object):
    name = 'nacl'

    @staticmethod
    def available():
        return _importable('nacl.signing')

    @staticmethod
    def verify(public_key, signature, message):
        import nacl.exceptions
        import nacl.signing
        try:
            nacl.signing.VerifyKey(public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            return False
        return True

    @staticmethod
    def sign(seed, message):
        import nacl.signing
        return nacl.signing.SigningKey(seed).sign(message).signature


# Fastest first: no import to pay and the GIL released, then the optional packages.
CANDIDATES = (LibcryptoBackend, CryptographyBackend, NaclBackend, PurePythonBackend)
_available = []
_available_lock = threading.Lock()


def backends() -> List[Any]:
    """The backends this interpreter can use, in order of preference (found once, by
    one thread: the planner's threads check signatures at the same time, and imports
    racing in threads can fail)."""
    with _available_lock:
        if not _available:
            _available.extend(backend for backend in CANDIDATES if backend.available())
        return list(_available)


def default_backend() -> Any:
    return backends()[0]


def _split(text, size, what):
    """(name, bytes) of ``<name>:<base64>``; InvalidKey naming the text when it is not one."""
    if not isinstance(text, str):
        raise InvalidKey('a %s must be a string "name:base64"' % what, found=repr(text))
    name, sep, encoded = text.partition(':')
    if not sep or not name or not encoded:
        raise InvalidKey('a %s must look like "name:base64"' % what, found=text)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey('%s "%s" is not valid base64' % (what, name), found=text) from None
    if len(data) != size:
        raise InvalidKey('%s "%s" holds %d bytes, not %d' % (what, name, len(data), size),
                         found=text)
    return name, data


class PublicKey(object):
    def __init__(self, name: str, key: bytes) -> None:
        self.name = name
        self.key = key

    @classmethod
    def parse(cls, text: str) -> 'PublicKey':
        return cls(*_split(text.strip() if isinstance(text, str) else text,
                           PUBLIC_KEY_SIZE, 'public key'))

    def verify(self, message: bytes, signature: bytes, backend: Any = None) -> bool:
        return (backend or default_backend()).verify(self.key, signature, message)

    def __str__(self):
        return '%s:%s' % (self.name, base64.b64encode(self.key).decode('ascii'))

    def __eq__(self, other):
        return isinstance(other, PublicKey) and (self.name, self.key) == (other.name, other.key)

    def __hash__(self):
        return hash((self.name, self.key))


class SecretKey(object):
    def __init__(self, name: str, seed: bytes) -> None:
        self.name = name
        self.seed = seed

    @classmethod
    def parse(cls, text: str) -> 'SecretKey':
        name, data = _split(text.strip() if isinstance(text, str) else text,
                            SECRET_KEY_SIZE, 'secret key')
        key = cls(name, data[:32])
        if key.public_key().key != data[32:]:
            raise InvalidKey('secret key "%s" does not match its public half' % name)
        return key

    def public_key(self) -> PublicKey:
        return PublicKey(self.name, _ed25519().public_key_of(self.seed))

    def sign(self, message: bytes, backend: Any = None) -> str:
        """A ``Sig`` value: ``<name>:<base64 signature>``."""
        signature = (backend or default_backend()).sign(self.seed, message)
        return '%s:%s' % (self.name, base64.b64encode(signature).decode('ascii'))


class TrustedKeys(object):
    """The public keys a user trusts, parsed up front so that a bad one is named at once."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self.keys = [PublicKey.parse(text) for text in texts]

    @property
    def names(self) -> List[str]:
        return [key.name for key in self.keys]

    def __len__(self):
        return len(self.keys)

    def __iter__(self):
        return iter(self.keys)

    def signer_of(self, message: bytes, sigs: Iterable[str], backend: Any = None) -> Optional[str]:
        """The name of the first trusted key with a valid signature among ``sigs``, or None."""
        for sig in sigs:
            name, sep, encoded = sig.partition(':')
            candidates = [key for key in self.keys if key.name == name]
            if not sep or not candidates:
                continue
            try:
                signature = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(signature) != SIGNATURE_SIZE:
                continue
            if any(key.verify(message, signature, backend) for key in candidates):
                return name
        return None


def verify_narinfo(narinfo: NarInfo, trusted_keys: TrustedKeys, store_dir: str = STORE_DIR) -> str:
    """The name of the trusted key that signed ``narinfo``; UntrustedPath if there is none."""
    signer = trusted_keys.signer_of(narinfo.fingerprint(store_dir), narinfo.sigs)
    if signer is not None:
        return signer
    found = ', '.join(sig.partition(':')[0] for sig in narinfo.sigs) or 'no signatures'
    expected = ', '.join(trusted_keys.names) or 'no trusted keys'
    if not narinfo.sigs:
        message = 'narinfo is not signed and signatures are required'
    else:
        message = 'no signature on the narinfo verifies under a trusted key'
    raise UntrustedPath(message, path=narinfo.store_path.path(store_dir),
                        expected=expected, found=found)
