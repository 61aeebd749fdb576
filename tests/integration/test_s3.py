"""s3:// caches: a real Nix-written cache uploaded to a moto S3 server, read through boto3.

moto runs in server mode on 127.0.0.1, so requests go over real HTTP through
botocore (signing, endpoints, profiles, time-outs) exactly as against S3.  The AWS
settings of the machine never leak in: every test gets empty config and credential
files, no AWS_* variables and no instance-metadata look-ups.
"""
import os
import socket
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.s3 import S3Substituter, s3_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import CacheOptions
from nixtest import nix

boto3 = pytest.importorskip('boto3')
moto_server = pytest.importorskip('moto.server')

BUCKET = 'nix-cache'
AWS_VARIABLES = ('AWS_PROFILE', 'AWS_DEFAULT_PROFILE', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY',
                 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN', 'AWS_REGION', 'AWS_DEFAULT_REGION',
                 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'AWS_CA_BUNDLE', 'AWS_ROLE_ARN',
                 'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
                 'AWS_CONTAINER_CREDENTIALS_FULL_URI')


def isolate_aws(patch, directory):
    """Point boto3 at empty config files and drop the machine's AWS settings."""
    for name in AWS_VARIABLES:
        patch.delenv(name, raising=False)
    for variable, name in (('AWS_CONFIG_FILE', 'config'), ('AWS_SHARED_CREDENTIALS_FILE', 'credentials')):
        path = os.path.join(str(directory), name)
        if not os.path.exists(path):
            open(path, 'w').close()
        patch.setenv(variable, path)
    patch.setenv('AWS_EC2_METADATA_DISABLED', 'true')


@pytest.fixture(scope='module')
def s3_server(caches, tmp_path_factory):
    """A moto S3 server on 127.0.0.1 whose bucket holds every file of the xz cache."""
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try:
        endpoint = '127.0.0.1:%d' % server.get_host_and_port()[1]
        with pytest.MonkeyPatch.context() as patch:
            isolate_aws(patch, tmp_path_factory.mktemp('aws-upload'))
            client = boto3.session.Session(aws_access_key_id='upload', aws_secret_access_key='upload',
                                           region_name='us-east-1').client('s3', endpoint_url='http://' + endpoint)
            client.create_bucket(Bucket=BUCKET)
            top = caches['xz'].directory
            for directory, _dirs, files in os.walk(top):
                for name in files:
                    path = os.path.join(directory, name)
                    client.upload_file(path, BUCKET, os.path.relpath(path, top).replace(os.sep, '/'))
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    directory = tmp_path / 'aws'
    directory.mkdir()
    isolate_aws(monkeypatch, directory)
    return directory


def options(**aws):
    return CacheOptions(timeout=2, retries=1, backoff=0.05, aws=aws)


def realise(substituter, root, keys, paths):
    store = LocalStore(root=str(root))
    with store:
        Realiser(store, [substituter], TrustedKeys(keys)).realise([StorePath.parse(path) for path in paths])


def assert_realised(root, closure):
    nix.verify_store(str(root))
    assert nix.valid_paths(str(root)) == set(closure.paths)


def test_realise_with_credentials_from_the_environment(s3_server, aws_env, monkeypatch,
                                                       small_closure, nix_keys, alt_root):
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'testing')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'testing')
    url = 's3://%s?region=us-east-1&endpoint=%s&scheme=http' % (BUCKET, s3_server)
    substituter = S3Substituter(url, options())
    assert substituter.endpoint_url == 'http://' + s3_server
    assert substituter.cache_info().get('StoreDir') == '/nix/store'
    realise(substituter, alt_root, [nix_keys.trusted.public], [small_closure.top])
    assert_realised(alt_root, small_closure)


def test_realise_with_a_profile_and_the_endpoint_from_options(s3_server, aws_env, monkeypatch,
                                                              small_closure, nix_keys, alt_root):
    (aws_env / 'credentials').write_text('[cachereader]\naws_access_key_id = profilekey\n'
                                         'aws_secret_access_key = profilesecret\n')
    (aws_env / 'config').write_text('[profile cachereader]\nregion = us-east-1\n')
    url = 's3://%s?profile=cachereader' % BUCKET
    cache_options = CacheOptions(timeout=2, retries=1, backoff=0.05)
    cache_options.aws = {'endpoint_url': 'http://' + s3_server}
    substituter = s3_substituter(url, cache_options, '/nix/store')
    realise(substituter, alt_root, [nix_keys.trusted.public], [small_closure.top])
    assert_realised(alt_root, small_closure)
    # the keys really came from the profile
    credentials = substituter._client()._request_signer._credentials
    assert credentials.access_key == 'profilekey'


def test_url_parameters_win_over_options(s3_server, aws_env, small_closure):
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        dead = 'http://127.0.0.1:%d' % probe.getsockname()[1]
    url = 's3://%s?region=us-east-1&endpoint=http://%s&ignored-parameter=1' % (BUCKET, s3_server)
    substituter = S3Substituter(url, options(endpoint_url=dead, region='eu-west-1',
                                             access_key='optkey', secret_key='optsecret'))
    assert substituter.endpoint_url == 'http://' + s3_server
    info = substituter.narinfo(StorePath.parse(small_closure.top))
    assert str(info.store_path) == small_closure.top


def test_path_missing_in_the_bucket_is_none(s3_server, aws_env):
    url = 's3://%s?region=us-east-1&endpoint=%s&scheme=http' % (BUCKET, s3_server)
    substituter = S3Substituter(url, options(access_key='testing', secret_key='testing'))
    assert substituter.narinfo(StorePath.parse('/nix/store/' + '0' * 32 + '-x')) is None
    with pytest.raises(errors.CacheUnavailable, match='does not hold it'):
        substituter.open_nar('nar/' + '0' * 52 + '.nar.xz')


