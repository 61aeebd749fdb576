# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throttled answers: which ones count, how long to wait, when to give up."""

import email.message
import email.utils

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import substituters
from ansible_collections.nixcache.closure.plugins.module_utils.errors import CacheUnavailable
from ansible_collections.nixcache.closure.plugins.module_utils.httpclient import HttpStatusError
from ansible_collections.nixcache.closure.plugins.module_utils.s3 import S3TransientError
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    CacheOptions,
    Substituter,
    Throttle,
    is_throttled,
    parse_retry_after,
    retry_after_of,
)


def http_error(code, retry_after=None):
    headers = email.message.Message()
    if retry_after is not None:
        headers['Retry-After'] = retry_after
    return HttpStatusError('http://cache/x.narinfo', code, 'Busy', headers)


def test_retry_after_in_seconds_and_as_an_http_date():
    assert parse_retry_after('7') == 7.0
    assert parse_retry_after(' 0 ') == 0.0
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in (None, '', 'soon', '-5', '1.5e3', 'Fri, 99 Foo 2026 25:61:00 GMT'):
        assert parse_retry_after(bad) is None


def test_which_answers_are_throttling():
    assert is_throttled(http_error(429))
    assert is_throttled(http_error(503, '2'))
    assert not is_throttled(http_error(503))        # an outage: ordinary retries
    assert not is_throttled(http_error(500, '2'))
    assert is_throttled(S3TransientError('SlowDown', throttled=True))
    assert not is_throttled(S3TransientError('InternalError'))
    assert not is_throttled(ConnectionResetError())
    assert retry_after_of(http_error(429, '3')) == 3.0
    assert retry_after_of(S3TransientError('SlowDown', throttled=True, retry_after='4')) == 4.0


def test_waits_follow_retry_after_within_the_budget(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(substituters.time, 'monotonic', lambda: clock[0])
    throttle = Throttle(10, backoff=0.5)
    assert throttle.next_wait(http_error(429, '4')) == 4.0
    clock[0] += 4
    assert throttle.next_wait(http_error(429, '6')) == 6.0   # ends right at the deadline
    clock[0] += 6
    assert throttle.next_wait(http_error(429, '1')) is None
    message = throttle.describe('abc.narinfo')
    assert 'abc.narinfo' in message and 'HTTP 429' in message and '3 time(s)' in message
    assert 'throttle_timeout (10 s)' in message and 'forks' in message


def test_a_longer_retry_after_than_the_budget_fails_at_once(monkeypatch):
    monkeypatch.setattr(substituters.time, 'monotonic', lambda: 0.0)
    throttle = Throttle(5, backoff=0.5)
    assert throttle.next_wait(http_error(429, '60')) is None
    assert 'asked to wait 60 s more' in throttle.describe('x')


def test_backoff_grows_is_capped_and_ends_at_the_deadline(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(substituters.time, 'monotonic', lambda: clock[0])
    monkeypatch.setattr(substituters.random, 'uniform', lambda low, high: 1.0)
    throttle = Throttle(40, backoff=1.0)
    waits = []
    while True:
        wait = throttle.next_wait(http_error(429))
        if wait is None:
            break
        waits.append(wait)
        clock[0] += wait
    assert waits[:5] == [1.0, 2.0, 4.0, 8.0, 15.0]
    assert max(waits) == substituters.THROTTLE_MAX_BACKOFF
    assert sum(waits) == pytest.approx(40.0)


class Scripted(Substituter):
    """A cache whose answers to ``_read`` are given in order."""

    def __init__(self, answers, **options):
        super(Scripted, self).__init__('http://cache', CacheOptions(**options))
        self.answers = list(answers)
        self.calls = 0

    def _read(self, relative_url, limit):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_throttled_reads_do_not_use_up_the_retries(monkeypatch):
    slept = []
    monkeypatch.setattr(substituters.time, 'sleep', slept.append)
    cache = Scripted([http_error(429, '1')] * 5 + [b'StoreDir: /nix/store\n'], retries=0)
    assert cache.read_text('nix-cache-info') == 'StoreDir: /nix/store\n'
    assert cache.calls == 6 and slept == [1.0] * 5
    assert cache.unavailable is None


def test_throttled_beyond_the_budget_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(substituters.time, 'sleep', lambda seconds: None)
    cache = Scripted([http_error(429, '30')], throttle_timeout=10)
    with pytest.raises(CacheUnavailable) as raised:
        cache.read_text('nix-cache-info')
    assert 'throttled nix-cache-info (HTTP 429 Busy)' in str(raised.value)
    assert cache.unavailable      # later look-ups go to other caches
