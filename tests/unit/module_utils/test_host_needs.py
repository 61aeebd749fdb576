"""What a host lacks for its caches: only what the caches need and the host has not."""
from ansible_collections.nixcache.closure.plugins.module_utils import compression
from ansible_collections.nixcache.closure.plugins.module_utils.host_needs import (
    compression_needs,
    scheme_needs,
)

BASE = ['none', 'xz', 'bzip2', 'gzip']


def test_s3_needs_boto3_only_when_missing():
    urls = ['https://cache.example.org', 's3://bucket?region=eu-west-1']
    assert scheme_needs(urls, has_boto3=False) == ['boto3']
    assert scheme_needs(urls, has_boto3=True) == []
    assert scheme_needs(['https://cache.example.org', 'file:///c'], has_boto3=False) == []


def test_decompressors_only_for_methods_the_host_cannot_read():
    assert compression_needs(['xz', 'zstd', 'zstd', 'br'], available=BASE) == ['zstd', 'brotli']
    assert compression_needs(['zstd'], available=BASE + ['zstd']) == []
    assert compression_needs(['xz', 'bzip2', 'none', 'gzip'], available=BASE) == []
    assert compression_needs([], available=BASE) == []


def test_defaults_are_this_hosts():
    needs = compression_needs(['zstd'])
    assert needs == ([] if 'zstd' in compression.available_methods() else ['zstd'])
