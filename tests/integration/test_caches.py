"""Caches as users run them: private HTTP caches, nix.conf defaults, priorities, flaky
servers beside healthy ones.  Each realised root is judged by real Nix."""
import base64
import os

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.common import (
    ProbedCaches,
    caches_from_options,
)
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import nix
from nixtest.ansible import run_playbook
from nixtest.http import CacheServer, make_pki, tls_context
from nixtest.proxy import Proxy


def realise(root, paths, **options):
    """Realise through the same option handling the module uses; returns the report."""
    options.setdefault('use_nix_conf', False)
    options.setdefault('retries', 2)
    options.setdefault('timeout', 5)
    caches, keys = caches_from_options(options, root=str(root), probe=False)
    for cache in caches:
        cache.options.backoff = 0.05
    caches = ProbedCaches(caches, by_priority=not options.get('substituters'))
    with LocalStore(root=str(root)) as store:
        return Realiser(store, caches, keys).realise([StorePath.parse(p) for p in paths]).as_dict()


def failure(root, paths, **options):
    with pytest.raises(errors.NixCacheError) as raised:
        realise(root, paths, **options)
    return raised.value


def assert_realised(root, closure):
    nix.verify_store(str(root))
    assert nix.valid_paths(str(root)) == set(closure.paths)
    assert nix.unregistered_entries(str(root)) == []


# private HTTP caches

def test_basic_auth(http_cache, caches, small_closure, alt_root):
    http_cache.require_basic_auth('nix', 's3cret')
    url, key = http_cache.url_for('xz'), caches['xz'].public_key
    refused = failure(alt_root, [small_closure.top], substituters=[url], trusted_public_keys=[key])
    assert 'HTTP 401' in str(refused) and 'no credentials' in str(refused) and url in str(refused)
    wrong = failure(alt_root, [small_closure.top], substituters=[url], trusted_public_keys=[key],
                    url_username='nix', url_password='n0t-the-password')
    assert 'basic auth as user nix' in str(wrong) and 'n0t-the-password' not in str(wrong)
    realise(alt_root, [small_closure.top], substituters=[url], trusted_public_keys=[key],
            url_username='nix', url_password='s3cret')
    assert_realised(alt_root, small_closure)


def test_bearer_token(http_cache, caches, small_closure, alt_root):
    http_cache.require_bearer('t0ken')
    realise(alt_root, [small_closure.top], substituters=[http_cache.url_for('zstd')],
            trusted_public_keys=[caches['zstd'].public_key], bearer_token='t0ken')
    assert_realised(alt_root, small_closure)
    assert all(r.headers.get('Authorization') == 'Bearer t0ken' for r in http_cache.requests)


def test_netrc_from_nix_conf_under_root(http_cache, caches, small_closure, alt_root):
    """No cache options at all: nix.conf (with an include) names caches, keys and netrc."""
    http_cache.require_basic_auth('nix', 'fr0m-netrc')
    etc = alt_root / 'etc' / 'nix'
    etc.mkdir(parents=True)
    (etc / 'nix.conf').write_text('substituters = %s\ninclude keys.conf\nnetrc-file = /etc/nix/netrc\n'
                                  % http_cache.url_for('xz'))
    (etc / 'keys.conf').write_text('extra-trusted-public-keys = %s\n' % caches['xz'].public_key)
    (etc / 'netrc').write_text('machine 127.0.0.1 login nix password fr0m-netrc\n')
    realise(alt_root, [small_closure.top], use_nix_conf=True)
    assert_realised(alt_root, small_closure)


def test_module_reports_401_without_the_secret(http_cache, caches, small_closure, alt_root):
    http_cache.require_basic_auth('nix', 's3cret')
    play = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Realise from a private cache with a wrong password
      nixcache.closure.realise:
        paths: ["{{ top }}"]
        root: "{{ root }}"
        substituters: ["{{ url }}"]
        trusted_public_keys: ["{{ key }}"]
        url_username: nix
        url_password: n0t-the-password
        retries: 0
      register: realised
