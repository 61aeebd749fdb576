"""Resources bounded by what the signed metadata says, on crowded hosts.

* Open files: an honest closure with thousands of directories realises through
  ``ansible-playbook`` under ``ulimit -n 256``.
* Disk: a compressed bomb whose signed narinfo says 4 KiB stops once the stream passes
  NarSize, on a 16 MiB tmpfs, long before the file system fills.
* Memory: metadata files larger than 1 MiB are refused before they are read whole.
"""
import gzip
import hashlib
import os
import resource
import subprocess
import time

import pytest
import zstandard

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import SecretKey, TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    CacheOptions,
)
from nixtest import nix
from nixtest.ansible import realise_play, run_playbook
from nixtest.http import CacheServer

MIB = 1 << 20
TEXT_LIMIT = MIB     # the documented limit of a .narinfo or nix-cache-info

PLAY = realise_play()


@pytest.fixture(scope='module')
def many_dirs(nix_keys, tmp_path_factory):
    """Two paths of about 1500 directories each, in a signed zstd cache."""
    top = nix.build('many-dirs.nix')[0]
    paths = nix.closure([top])
    directory = tmp_path_factory.mktemp('many-dirs-cache')
    url = nix.make_file_cache(str(directory), [top], 'zstd', nix_keys.trusted.secret_file)
    return top, paths, url


def count_directories(paths):
    return sum(len(dirs) for path in paths for _top, dirs, _files in os.walk(path)) + len(paths)


@pytest.mark.slow
def test_thousands_of_directories_under_ulimit_256_through_ansible_playbook(
        many_dirs, nix_keys, alt_root):
    top, paths, url = many_dirs
    assert count_directories(paths) > 3000
    result = run_playbook(PLAY, prefix=['prlimit', '--nofile=256', '--'], extra_vars=dict(
        paths=[top], root=str(alt_root), substituters=[url], keys=[nix_keys.trusted.public]))
    result.assert_ok()
    assert sorted(result.registered('realised')['fetched']) == sorted(paths)
    nix.verify_store(str(alt_root))
    assert nix.valid_paths(str(alt_root)) == set(paths)
    assert nix.unregistered_entries(str(alt_root)) == []


# --- a decompression bomb -----------------------------------------------------------

def nar_string(data):
    return len(data).to_bytes(8, 'little') + data + b'\0' * (-len(data) % 8)


def nar_tokens(*tokens):
    return b''.join(nar_string(token) for token in tokens)


def zeros_file_node(size):
    """The tokens of a regular file of ``size`` zero bytes, as pieces to stream."""
    yield nar_tokens(b'(', b'type', b'regular', b'contents') + size.to_bytes(8, 'little')
    left = size
    while left:
        step = min(left, MIB)
        yield bytes(step)
        left -= step
    yield b'\0' * (-size % 8) + nar_string(b')')


def one_huge_file():
    yield nar_string(b'nix-archive-1')
    yield from zeros_file_node(1 << 30)


def many_small_files():
    yield nar_tokens(b'nix-archive-1', b'(', b'type', b'directory')
    for index in range(16384):   # 16384 files of 64 KiB: 1 GiB
        yield nar_tokens(b'entry', b'(', b'name', b'f%05d' % index, b'node')
        yield from zeros_file_node(64 * 1024)
        yield nar_string(b')')
    yield nar_string(b')')


def small_nar_then_zeros():
    yield nar_string(b'nix-archive-1')
    yield from zeros_file_node(4096 - 128)
    for _index in range(1024):
        yield bytes(MIB)


BOMBS = {'one huge file': one_huge_file, 'many small files': many_small_files,
         'small NAR then zeros': small_nar_then_zeros}
DECLARED_NAR_SIZE = 4096


