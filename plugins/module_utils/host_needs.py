# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host lacks to read a set of caches, and nothing more.

Reading ``s3://`` caches needs boto3; a NAR compressed with zstd needs a zstd
decompressor (the system's libzstd, the ``zstandard`` package or the ``zstd`` program),
one compressed with br
the ``brotli`` package.  The standard library covers everything else.  The names returned
(``boto3``, ``zstd``, ``brotli``) are what a role maps to the packages of its distribution.
"""

from typing import Iterable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils import compression, s3

# compression method -> what provides it
DECOMPRESSORS = {'zstd': 'zstd', 'br': 'brotli'}


def scheme_needs(urls: Iterable[str], has_boto3: Optional[bool] = None) -> List[str]:
    """What the cache URLs need that the host lacks (``['boto3']`` or ``[]``)."""
    has_boto3 = s3.HAS_BOTO3 if has_boto3 is None else has_boto3
    if any(url.startswith('s3://') for url in urls) and not has_boto3:
        return ['boto3']
    return []


def compression_needs(methods: Iterable[str], available: Optional[Iterable[str]] = None) -> List[str]:
    """What the compression methods need that the host lacks, without repeats."""
    available = compression.available_methods() if available is None else available
    needs = []
    for method in methods:
        need = DECOMPRESSORS.get(method)
        if need and method not in available and need not in needs:
            needs.append(need)
    return needs
