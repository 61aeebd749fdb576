"""Ed25519 and Nix keys: real Nix signatures, RFC 8032 vectors, and every backend agreeing."""
import base64
import binascii
import os
import subprocess
import textwrap

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import ed25519, signing
from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidKey, UntrustedPath
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.signing import (
    PublicKey,
    SecretKey,
    TrustedKeys,
    verify_narinfo,
)

from nixtest.vectors import NARINFO, OTHER_PUBLIC_KEY, PUBLIC_KEY, SECRET_KEY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COLLECTIONS = os.path.join(REPO, 'build', 'collections')

# RFC 8032, section 7.1: tests 1, 2 and 3 (secret seed, public key, message, signature).
RFC8032 = [
    ('9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60',
     'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a',
     '',
     'e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b'),
    ('4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb',
     '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c',
     '72',
     '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00'),
    ('c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7',
     'fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025',
     'af82',
     '6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a'),
]
# Every backend, each skipped where its optional package is not installed.  The
# interpreter's own libcrypto is always there on the supported systems: never skipped.
ALL_BACKENDS = [
    pytest.param(signing.LibcryptoBackend, id='libcrypto'),
    pytest.param(signing.CryptographyBackend, id='cryptography', marks=pytest.mark.skipif(
        not signing.CryptographyBackend.available(), reason='needs the cryptography package')),
    pytest.param(signing.NaclBackend, id='nacl', marks=pytest.mark.skipif(
        not signing.NaclBackend.available(), reason='needs the PyNaCl package')),
    pytest.param(signing.PurePythonBackend, id='python'),
]
unhex = binascii.unhexlify


def test_backends_are_those_available_fastest_first():
    available = [backend for backend in signing.CANDIDATES if backend.available()]
    assert signing.backends() == available
    assert signing.default_backend() is signing.LibcryptoBackend
    # The pure-Python fallback is always there, last.
    assert available[-1] is signing.PurePythonBackend


@pytest.mark.parametrize('backend', ALL_BACKENDS)
@pytest.mark.parametrize('seed, public, message, signature', RFC8032)
def test_rfc8032_vectors(backend, seed, public, message, signature):
    assert backend.sign(unhex(seed), unhex(message)) == unhex(signature)
    assert backend.verify(unhex(public), unhex(signature), unhex(message))
    assert not backend.verify(unhex(public), unhex(signature), unhex(message) + b'x')
    assert ed25519.public_key_of(unhex(seed)) == unhex(public)


def spoiled_signatures(signature):
    """Signatures that must all be refused: flipped bits, S + L, garbage R, wrong length."""
    s = int.from_bytes(signature[32:], 'little')
    yield signature[:10] + bytes([signature[10] ^ 1]) + signature[11:]
    yield signature[:40] + bytes([signature[40] ^ 0x80]) + signature[41:]
    yield signature[:32] + (s + ed25519.L).to_bytes(32, 'little')   # non-canonical S
    yield b'\xff' * 32 + signature[32:]                               # R not a point
    yield signature[:63]
    yield bytes(64)


@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_backends_agree_on_refusals(backend):
    seed, public, message, signature = (unhex(x) for x in RFC8032[2])
    for spoiled in spoiled_signatures(signature):
        assert not backend.verify(public, spoiled, message)
    identity = (1).to_bytes(32, 'little')   # a public key of small order
    assert not backend.verify(identity, signature, message)
    assert not backend.verify(b'\xff' * 32, signature, message)


def test_backends_agree_on_many_messages():
    secret = SecretKey.parse(SECRET_KEY)
    public = secret.public_key()
    for length in range(0, 300, 37):
        message = bytes(range(256)) * 2
        message = message[:length]
        sigs = {backend.name: secret.sign(message, backend) for backend in signing.backends()}
        assert len(set(sigs.values())) == 1
        raw = base64.b64decode(sigs['python'].split(':', 1)[1])
        assert all(public.verify(message, raw, backend) for backend in signing.backends())


def test_nix_key_pair_parses_and_matches():
    secret = SecretKey.parse(SECRET_KEY + '\n')
    assert secret.name == 'nixtest-trusted-1'
    assert secret.public_key() == PublicKey.parse(PUBLIC_KEY)
    assert str(PublicKey.parse(PUBLIC_KEY)) == PUBLIC_KEY


