# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Store paths: ``/nix/store/<32 Nix base32 characters>-<name>``.

Parsing is strict on purpose: it is the first defence against a cache or a user
handing us a path that would land outside the store.
"""

import hashlib
import re
from typing import Callable, Iterable, List

from ansible_collections.nixcache.closure.plugins.module_utils import nixbase32
from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidStorePath

STORE_DIR = '/nix/store'
HASH_LENGTH = 32
NAME_MAX = 211
_HASH = re.compile(r'\A[%s]{%d}\Z' % (nixbase32.ALPHABET, HASH_LENGTH))
_NAME = re.compile(r'\A[A-Za-z0-9+\-._?=]{1,%d}\Z' % NAME_MAX)


class StorePath(object):
    """The hash part and name of a store path; ordered and hashed by its base name."""

    __slots__ = ('hash_part', 'name')

    def __init__(self, hash_part: str, name: str) -> None:
        if not _HASH.match(hash_part):
            raise InvalidStorePath('the hash part must be %d characters of Nix base32' % HASH_LENGTH,
                                   found=hash_part)
        if not _NAME.match(name) or name.startswith('.'):
            raise InvalidStorePath('a store path name has 1 to %d characters from A-Z a-z 0-9 '
                                   '+ - . _ ? = and does not start with "."' % NAME_MAX, found=name)
        self.hash_part = hash_part
        self.name = name

    @classmethod
    def from_base(cls, base: str) -> 'StorePath':
        """From ``<hash>-<name>`` (as narinfo References list them)."""
        if not isinstance(base, str) or len(base) < HASH_LENGTH + 2 or base[HASH_LENGTH] != '-':
            raise InvalidStorePath('not a store path base name "<hash>-<name>"', found=repr(base))
        return cls(base[:HASH_LENGTH], base[HASH_LENGTH + 1:])

    @classmethod
    def parse(cls, text: str, store_dir: str = STORE_DIR) -> 'StorePath':
        """From a full path directly under ``store_dir``; nothing else is accepted."""
        prefix = store_dir.rstrip('/') + '/'
        if not isinstance(text, str) or not text.startswith(prefix):
            raise InvalidStorePath('not a path in %s' % store_dir, found=repr(text))
        base = text[len(prefix):]
        if '/' in base or '\0' in base:
            raise InvalidStorePath('a store path is a direct entry of %s, not a path below one'
                                   % store_dir, found=text)
        try:
            return cls.from_base(base)
        except InvalidStorePath as error:
            error.found = text
            raise

    @property
    def base(self) -> str:
        return '%s-%s' % (self.hash_part, self.name)

    def path(self, store_dir: str = STORE_DIR) -> str:
        return '%s/%s' % (store_dir.rstrip('/'), self.base)

    def __str__(self):
        return self.path()

    def __repr__(self):
        return 'StorePath(%r)' % self.base

    def __eq__(self, other):
        return isinstance(other, StorePath) and self.base == other.base

    def __ne__(self, other):
        return not self == other

    def __lt__(self, other):
        return self.base < other.base

    def __hash__(self):
        return hash(self.base)


def references_first(paths: Iterable['StorePath'], references_of: Callable[['StorePath'], Iterable['StorePath']]) -> List['StorePath']:
    """``paths`` ordered so that each comes after those of its references that are in ``paths``.

    ``references_of(path)`` lists a path's references (self-references are ignored).
    Store closures have no other cycles; if a bad cache claims one, the cycle is cut.
    """
    members = set(paths)
    ordered, seen = [], set()
    for start in sorted(members):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(references_of(start)))]
        while stack:
            path, refs = stack[-1]
            for ref in refs:
                if ref in members and ref not in seen:
                    seen.add(ref)
                    stack.append((ref, iter(references_of(ref))))
                    break
            else:
                stack.pop()
                ordered.append(path)
    return ordered


def make_fixed_output_path(name: str, nar_digest: bytes, references: Iterable['StorePath'] = (), store_dir: str = STORE_DIR) -> 'StorePath':
    """The store path Nix gives a content-addressed tree (``FileIngestionMethod::Recursive``
    and sha256, as ``nix profile`` adds its profiles): ``sha256`` of
    ``source:<reference>...:sha256:<base16 NAR hash>:<store dir>:<name>``, folded to 20 bytes
    and written in Nix base32.  ``references`` are StorePaths; Nix lists them sorted.
    """
    parts = ['source'] + [ref.path(store_dir) for ref in sorted(set(references))]
    text = '%s:sha256:%s:%s:%s' % (':'.join(parts), nar_digest.hex(), store_dir.rstrip('/'), name)
    digest = hashlib.sha256(text.encode('utf-8')).digest()
    folded = bytearray(20)
    for index, byte in enumerate(digest):
        folded[index % 20] ^= byte
    return StorePath(nixbase32.encode(bytes(folded)), name)


def fixed_output_ca(nar_digest: bytes) -> str:
    """The ``ca`` field Nix records for such a path: ``fixed:r:sha256:<base32>``."""
    return 'fixed:r:sha256:' + nixbase32.encode(nar_digest)
