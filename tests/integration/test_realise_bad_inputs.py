"""Bad caches and bad input: a clear error naming path and cache, and nothing left behind.

Every case starts from a real cache written by Nix (uncompressed, so the NARs can be
edited), copies the small closure's files, spoils one thing, and realises into a fresh
root.  Afterwards the root must hold only fully valid, registered paths: real
``nix-store --verify --check-contents`` passes and no stray directory or lock remains.
"""
import hashlib
import struct
import subprocess

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import nix
from nixtest.http import CacheServer
from nixtest.spoil import CacheCopy, attempt, leaf_of, realiser


def nar_string(data):
    return struct.pack('<Q', len(data)) + data + b'\0' * (-len(data) % 8)


def nar(*tokens):
    return b''.join(nar_string(token) for token in tokens)


def directory_nar(*names):
    """A NAR of a directory whose entries (given raw, in this order) are empty files."""
    body = [b'nix-archive-1', b'(', b'type', b'directory']
    for name in names:
        body += [b'entry', b'(', b'name', name, b'node', b'(', b'type', b'regular',
                 b'contents', b'', b')', b')']
    return nar(*(body + [b')']))


@pytest.fixture
def spoilable(caches, small_closure, nix_keys, tmp_path):
    return CacheCopy(caches['none'].directory, tmp_path / 'cache', small_closure.paths,
                     nix_keys.trusted.secret_file)


def assert_nothing_half_done(root):
    """Only complete, registered paths: Nix agrees, and no temp dir or lock is left."""
    nix.verify_store(str(root))
    assert nix.unregistered_entries(str(root)) == []


def test_tampered_nar_content(spoilable, small_closure, nix_keys, alt_root):
    target = leaf_of(small_closure)
    nar_file = spoilable.nar_path(target)
    with open(nar_file, 'rb') as handle:
        data = bytearray(handle.read())
    # Flip the first byte of the first regular file's contents: the NAR stays well-formed.
    marker = nar_string(b'contents')
    offset = data.index(marker) + len(marker)
    assert struct.unpack('<Q', bytes(data[offset:offset + 8]))[0] > 0
    data[offset + 8] ^= 0xff
    with open(nar_file, 'wb') as handle:
        handle.write(bytes(data))
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [small_closure.top])
    assert isinstance(error, errors.HashMismatch)
    assert error.path == target and error.cache == spoilable.url
    assert error.expected == spoilable.narinfo(target).nar_hash and error.found != error.expected
    assert_nothing_half_done(alt_root)
    assert target not in nix.valid_paths(str(alt_root))


def test_wrong_nar_hash_signed_by_trusted_key(spoilable, small_closure, nix_keys, alt_root):
    target = small_closure.top
    info = spoilable.narinfo(target)
    other = spoilable.narinfo(leaf_of(small_closure))
    info.nar_hash, info.nar_digest = other.nar_hash, other.nar_digest
    spoilable.write_narinfo(info)
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [target])
    assert isinstance(error, errors.HashMismatch)
    assert error.path == target and error.expected == other.nar_hash
    assert_nothing_half_done(alt_root)
    assert target not in nix.valid_paths(str(alt_root))


def test_wrong_nar_size_signed_by_trusted_key(spoilable, small_closure, nix_keys, alt_root):
    target = leaf_of(small_closure)
    info = spoilable.narinfo(target)
    real_size = info.nar_size
    info.nar_size = real_size + 8
    spoilable.write_narinfo(info)
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [target])
    assert isinstance(error, (errors.HashMismatch, errors.InvalidNar))
    assert error.path == target
    assert_nothing_half_done(alt_root)
    assert nix.valid_paths(str(alt_root)) == set()


def test_unsigned_narinfo_is_refused(spoilable, small_closure, nix_keys, alt_root):
    target = leaf_of(small_closure)
    info = spoilable.narinfo(target)
    info.sigs = []
    spoilable.write_narinfo(info, sign=False)
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [target])
    assert isinstance(error, errors.UntrustedPath)
    assert error.path == target and error.cache == spoilable.url
    assert nix_keys.trusted.name in error.expected
    assert nix.store_entries(str(alt_root)) == []


def test_unsigned_narinfo_is_accepted_when_signatures_are_not_required(
        spoilable, small_closure, nix_keys, alt_root):
    target = leaf_of(small_closure)
    info = spoilable.narinfo(target)
    info.sigs = []
    spoilable.write_narinfo(info, sign=False)
    store, subject = realiser(alt_root, [spoilable.url], [], require_sigs=False)
    with store:
        report = subject.realise([StorePath.parse(target)]).as_dict()
    assert report['fetched'] == [target]
    nix.verify_store(str(alt_root))


def test_signature_by_untrusted_key_is_refused(spoilable, small_closure, nix_keys, alt_root):
    error = attempt(alt_root, [spoilable.url], [nix_keys.untrusted.public], [small_closure.top])
    assert isinstance(error, errors.UntrustedPath)
    assert nix_keys.trusted.name in error.found and nix_keys.untrusted.name in error.expected
    assert nix.valid_paths(str(alt_root)) == set()


def test_same_name_other_key_is_refused(spoilable, small_closure, nix_keys, alt_root):
    """A key with the trusted key's name but other bytes must not verify."""
    impostor = '%s:%s' % (nix_keys.trusted.name, nix_keys.untrusted.public.split(':', 1)[1])
    error = attempt(alt_root, [spoilable.url], [impostor], [small_closure.top])
    assert isinstance(error, errors.UntrustedPath)