@pytest.mark.parametrize('backend', ALL_BACKENDS)
def test_signature_written_by_nix_verifies(backend):
    info = NarInfo.parse(NARINFO)
    keys = TrustedKeys([OTHER_PUBLIC_KEY, PUBLIC_KEY])
    assert keys.signer_of(info.fingerprint(), info.sigs, backend) == 'nixtest-trusted-1'
    assert verify_narinfo(info, keys) == 'nixtest-trusted-1'
    # Our signature of the same fingerprint is the one Nix wrote (Ed25519 is deterministic).
    assert SecretKey.parse(SECRET_KEY).sign(info.fingerprint(), backend) == info.sigs[0]


@pytest.mark.parametrize('field, value', [
    ('nar_size', 2113), ('nar_hash', 'sha256:' + '0' * 52), ('references', []),
])
def test_any_change_to_signed_fields_breaks_the_signature(field, value):
    info = NarInfo.parse(NARINFO)
    setattr(info, field, value)
    with pytest.raises(UntrustedPath) as raised:
        verify_narinfo(info, TrustedKeys([PUBLIC_KEY]))
    assert raised.value.found == 'nixtest-trusted-1'
    assert raised.value.path.endswith('-small-env-1.0')


def test_untrusted_or_missing_signatures_are_named():
    info = NarInfo.parse(NARINFO)
    with pytest.raises(UntrustedPath) as raised:
        verify_narinfo(info, TrustedKeys([OTHER_PUBLIC_KEY]))
    assert raised.value.expected == 'nixtest-untrusted-1'
    assert raised.value.found == 'nixtest-trusted-1'
    info.sigs = []
    with pytest.raises(UntrustedPath) as raised:
        verify_narinfo(info, TrustedKeys([PUBLIC_KEY]))
    assert raised.value.found == 'no signatures' and 'not signed' in str(raised.value)


def test_key_with_trusted_name_but_other_bytes_does_not_verify():
    impostor = 'nixtest-trusted-1:' + OTHER_PUBLIC_KEY.split(':', 1)[1]
    with pytest.raises(UntrustedPath):
        verify_narinfo(NarInfo.parse(NARINFO), TrustedKeys([impostor]))


def test_malformed_signatures_are_skipped_not_fatal():
    info = NarInfo.parse(NARINFO)
    good = info.sigs[0]
    info.sigs = ['nixtest-trusted-1:%%%', 'nixtest-trusted-1:AAAA', 'no-colon', good]
    assert verify_narinfo(info, TrustedKeys([PUBLIC_KEY])) == 'nixtest-trusted-1'


@pytest.mark.parametrize('text', [
    PUBLIC_KEY[:-5] + '%' + PUBLIC_KEY[-5:],
    PUBLIC_KEY[:-5] + ' ' + PUBLIC_KEY[-5:],
    PUBLIC_KEY[:-5] + 'A' + PUBLIC_KEY[-5:],
    PUBLIC_KEY[:-1],
    PUBLIC_KEY + 'AAAA',
    PUBLIC_KEY.split(':', 1)[1],
    ':' + PUBLIC_KEY.split(':', 1)[1],
    'name:',
    SECRET_KEY,   # a secret key given where a public key belongs
])
def test_malformed_public_keys_are_named(text):
    with pytest.raises(InvalidKey) as raised:
        TrustedKeys([OTHER_PUBLIC_KEY, text])
    assert raised.value.found == text


def test_secret_key_must_match_its_public_half():
    name, encoded = SECRET_KEY.split(':', 1)
    data = bytearray(base64.b64decode(encoded))
    data[40] ^= 1
    with pytest.raises(InvalidKey):
        SecretKey.parse('%s:%s' % (name, base64.b64encode(bytes(data)).decode()))


def test_a_bare_python_checks_signatures_with_its_own_libcrypto():
    """The host's own Python with its standard library only (``-S``: no site packages, so
    no cryptography whatever the machine has installed), as on a fresh machine."""
    python = '/usr/bin/python3'
    if not os.path.exists(python):
        pytest.skip('needs /usr/bin/python3')
    program = textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        from ansible_collections.nixcache.closure.plugins.module_utils import signing
        print(' '.join(backend.name for backend in signing.backends()))
    ''' % COLLECTIONS)
    output = subprocess.run([python, '-S', '-c', program], check=True, stdout=subprocess.PIPE)
    assert output.stdout.decode().split() == ['libcrypto', 'python']
