"""A cache that throttles over HTTP: ``429`` (or ``503``) with ``Retry-After``.

The module waits what the cache asks for (seconds or an HTTP date) before it asks again,
does not count these answers against ``retries``, and gives up within
``throttle_timeout`` with a message that says so.  (S3's ``SlowDown``: test_s3.py.)
"""
import email.utils
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import CacheOptions
from nixtest import nix
from nixtest.ansible import realise_play, run_playbook

pytestmark = pytest.mark.nix

SLACK = 3.0   # process start-up and a loaded machine


def realise(root, url, key, paths, throttle_timeout=30):
    options = CacheOptions(timeout=5, retries=0, backoff=0.05, throttle_timeout=throttle_timeout)
    with LocalStore(root=str(root)) as store:
        return Realiser(store, [make_substituter(url, options)], TrustedKeys([key]), jobs=1).realise(
            [StorePath.parse(path) for path in paths])


def narinfo_url_path(path):
    return '/xz/%s.narinfo' % StorePath.parse(path).hash_part


def gaps(requests):
    return [later.time - earlier.time for earlier, later in zip(requests, requests[1:])]


@pytest.mark.parametrize('status', [429, 503])
def test_retry_after_seconds_is_waited_before_asking_again(
        status, http_cache, small_closure, nix_keys, alt_root):
    asked = narinfo_url_path(small_closure.top)
    http_cache.fault(asked, status=status, headers={'Retry-After': '2'}, times=2)
    realise(alt_root, http_cache.url_for('xz'), nix_keys.trusted.public, [small_closure.top])
    asks = http_cache.requests_for(asked, 'GET')
    assert [r.status for r in asks] == [status, status, 200]   # retries=0: not counted
    for gap in gaps(asks):
        assert 2.0 <= gap < 2.0 + SLACK
    nix.verify_store(str(alt_root))
    assert nix.valid_paths(str(alt_root)) == set(small_closure.paths)


def test_retry_after_http_date_is_waited_before_asking_again(
        http_cache, small_closure, nix_keys, alt_root):
    asked = '/xz/nar/*'
    http_cache.fault(asked, status=429, times=1, headers={
        'Retry-After': lambda: email.utils.formatdate(time.time() + 3, usegmt=True)})
    realise(alt_root, http_cache.url_for('xz'), nix_keys.trusted.public, [small_closure.top])
    throttled = [r for r in http_cache.requests_for(asked, 'GET') if r.status == 429]
    assert len(throttled) == 1
    again = [r for r in http_cache.requests_for(throttled[0].path, 'GET') if r is not throttled[0]]
    assert [r.status for r in again] == [200]
    # an HTTP date has whole seconds: 3 s ahead is 2 to 3 s ahead
    assert 2.0 <= again[0].time - throttled[0].time < 3.0 + SLACK
    nix.verify_store(str(alt_root))
    assert nix.valid_paths(str(alt_root)) == set(small_closure.paths)


def test_throttled_beyond_the_deadline_fails_naming_it(http_cache, small_closure, nix_keys, alt_root):
    http_cache.fault('*.narinfo', status=429, headers={'Retry-After': '1'}, times=50)
    started = time.monotonic()
    with pytest.raises(errors.CacheUnavailable) as raised:
        realise(alt_root, http_cache.url_for('xz'), nix_keys.trusted.public, [small_closure.top],
                throttle_timeout=3)
    assert time.monotonic() - started < 3 + SLACK
    message = str(raised.value)
    assert 'throttled' in message and 'HTTP 429' in message and 'throttle_timeout (3 s)' in message
    assert http_cache.url_for('xz') in message
    assert nix.valid_paths(str(alt_root)) == set()


@pytest.mark.slow
def test_playbook_reports_a_retry_after_beyond_the_deadline(
        http_cache, small_closure, nix_keys, alt_root):
    """Through ansible-playbook: a clear failure at once, no traceback, nothing written."""
    http_cache.fault('*', status=429, headers={'Retry-After': '600'}, times=50)
    started = time.monotonic()
    result = run_playbook(realise_play(throttle_timeout=30, retries=0), extra_vars=dict(
        paths=[small_closure.top], root=str(alt_root), substituters=[http_cache.url_for('xz')],
        keys=[nix_keys.trusted.public]))
    result.assert_failed()
    assert time.monotonic() - started < 30
    failed = result.registered('realised')
    assert 'asked to wait 600 s more' in failed['msg'] and 'throttle_timeout (30 s)' in failed['msg']
    assert 'forks' in failed['msg']
    assert 'Traceback' not in result.stdout + result.stderr
    assert nix.valid_paths(str(alt_root)) == set()