def write_bomb_cache(directory, pieces, secret_key_file):
    """A cache holding one path whose NAR inflates to 1 GiB; its signed narinfo says 4 KiB."""
    os.makedirs(os.path.join(directory, 'nar'))
    nix.write_cache_info(directory)
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    with open(os.path.join(directory, 'nar', 'bomb.nar.zst'), 'wb') as handle:
        for piece in pieces:
            handle.write(compressor.compress(piece))
        handle.write(compressor.flush())
    store_path = StorePath.parse('/nix/store/%s-bomb-1.0' % ('1' * 32))
    info = NarInfo(store_path, 'nar/bomb.nar.zst',
                   format_base32(hashlib.sha256(b'what the cache claims').digest()),
                   DECLARED_NAR_SIZE, compression='zstd')
    with open(secret_key_file) as handle:
        info.sigs = [SecretKey.parse(handle.read().strip()).sign(info.fingerprint())]
    with open(os.path.join(directory, store_path.hash_part + '.narinfo'), 'w') as handle:
        handle.write(info.to_text())
    return store_path


@pytest.fixture
def small_tmpfs(tmp_path):
    root = tmp_path / 'small-disk'
    root.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(['umount', str(root)], check=True)


def used_bytes(mount):
    stats = os.statvfs(str(mount))
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


@pytest.mark.parametrize('bomb', sorted(BOMBS))
def test_decompression_bomb_stops_at_the_signed_nar_size(
        bomb, nix_keys, tmp_path, small_tmpfs):
    """Whichever comes first stops it: the NAR passing NarSize, or the compressed
    stream passing what NarSize allows."""
    cache_dir = str(tmp_path / 'bomb-cache')
    store_path = write_bomb_cache(cache_dir, BOMBS[bomb](), nix_keys.trusted.secret_file)
    store = LocalStore(root=str(small_tmpfs))
    cache = make_substituter('file://' + cache_dir, CacheOptions(retries=0))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.monotonic()
    with store:
        subject = Realiser(store, [cache], TrustedKeys([nix_keys.trusted.public]))
        with pytest.raises(errors.NixCacheError) as raised:
            subject.realise([store_path])
    seconds = time.monotonic() - started
    error = raised.value
    assert isinstance(error, errors.InvalidNar), error
    assert 'NAR size of %d' % DECLARED_NAR_SIZE in error.message
    assert error.path == str(store_path) and error.cache == cache.url
    assert seconds < 10, seconds
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before < 64 * MIB
    assert nix.store_entries(str(small_tmpfs)) == []
    nix.verify_store(str(small_tmpfs))
    assert used_bytes(small_tmpfs) < 10 * MIB    # the database and its reserve, no NAR


def test_compressed_stream_longer_than_the_nar_size_allows_is_cut_off(
        nix_keys, tmp_path, alt_root):
    """A right NAR followed by a million empty gzip members (20 MB that inflate to
    nothing): the download stops a little beyond NarSize instead of running on."""
    directory = str(tmp_path / 'padded-cache')
    os.makedirs(os.path.join(directory, 'nar'))
    nix.write_cache_info(directory)
    data = nar_tokens(b'nix-archive-1', b'(', b'type', b'regular', b'contents', b'hello\n', b')')
    with open(os.path.join(directory, 'nar', 'padded.nar.gz'), 'wb') as handle:
        handle.write(gzip.compress(data) + gzip.compress(b'') * 1000000)
    store_path = StorePath.parse('/nix/store/%s-padded-1.0' % ('2' * 32))
    info = NarInfo(store_path, 'nar/padded.nar.gz', format_base32(hashlib.sha256(data).digest()),
                   len(data), compression='gzip')
    with open(nix_keys.trusted.secret_file) as handle:
        info.sigs = [SecretKey.parse(handle.read().strip()).sign(info.fingerprint())]
    with open(os.path.join(directory, store_path.hash_part + '.narinfo'), 'w') as handle:
        handle.write(info.to_text())
    cache = make_substituter('file://' + directory, CacheOptions(retries=0))
    started = time.monotonic()
    with LocalStore(root=str(alt_root)) as store:
        subject = Realiser(store, [cache], TrustedKeys([nix_keys.trusted.public]))
        with pytest.raises(errors.NixCacheError) as raised:
            subject.realise([store_path])
    assert time.monotonic() - started < 5
    assert isinstance(raised.value, errors.InvalidNar), raised.value
    assert 'beyond what a NAR size of %d bytes allows' % len(data) in raised.value.message
    assert raised.value.path == str(store_path)
    assert nix.store_entries(str(alt_root)) == []
    nix.verify_store(str(alt_root))


