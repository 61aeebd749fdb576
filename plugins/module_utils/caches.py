# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cache for a URL: the one place that knows every kind of cache.

It sits above ``substituters`` (``file://``, ``http(s)://``) and ``s3`` (``s3://``), so
that neither of them imports the other.
"""

from typing import Optional
from urllib.parse import urlparse

from ansible_collections.nixcache.closure.plugins.module_utils.errors import CacheUnavailable
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    SCHEMES,
    CacheOptions,
    Substituter,
    redact_url,
)


def make_substituter(url: str, options: Optional[CacheOptions] = None, store_dir: str = STORE_DIR) -> Substituter:
    """The Substituter for a cache URL; an unknown scheme is a clear error."""
    scheme = urlparse(url).scheme
    if scheme == 's3':  # imported on demand: it is the only reader that needs boto3
        from ansible_collections.nixcache.closure.plugins.module_utils.s3 import S3Substituter
        return S3Substituter(url, options, store_dir)
    if scheme not in SCHEMES:
        raise CacheUnavailable('unsupported cache URL scheme %r (supported: %s)'
                               % (scheme, ', '.join(sorted(SCHEMES) + ['s3'])),
                               cache=redact_url(url))
    return SCHEMES[scheme](url, options, store_dir)
