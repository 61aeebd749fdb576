"""Spoiling real caches one file at a time, and realising from them at library level.

    cache = CacheCopy(caches['none'].directory, tmp_path / 'cache', closure.paths, secret)
    info = cache.narinfo(path); info.nar_size += 8; cache.write_narinfo(info)  # re-signed
    error = attempt(root, [cache.url], [public_key], [path])     # the error raised
"""
import os
import shutil

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import SecretKey, TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    CacheOptions,
)


class CacheCopy(object):
    """A private copy of part of a real cache, to spoil one file at a time."""

    def __init__(self, source, directory, paths, secret_key_file):
        self.directory = str(directory)
        self.url = 'file://' + self.directory
        os.makedirs(os.path.join(self.directory, 'nar'))
        shutil.copy(os.path.join(source, 'nix-cache-info'), self.directory)
        for path in paths:
            info = self.narinfo(path, source)
            shutil.copy(os.path.join(source, info.url), os.path.join(self.directory, info.url))
            self.write_narinfo(info, sign=False)
        with open(secret_key_file) as handle:
            self.secret_key = SecretKey.parse(handle.read().strip())

    def narinfo(self, path, directory=None):
        hash_part = StorePath.parse(path).hash_part
        with open(os.path.join(directory or self.directory, hash_part + '.narinfo')) as handle:
            return NarInfo.parse(handle.read())

    def write_narinfo(self, info, sign=True, hash_part=None):
        if sign:
            info.sigs = [self.secret_key.sign(info.fingerprint())]
        name = (hash_part or info.store_path.hash_part) + '.narinfo'
        with open(os.path.join(self.directory, name), 'w') as handle:
            handle.write(info.to_text())

    def nar_path(self, path):
        return os.path.join(self.directory, self.narinfo(path).url)


def realiser(root, urls, keys, **kwargs):
    store = LocalStore(root=str(root))
    caches = [make_substituter(url, CacheOptions(timeout=2, retries=1, backoff=0.05)) for url in urls]
    return store, Realiser(store, caches, TrustedKeys(keys), **kwargs)


def attempt(root, urls, keys, paths, **kwargs):
    """Realise ``paths``; return the error raised (the test expects one)."""
    store, subject = realiser(root, urls, keys, **kwargs)
    with store:
        with pytest.raises(errors.NixCacheError) as raised:
            subject.realise([StorePath.parse(path) for path in paths])
    return raised.value


def leaf_of(closure):
    """A path of the closure with no references but itself (fetched first)."""
    for path in closure.paths:
        if set(closure.infos[path]['references']) <= {path}:
            return path
    raise AssertionError('closure has no leaf')