def test_unreachable_endpoint_names_the_cache(aws_env, small_closure):
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    url = 's3://%s?region=us-east-1&endpoint=127.0.0.1:%d&scheme=http' % (BUCKET, port)
    substituter = S3Substituter(url, options(access_key='testing', secret_key='testing'))
    with pytest.raises(errors.CacheUnavailable) as raised:
        substituter.narinfo(StorePath.parse(small_closure.top))
    assert url in str(raised.value)
    assert 'after 2 attempt(s)' in str(raised.value)
    assert substituter.unavailable  # later look-ups skip it


def test_missing_credentials_and_bad_urls_are_clear(aws_env):
    substituter = S3Substituter('s3://%s?region=us-east-1&endpoint=127.0.0.1:1&scheme=http' % BUCKET, options())
    with pytest.raises(errors.CacheUnavailable, match='credentials'):
        substituter.narinfo(StorePath.parse('/nix/store/' + '0' * 32 + '-x'))
    with pytest.raises(errors.CacheUnavailable, match='bucket name'):
        S3Substituter('s3://?region=us-east-1', options())


def test_module_with_aws_options_from_module_defaults(s3_server, aws_env, small_closure, nix_keys,
                                                      alt_root):
    """The module, with the AWS options set once for the play through the action group."""
    from nixtest.ansible import run_playbook
    play = '''
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/nixcache.closure.cache:
      substituters: ["s3://{{ bucket }}?region=us-east-1"]
      trusted_public_keys: ["{{ key }}"]
      endpoint_url: "http://{{ endpoint }}"
      access_key: from-options
      secret_key: n0t-logged
  tasks:
    - name: Realise from S3
      nixcache.closure.realise:
        paths: ["{{ top }}"]
        root: "{{ root }}"
      register: realised
'''
    result = run_playbook(play, extra_vars=dict(bucket=BUCKET, key=nix_keys.trusted.public,
                                                endpoint=s3_server, top=small_closure.top,
                                                root=str(alt_root)))
    result.assert_ok()
    assert sorted(result.registered('realised')['fetched']) == sorted(small_closure.paths)
    assert 'n0t-logged' not in result.stdout + result.stderr
    assert_realised(alt_root, small_closure)


def test_public_bucket_over_plain_http_without_credentials(s3_server, aws_env, small_closure,
                                                           nix_keys, alt_root):
    """How Nix users read a public bucket: https://BUCKET.s3.amazonaws.com, here path-style."""
    from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
        HttpSubstituter,
    )
    owner = boto3.session.Session(aws_access_key_id='upload', aws_secret_access_key='upload',
                                  region_name='us-east-1').client('s3', endpoint_url='http://' + s3_server)
    for item in owner.list_objects_v2(Bucket=BUCKET)['Contents']:   # as a public cache is set up
        owner.put_object_acl(Bucket=BUCKET, Key=item['Key'], ACL='public-read')
    substituter = HttpSubstituter('http://%s/%s' % (s3_server, BUCKET), options())
    assert substituter.narinfo(StorePath.parse('/nix/store/' + '0' * 32 + '-absent')) is None
    realise(substituter, alt_root, [nix_keys.trusted.public], [small_closure.top])
    assert_realised(alt_root, small_closure)


# -- throttling: S3's 503 SlowDown, from a proxy in front of moto -------------------------

@pytest.fixture
def throttling_s3(s3_server, aws_env, monkeypatch):
    """A ThrottlingS3Proxy in front of the moto server; the URL of the bucket through it."""
    from nixtest.s3throttle import ThrottlingS3Proxy
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'testing')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'testing')
    with ThrottlingS3Proxy(s3_server) as proxy:
        proxy.url = 's3://%s?region=us-east-1&endpoint=%s&scheme=http' % (BUCKET, proxy.endpoint)
        yield proxy


def throttle_options(throttle_timeout):
    # retries=0: the SlowDown answers must not count against the retries
    return CacheOptions(timeout=5, retries=0, backoff=0.05, throttle_timeout=throttle_timeout)


def test_slow_down_is_retried_with_backoff_within_the_deadline(
        throttling_s3, small_closure, nix_keys, alt_root):
    throttling_s3.throttle('/%s/*.narinfo' % BUCKET, times=6)
    throttling_s3.throttle('/%s/nar/*' % BUCKET, times=2, retry_after=1)
    substituter = S3Substituter(throttling_s3.url, throttle_options(30))
    realise(substituter, alt_root, [nix_keys.trusted.public], [small_closure.top])
    assert_realised(alt_root, small_closure)
    assert len(throttling_s3.throttled) == 8
    # each throttled key was asked again and served
    served = set(path for _method, path, status in throttling_s3.forwarded if status in (200, 206))
    assert set(path for _method, path in throttling_s3.throttled) <= served


def test_slow_down_beyond_the_deadline_fails_naming_it(throttling_s3, small_closure, alt_root):
    throttling_s3.throttle('*', times=200)
    substituter = S3Substituter(throttling_s3.url, throttle_options(2))
    started = time.monotonic()
    with pytest.raises(errors.CacheUnavailable) as raised:
        substituter.narinfo(StorePath.parse(small_closure.top))
    assert time.monotonic() - started < 2 + 3
    message = str(raised.value)
    assert 'SlowDown' in message and 'throttle_timeout (2 s)' in message
    assert BUCKET in message
    assert 1 < len(throttling_s3.throttled) < 200   # backed off, not hammered
    assert substituter.unavailable