'''
    result = run_playbook(play, extra_vars=dict(top=small_closure.top, root=str(alt_root),
                                                url=http_cache.url_for('xz'),
                                                key=caches['xz'].public_key))
    result.assert_failed()
    failed = result.registered('realised')
    assert 'HTTP 401' in failed['msg'] and 'basic auth as user nix' in failed['msg']
    assert 'n0t-the-password' not in result.stdout + result.stderr + str(failed)


# failover and retries

def test_cache_answering_500_is_skipped_for_a_healthy_one(http_cache, caches, small_closure,
                                                          alt_root):
    http_cache.fault('/xz/*', status=500)
    sick, healthy = http_cache.url_for('xz'), http_cache.url_for('zstd')
    report = realise(alt_root, [small_closure.top], substituters=[sick, healthy],
                     trusted_public_keys=[caches['xz'].public_key])
    assert_realised(alt_root, small_closure)
    assert all(entry['cache'] == healthy for entry in report['closure'])
    # probed once, given up on, then never asked again in this run
    assert len(http_cache.requests_for('/xz/*')) == 3


def test_stalling_nar_download_fails_over_to_another_cache(http_cache, caches, small_closure,
                                                           alt_root):
    http_cache.fault('/xz/nar/*', delay=3)
    stalling, healthy = http_cache.url_for('xz'), http_cache.url_for('bzip2')
    report = realise(alt_root, [small_closure.top], substituters=[stalling, healthy],
                     trusted_public_keys=[caches['xz'].public_key], timeout=1, retries=0)
    assert_realised(alt_root, small_closure)
    assert {entry['cache'] for entry in report['closure']} == {healthy}


@pytest.mark.parametrize('ranges', ['honoured', 'ignored'])
def test_truncated_nar_downloads_are_resumed(ranges, http_cache, caches, small_closure, alt_root):
    http_cache.ranges_ignored = ranges == 'ignored'
    blob = small_closure.by_name('small-blob')
    info_url = caches['none'].directory + '/' + StorePath.parse(blob).hash_part + '.narinfo'
    with open(info_url) as handle:
        nar_url = [line.split(': ', 1)[1] for line in handle.read().splitlines()
                   if line.startswith('URL: ')][0]
    http_cache.fault('/none/' + nar_url, truncate_after=1000000, times=2)
    report = realise(alt_root, [small_closure.top], substituters=[http_cache.url_for('none')],
                     trusted_public_keys=[caches['none'].public_key])
    assert_realised(alt_root, small_closure)
    tries = http_cache.requests_for('/none/' + nar_url, 'GET')
    assert len(tries) == 3 and [t.truncated for t in tries] == [True, True, False]
    if ranges == 'honoured':
        assert tries[1].range == 'bytes=1000000-' and tries[2].status == 206
    else:
        assert tries[2].status == 200
    assert report['download_bytes'] >= small_closure.infos[blob]['narSize']


def test_reset_connections_are_retried(http_cache, caches, small_closure, alt_root):
    http_cache.fault('/zstd/nar/*', reset=True, times=3)
    http_cache.fault('/zstd/*.narinfo', reset=True, times=2)
    realise(alt_root, [small_closure.top], substituters=[http_cache.url_for('zstd')],
            trusted_public_keys=[caches['zstd'].public_key], retries=3)
    assert_realised(alt_root, small_closure)


def test_download_that_keeps_breaking_fails_cleanly(http_cache, caches, small_closure, alt_root):
    http_cache.fault('/xz/nar/*', truncate_after=10)
    error = failure(alt_root, [small_closure.top], substituters=[http_cache.url_for('xz')],
                    trusted_public_keys=[caches['xz'].public_key], retries=1)
    assert isinstance(error, errors.CacheUnavailable) and 'broke off' in str(error)
    assert error.cache == http_cache.url_for('xz') and error.path in small_closure.paths
    nix.verify_store(str(alt_root))
    assert nix.unregistered_entries(str(alt_root)) == []


# nix-cache-info

def cache_view(directory, source, priority=None, store_dir='/nix/store'):
    """A cache directory that shares ``source``'s files but has its own nix-cache-info."""
    directory.mkdir()
    for name in os.listdir(source):
        if name != 'nix-cache-info':
            os.symlink(os.path.join(source, name), str(directory / name))
    lines = ['StoreDir: %s' % store_dir, 'WantMassQuery: 1']
    if priority is not None:
        lines.append('Priority: %d' % priority)
    (directory / 'nix-cache-info').write_text('\n'.join(lines) + '\n')
    return 'file://%s' % directory


def test_caches_from_nix_conf_are_ordered_by_priority(caches, small_closure, alt_root, tmp_path):
    low = cache_view(tmp_path / 'low', caches['xz'].directory, priority=60)
    high = cache_view(tmp_path / 'high', caches['zstd'].directory, priority=10)
    etc = alt_root / 'etc' / 'nix'
    etc.mkdir(parents=True)
    (etc / 'nix.conf').write_text('substituters = %s %s\ntrusted-public-keys = %s\n'
                                  % (low, high, caches['xz'].public_key))
    ordered, _keys = caches_from_options(dict(use_nix_conf=True), root=str(alt_root))
    assert [cache.url for cache in ordered] == [high, low]
    report = realise(alt_root, [small_closure.top], use_nix_conf=True)
    assert {entry['cache'] for entry in report['closure']} == {high}
    # the user's own order is kept
    mine, _keys = caches_from_options(dict(substituters=[low, high], use_nix_conf=False,
                                           trusted_public_keys=[caches['xz'].public_key]))
    assert [cache.url for cache in mine] == [low, high]


def test_cache_for_another_store_dir_is_refused(caches, small_closure, alt_root, tmp_path):
    other = cache_view(tmp_path / 'other', caches['xz'].directory, store_dir='/gnu/store')
    error = failure(alt_root, [small_closure.top], substituters=[other],
                    trusted_public_keys=[caches['xz'].public_key])
    assert error.cache == other and error.expected == '/nix/store' and error.found == '/gnu/store'
    assert nix.valid_paths(str(alt_root)) == set()


def test_nothing_is_cached_negatively(caches, small_closure, alt_root, tmp_path):
    """A path pushed after a failed run is found by the next run."""
    view = tmp_path / 'late'
    url = cache_view(view, caches['xz'].directory)
    top_info = StorePath.parse(small_closure.top).hash_part + '.narinfo'
    hidden = tmp_path / top_info
    os.rename(str(view / top_info), str(hidden))
    error = failure(alt_root, [small_closure.top], substituters=[url],
                    trusted_public_keys=[caches['xz'].public_key])
    assert isinstance(error, errors.PathNotInCaches)
    os.rename(str(hidden), str(view / top_info))
    realise(alt_root, [small_closure.top], substituters=[url],
            trusted_public_keys=[caches['xz'].public_key])
    assert_realised(alt_root, small_closure)


# TLS: a private CA and client certificates

@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    """A private CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_pki(tmp_path_factory.mktemp('pki'))


@pytest.fixture(scope='module')
def tls_cache(caches, pki):
    with CacheServer(caches.root, tls=tls_context(pki)) as server:   # clients need a certificate
        yield server


def test_private_ca_and_client_certificate(tls_cache, pki, caches, small_closure, alt_root):
    url, key = tls_cache.url_for('xz'), caches['xz'].public_key
    untrusted = failure(alt_root, [small_closure.top], substituters=[url], trusted_public_keys=[key],
                        retries=0)
    assert 'CERTIFICATE_VERIFY_FAILED' in str(untrusted) and untrusted.cache == url
    no_client_cert = failure(alt_root, [small_closure.top], substituters=[url],
                             trusted_public_keys=[key], retries=0, ca_path=str(pki / 'ca.pem'))
    assert no_client_cert.cache == url and 'stopped answering' in str(no_client_cert)
    realise(alt_root, [small_closure.top], substituters=[url], trusted_public_keys=[key],
            ca_path=str(pki / 'ca.pem'), client_cert=str(pki / 'client.pem'),
            client_key=str(pki / 'client.key'))
    assert_realised(alt_root, small_closure)


def test_a_netrc_file_that_is_not_there_is_named(http_cache, caches, small_closure, alt_root):
    error = failure(alt_root, [small_closure.top], substituters=[http_cache.url_for('xz')],
                    trusted_public_keys=[caches['xz'].public_key], netrc_file='/etc/nix/no-netrc')
    assert '/etc/nix/no-netrc' in str(error) and nix.store_entries(str(alt_root)) == []


# Connections: kept alive, replaced when the server closed them, redirected, proxied

@pytest.fixture
def no_proxy_variables(monkeypatch):
    for name in ('http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY',
                 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_run_with_every_path_valid_asks_no_cache(http_cache, caches, small_closure, alt_root):
    options = dict(substituters=[http_cache.url_for('xz')],
                   trusted_public_keys=[caches['xz'].public_key])
    realise(alt_root, [small_closure.top], **options)
    http_cache.clear_log()
    report = realise(alt_root, [small_closure.top], **options)
    assert report['fetched'] == [] and http_cache.requests == []


def test_requests_share_kept_alive_connections(http_cache, caches, pg_closure, alt_root):
    realise(alt_root, [pg_closure.top], substituters=[http_cache.url_for('zstd')],
            trusted_public_keys=[caches['zstd'].public_key])
    assert_realised(alt_root, pg_closure)
    requests = http_cache.requests_for('/zstd/*', 'GET')
    assert len(requests) >= 2 * len(pg_closure.paths) + 1     # cache info, narinfos, NARs
    print('%d requests over %d connections' % (len(requests), http_cache.connections))
    assert http_cache.connections <= len(requests) // 2


def test_a_connection_the_server_closed_is_replaced_without_a_retry(
        http_cache, caches, small_closure, alt_root):
    http_cache.fault('/xz/*', close=True)   # every answer ends its connection, unannounced
    realise(alt_root, [small_closure.top], substituters=[http_cache.url_for('xz')],
            trusted_public_keys=[caches['xz'].public_key], retries=0)
    assert_realised(alt_root, small_closure)
    assert http_cache.connections == len(http_cache.requests_for('/xz/*'))


def test_redirects_are_followed_and_credentials_stay_with_the_cache(
        http_cache, caches, small_closure, alt_root):
    with CacheServer(caches.root) as mirror:
        http_cache.require_basic_auth('nix', 's3cret')
        http_cache.fault('/xz/nar/*', redirect=mirror.url + '{path}')
        realise(alt_root, [small_closure.top], substituters=[http_cache.url_for('xz')],
                trusted_public_keys=[caches['xz'].public_key], url_username='nix',
                url_password='s3cret')
        assert_realised(alt_root, small_closure)
        nars = mirror.requests_for('/xz/nar/*', 'GET')
        assert len(nars) == len(small_closure.paths)
        assert all('Authorization' not in request.headers for request in nars)
        assert all('Authorization' in request.headers for request in http_cache.requests)


def test_http_proxy_from_the_environment(no_proxy_variables, http_cache, caches, small_closure,
                                         alt_root, tmp_path):
    url, key = http_cache.url_for('xz'), caches['xz'].public_key
    with Proxy() as proxy:
        proxy.require_auth('Basic ' + base64.b64encode(b'me:pr0xy').decode())
        no_proxy_variables.setenv('http_proxy', proxy.url.replace('//', '//me:pr0xy@'))
        realise(alt_root, [small_closure.top], substituters=[url], trusted_public_keys=[key])
        assert_realised(alt_root, small_closure)
        through = [target for method, target, _auth in proxy.requests if method == 'GET']
        assert len(through) == len(http_cache.requests) and all(t.startswith(url) for t in through)

        del proxy.requests[:]
        no_proxy_variables.setenv('no_proxy', '127.0.0.1')
        realise(tmp_path / 'bypassed', [small_closure.top], substituters=[url],
                trusted_public_keys=[key])
        no_proxy_variables.delenv('no_proxy')
        realise(tmp_path / 'unproxied', [small_closure.top], substituters=[url],
                trusted_public_keys=[key], use_proxy=False)
        assert proxy.requests == []


def test_https_through_a_proxy_tunnel(no_proxy_variables, tls_cache, pki, caches, small_closure,
                                      alt_root):
    with Proxy() as proxy:
        no_proxy_variables.setenv('https_proxy', proxy.url)
        realise(alt_root, [small_closure.top], substituters=[tls_cache.url_for('xz')],
                trusted_public_keys=[caches['xz'].public_key], ca_path=str(pki / 'ca.pem'),
                client_cert=str(pki / 'client.pem'), client_key=str(pki / 'client.key'))
        assert_realised(alt_root, small_closure)
        assert ('CONNECT', '127.0.0.1:%d' % tls_cache.port, None) in proxy.requests