@pytest.mark.parametrize('spoil', ['%', ' ', 'A', '=='])
def test_malformed_trusted_key_is_named(spoil, nix_keys):
    bad = nix_keys.trusted.public[:-4] + spoil + nix_keys.trusted.public[-4:]
    with pytest.raises(errors.InvalidKey) as raised:
        TrustedKeys([nix_keys.untrusted.public, bad])
    assert bad in str(raised.value)


def test_narinfo_for_another_path_is_refused(spoilable, small_closure, nix_keys, alt_root):
    target, other = small_closure.top, leaf_of(small_closure)
    spoilable.write_narinfo(spoilable.narinfo(other), hash_part=StorePath.parse(target).hash_part)
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [target])
    assert isinstance(error, errors.InvalidNarInfo)
    assert error.expected == target and error.found == other and error.cache == spoilable.url
    assert nix.valid_paths(str(alt_root)) == set()


@pytest.mark.parametrize('names', [
    [b'..'], [b'.'], [b'a/b'], [b'a\0b'], [b''], [b'b', b'a'], [b'a', b'a'],
], ids=['dotdot', 'dot', 'slash', 'nul', 'empty', 'unsorted', 'duplicate'])
def test_unsafe_nar_is_refused_and_leaves_nothing(names, spoilable, small_closure, nix_keys, alt_root):
    """A correctly signed narinfo whose NAR (hash and size right) is unsafe to unpack."""
    target = leaf_of(small_closure)
    data = directory_nar(*names)
    info = spoilable.narinfo(target)
    with open(spoilable.nar_path(target), 'wb') as handle:
        handle.write(data)
    digest = hashlib.sha256(data).digest()
    info.nar_digest, info.nar_hash, info.nar_size = digest, format_base32(digest), len(data)
    info.file_hash, info.file_size = None, None
    spoilable.write_narinfo(info)
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [target])
    assert isinstance(error, errors.InvalidNar)
    assert error.path == target and error.cache == spoilable.url
    assert_nothing_half_done(alt_root)
    assert nix.store_entries(str(alt_root)) == []


def test_absurd_length_is_refused(spoilable, small_closure, nix_keys, alt_root):
    target = leaf_of(small_closure)
    data = nar(b'nix-archive-1', b'(', b'type', b'regular', b'contents') + struct.pack('<Q', 2 ** 62)
    with open(spoilable.nar_path(target), 'wb') as handle:
        handle.write(data)
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [target])
    assert isinstance(error, (errors.InvalidNar, errors.HashMismatch))
    assert_nothing_half_done(alt_root)
    assert nix.store_entries(str(alt_root)) == []


def test_failure_midway_keeps_only_complete_closures(spoilable, small_closure, nix_keys, alt_root):
    """When the top path fails, its complete dependencies stay valid; the top is absent."""
    target = small_closure.top
    with open(spoilable.nar_path(target), 'r+b') as handle:
        handle.seek(200)
        handle.write(b'\xff')
    error = attempt(alt_root, [spoilable.url], [nix_keys.trusted.public], [target])
    assert error.path == target
    assert_nothing_half_done(alt_root)
    valid = set(nix.valid_paths(str(alt_root)))
    assert target not in valid
    for path in valid:  # whatever stayed is a closed set: Nix's invariant holds
        assert set(nix.references(path, root=str(alt_root))) <= valid


def test_cache_that_refuses_connections(small_closure, nix_keys, alt_root):
    import socket
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        dead = 'http://127.0.0.1:%d' % probe.getsockname()[1]
    error = attempt(alt_root, [dead], [nix_keys.trusted.public], [small_closure.top])
    assert isinstance(error, (errors.CacheUnavailable, errors.PathNotInCaches))
    assert dead in str(error)
    assert small_closure.top in str(error)


def test_cache_that_stalls_times_out(caches, small_closure, nix_keys, alt_root):
    with CacheServer(caches.root) as server:
        server.fault('*.narinfo', delay=5)
        url = server.url_for('none')
        error = attempt(alt_root, [url], [nix_keys.trusted.public], [small_closure.top])
    assert url in str(error) and small_closure.top in str(error)


def test_path_missing_everywhere_names_every_cache(caches, nix_keys, alt_root):
    missing = '/nix/store/' + '0' * 32 + '-not-there'
    urls = [caches['xz'].url, caches['none'].url]
    error = attempt(alt_root, urls, [nix_keys.trusted.public], [missing])
    assert isinstance(error, errors.PathNotInCaches)
    assert all(url in str(error) for url in urls) and missing in str(error)


def test_bad_store_path_input_is_refused():
    for text in ['/nix/store/../etc/passwd', '/nix/store/' + 'e' * 32 + '-x',
                 '/etc/passwd', '/nix/store/' + '0' * 32 + '-a/b']:
        with pytest.raises(errors.InvalidStorePath):
            StorePath.parse(text)


def test_too_little_space_is_refused_before_anything_is_fetched(
        caches, small_closure, nix_keys, tmp_path):
    """A real small file system (tmpfs): the error gives both numbers; no NAR is touched."""
    root = tmp_path / 'small-disk'
    root.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(root)], check=True)
    try:
        error = attempt(root, [caches['none'].url], [nix_keys.trusted.public], [small_closure.top])
        assert isinstance(error, errors.InsufficientSpace)
        assert str(small_closure.nar_size) in error.expected and 'free' in error.found
        assert nix.store_entries(str(root)) == [] and nix.valid_paths(str(root)) == set()
    finally:
        subprocess.run(['umount', str(root)], check=True)
