"""Servers that drip or stall: one request attempt never outlasts its deadline.

The time-out bounds an attempt in total (connect, headers, body), not each socket read,
so a server sending one byte at a time is cut off; retries keep their count.  Worst case
for a look-up: (retries + 1) * timeout plus back-off.  A NAR attempt may last NarSize /
NAR_MIN_RATE seconds more, but only while every time-out brings at least 1 KiB/s.
"""
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    CacheOptions,
)
from nixtest import nix

TIMEOUT = 2
RETRIES = 1
BACKOFF = 0.05
SLACK = 3          # process start-up, the planner's other look-ups, a loaded machine


def realise(root, url, key, paths):
    options = CacheOptions(timeout=TIMEOUT, retries=RETRIES, backoff=BACKOFF)
    cache = make_substituter(url, options)
    with LocalStore(root=str(root)) as store:
        return Realiser(store, [cache], TrustedKeys([key]), jobs=1).realise(
            [StorePath.parse(path) for path in paths]).as_dict()


def timed_failure(root, url, key, paths):
    started = time.monotonic()
    with pytest.raises(errors.NixCacheError) as raised:
        realise(root, url, key, paths)
    return raised.value, time.monotonic() - started


def assert_nothing_left(root):
    nix.verify_store(str(root))
    assert nix.unregistered_entries(str(root)) == []


def bound(attempts, extra=0.0):
    """The documented worst case for ``attempts`` attempts, with back-off."""
    backoff = sum(BACKOFF * 2 ** n * 1.5 for n in range(attempts))
    return attempts * (TIMEOUT + extra) + backoff + SLACK


def test_narinfo_dripping_one_byte_at_a_time_is_cut_off(
        http_cache, caches, small_closure, alt_root):
    """About 500 bytes at 5 a second: 100 s per attempt if only each read were bounded."""
    note = small_closure.by_name('small-note')
    http_cache.fault('*.narinfo', drip=0.2)
    url = http_cache.url_for('xz')
    error, seconds = timed_failure(alt_root, url, caches['xz'].public_key, [note])
    assert seconds < bound(RETRIES + 1), seconds
    assert url in str(error) and note in str(error) and 'within %d s' % TIMEOUT in str(error)
    assert len(http_cache.requests_for('*.narinfo')) == RETRIES + 1
    assert nix.store_entries(str(alt_root)) == []


def test_nar_dripping_one_byte_at_a_time_is_cut_off(http_cache, caches, small_closure, alt_root):
    note = small_closure.by_name('small-note')
    http_cache.fault('/xz/nar/*', drip=0.2)
    url = http_cache.url_for('xz')
    error, seconds = timed_failure(alt_root, url, caches['xz'].public_key, [note])
    nar_seconds = small_closure.infos[note]['narSize'] / (256.0 * 1024)
    # the first opening and each resumption is an attempt with its own retries
    assert seconds < bound((RETRIES + 1) ** 2, nar_seconds), seconds
    assert isinstance(error, errors.CacheUnavailable)
    assert error.path == note and error.cache == url
    assert_nothing_left(alt_root)


def test_nar_stalling_mid_body_resumes_within_the_deadline(
        http_cache, caches, small_closure, alt_root):
    """The first answer stops after 100 bytes and holds the connection; the download
    resumes from there and the path arrives whole."""
    blob = small_closure.by_name('small-blob')
    http_cache.fault('/xz/nar/*', truncate_after=100, hold=60, times=1)
    started = time.monotonic()
    report = realise(alt_root, http_cache.url_for('xz'), caches['xz'].public_key, [blob])
    seconds = time.monotonic() - started
    nar_seconds = small_closure.infos[blob]['narSize'] / (256.0 * 1024)
    assert seconds < bound(2, nar_seconds), seconds
    assert report['fetched'] == [blob]
    ranges = [request.range for request in http_cache.requests_for('/xz/nar/*', 'GET')]
    assert ranges == [None, 'bytes=100-']
    assert_nothing_left(alt_root)
    assert nix.valid_paths(str(alt_root)) == {blob}


def test_large_nar_dripping_is_cut_off_after_the_time_out_not_its_size_allowance(
        http_cache, caches, small_closure, alt_root):
    """A 2 MiB NAR may take 2 s + 8 s at the slowest rate we wait for, but a server
    that drips it is cut off once a time-out passes with less than 1 KiB/s."""
    blob = small_closure.by_name('small-blob')
    http_cache.fault('/xz/nar/*', drip=0.2)
    url = http_cache.url_for('xz')
    error, seconds = timed_failure(alt_root, url, caches['xz'].public_key, [blob])
    assert seconds < bound((RETRIES + 1) ** 2), seconds
    assert isinstance(error, errors.CacheUnavailable) and error.path == blob
    assert_nothing_left(alt_root)
