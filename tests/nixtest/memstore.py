"""Stores made without Nix for unit tests: each path is an in-memory tree, serialised
with ``nar.dump_tree`` and added with ``LocalStore.add_nar``, so its NarHash is known.

The trees are what several versions of one extension look like side by side: the same
SQL script, the same executable, a symlink and an empty file in each, and a README that
names the version.
"""
import hashlib
import os

from ansible_collections.nixcache.closure.plugins.module_utils import nar
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.nixbase32 import encode
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath

SQL = b'-- an extension script\nselect 1;\n' * 40
TOOL = b'#!/bin/sh\necho tool\n' * 10
SYMLINK_TARGET = 'share'


def tree(marker, extra=None):
    """A store path tree of the extension's version ``marker``."""
    entries = {
        'share': ('directory', {
            'ext--1.0.sql': ('regular', SQL, False),
            'empty': ('regular', b'', False),
            'README': ('regular', readme(marker), False),
        }),
        'bin': ('directory', {'tool': ('regular', TOOL, True)}),
        'lib': ('symlink', SYMLINK_TARGET),
    }
    entries.update(extra or {})
    return ('directory', entries)


def readme(marker):
    return b'version ' + marker.encode() + b'\n'


def nar_of(node):
    chunks = []
    nar.dump_tree(node, chunks.append)
    return b''.join(chunks)


def link_name(node):
    """The ``.links`` name Nix gives a file: nix32 of the SHA-256 of its NAR."""
    return encode(hashlib.sha256(nar_of(node)).digest())


def store_path(name):
    return StorePath(encode(hashlib.sha256(name.encode()).digest()[:20]), name)


def add(store, name, node, references=()):
    """Add ``node`` as the valid path named ``name`` to an open LocalStore."""
    data = nar_of(node)
    path = store_path(name)
    info = NarInfo(path, 'nar/x', format_base32(hashlib.sha256(data).digest()), len(data),
                   compression='none', references=list(references))
    store.add_nar(info, data)
    return path


def real(root, name, *parts):
    """Where a file of the path named ``name`` lies under ``root``."""
    return os.path.join(str(root), 'nix/store', store_path(name).base, *parts)