# --- oversized metadata -------------------------------------------------------------

def oversized_narinfo_cache(caches, small_closure, nix_keys, directory):
    """A copy of a real narinfo, correctly signed, padded past the limit with lines of
    an unknown key (which Nix ignores)."""
    leaf = small_closure.by_name('small-note')
    hash_part = StorePath.parse(leaf).hash_part
    source = caches['none'].directory
    os.makedirs(os.path.join(directory, 'nar'))
    nix.write_cache_info(directory)
    with open(os.path.join(source, hash_part + '.narinfo')) as handle:
        text = handle.read()
    info = NarInfo.parse(text)
    os.link(os.path.join(source, info.url), os.path.join(directory, info.url))
    padding = ''.join('X-Padding: %s\n' % ('p' * 1000) for _line in range(TEXT_LIMIT // 1000))
    with open(os.path.join(directory, hash_part + '.narinfo'), 'w') as handle:
        handle.write(text + padding)
    return leaf


def test_narinfo_larger_than_the_limit_is_refused(
        caches, small_closure, nix_keys, tmp_path, alt_root):
    directory = str(tmp_path / 'cache')
    leaf = oversized_narinfo_cache(caches, small_closure, nix_keys, directory)
    with CacheServer(directory) as server:
        for url in ('file://' + directory, server.url):
            cache = make_substituter(url, CacheOptions(retries=0))
            with LocalStore(root=str(alt_root)) as store:
                subject = Realiser(store, [cache], TrustedKeys([nix_keys.trusted.public]))
                with pytest.raises(errors.NixCacheError) as raised:
                    subject.realise([StorePath.parse(leaf)])
            message = str(raised.value)
            assert 'more than %d bytes' % TEXT_LIMIT in message, message
            assert leaf in message and url in message
    assert nix.valid_paths(str(alt_root)) == set()
    assert nix.unregistered_entries(str(alt_root)) == []


def test_nix_cache_info_larger_than_the_limit_is_refused(tmp_path):
    directory = tmp_path / 'cache'
    directory.mkdir()
    (directory / 'nix-cache-info').write_text('StoreDir: /nix/store\n' + 'x' * (2 * TEXT_LIMIT))
    with CacheServer(str(directory)) as server:
        for url in ('file://%s' % directory, server.url):
            with pytest.raises(errors.CacheUnavailable, match='more than %d bytes' % TEXT_LIMIT):
                make_substituter(url, CacheOptions(retries=0)).cache_info()


@pytest.mark.slow
def test_decompression_bomb_through_ansible_playbook_on_a_bare_python(
        nix_keys, tmp_path, small_tmpfs):
    """The module on Debian's own Python (no zstandard: the system's libzstd decompresses)."""
    cache_dir = str(tmp_path / 'bomb-cache')
    store_path = write_bomb_cache(cache_dir, many_small_files(), nix_keys.trusted.secret_file)
    started = time.monotonic()
    result = run_playbook(PLAY, interpreter='/usr/bin/python3', extra_vars=dict(
        paths=[str(store_path)], root=str(small_tmpfs), substituters=['file://' + cache_dir],
        keys=[nix_keys.trusted.public]))
    assert time.monotonic() - started < 60
    result.assert_failed()
    failed = result.registered('realised')
    assert failed['error'] == 'InvalidNar' and 'NAR size of %d' % DECLARED_NAR_SIZE in failed['msg']
    assert nix.store_entries(str(small_tmpfs)) == []
    nix.verify_store(str(small_tmpfs))
    assert used_bytes(small_tmpfs) < 10 * MIB
