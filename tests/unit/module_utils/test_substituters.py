# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Credentials in cache URLs: used for requests, never shown."""

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    MASK,
    CacheOptions,
    redact_url,
    split_credentials,
    url_secrets,
)


@pytest.mark.parametrize('url, shown', [
    ('https://cache.example.org/prefix', 'https://cache.example.org/prefix'),
    ('https://nix:s3cret@cache.example.org/p', 'https://nix:%s@cache.example.org/p' % MASK),
    ('https://t0ken@cache.example.org', 'https://%s@cache.example.org' % MASK),
    ('http://nix:p%40ss@127.0.0.1:8080/xz', 'http://nix:%s@127.0.0.1:8080/xz' % MASK),
    ('http://nix:@127.0.0.1', 'http://nix:%s@127.0.0.1' % MASK),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_split_credentials_decodes_and_strips_them():
    assert split_credentials('http://nix:p%40ss@127.0.0.1:8080/xz') == (
        'http://127.0.0.1:8080/xz', 'nix', 'p@ss')
    assert split_credentials('https://cache.example.org') == ('https://cache.example.org', None, None)
    assert url_secrets(['https://nix:s3cret@a', 'https://t0ken@b', 'https://c']) == {'s3cret', 't0ken'}


def test_http_cache_shows_the_masked_url_and_authenticates_with_basic_auth():
    cache = make_substituter('https://nix:s3cret@cache.example.org/prefix/')
    assert cache.url == 'https://nix:%s@cache.example.org/prefix' % MASK
    assert 's3cret' not in repr(cache) and 's3cret' not in cache.credentials
    assert cache.credentials == 'basic auth as user nix'


def test_explicit_options_win_over_url_credentials():
    cache = make_substituter('https://nix:s3cret@cache.example.org',
                             CacheOptions(http=dict(url_username='other', url_password='x')))
    assert cache.credentials == 'basic auth as user other'
