# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``.narinfo`` files: parse, write back, and the fingerprint that signatures cover.

The signature covers only StorePath, NarHash, NarSize and References.  The other fields
are checked to the form Nix accepts before they go anywhere (a malformed ``CA`` in the
database would stop real Nix from reading the path): a malformed ``CA``, ``Deriver``,
``FileHash`` or ``FileSize`` refuses the narinfo, as ``nix copy`` does; a ``Sig`` that
cannot be a signature is dropped, as it could never verify.
"""

import base64
import binascii
import re
from typing import Iterable, Optional

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidHash,
    InvalidNarInfo,
    InvalidStorePath,
)
from ansible_collections.nixcache.closure.plugins.module_utils import nixbase32
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32, parse_hash
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath

REQUIRED = ('StorePath', 'URL', 'NarHash', 'NarSize')
SINGLE = ('StorePath', 'URL', 'Compression', 'FileHash', 'FileSize', 'NarHash', 'NarSize',
          'References', 'Deriver', 'System', 'CA')
HASH_SIZES = {'md5': 16, 'sha1': 20, 'sha256': 32, 'sha512': 64}
_SIGNATURE = re.compile(r'^[^\s:]+:[A-Za-z0-9+/]+={0,2}$')
_SYSTEM = re.compile(r'^[A-Za-z0-9_.+-]{1,64}$')


class NarInfo(object):
    """The fields of one narinfo; ``nar_hash`` is normalised to ``sha256:<base32>``."""

    def __init__(self, store_path: StorePath, url: str, nar_hash: str, nar_size: int, compression: str = 'bzip2', file_hash: Optional[str] = None,
                 file_size: Optional[int] = None, references: Iterable[StorePath] = (), deriver: Optional[str] = None, system: Optional[str] = None,
                 sigs: Iterable[str] = (), ca: Optional[str] = None) -> None:
        self.store_path = store_path
        self.url = url
        self.nar_digest = parse_hash(nar_hash)
        self.nar_hash = format_base32(self.nar_digest)
        self.nar_size = nar_size
        self.compression = compression
        self.file_hash = file_hash
        self.file_size = file_size
        self.references = list(references)
        self.deriver = deriver
        self.system = system
        self.sigs = list(sigs)
        self.ca = ca

    @classmethod
    def parse(cls, text: str, store_dir: str = STORE_DIR, source: Optional[str] = None) -> 'NarInfo':
        fields, sigs = {}, []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            key, sep, value = line.partition(': ')
            if not sep or not key:
                raise InvalidNarInfo('line %d is not "Key: value"' % number, cache=source, found=line)
            if key == 'Sig':
                sigs.append(value)
            elif key in fields and key in SINGLE:
                raise InvalidNarInfo('%s is given twice' % key, cache=source, found=line)
            else:
                fields[key] = value  # unknown keys are kept out of the way, as Nix ignores them
        missing = [key for key in REQUIRED if key not in fields]
        path_text = fields.get('StorePath')
        if missing:
            raise InvalidNarInfo('narinfo lacks %s' % ', '.join(missing), path=path_text, cache=source)
        try:
            store_path = StorePath.parse(path_text, store_dir)
            references = [StorePath.from_base(base) for base in fields.get('References', '').split()]
            deriver = fields.get('Deriver') or None
            if deriver is not None and deriver != 'unknown-deriver':
                StorePath.from_base(deriver)
            elif deriver == 'unknown-deriver':
                deriver = None
            return cls(
                store_path=store_path,
                url=_checked_url(fields['URL'], path_text, source),
                nar_hash=fields['NarHash'],
                nar_size=_size(fields, 'NarSize', path_text, source),
                compression=fields.get('Compression') or 'bzip2',
                file_hash=_checked_file_hash(fields.get('FileHash') or None, path_text, source),
                file_size=_size(fields, 'FileSize', path_text, source),
                references=references,
                deriver=deriver,
                system=_checked_system(fields.get('System') or None),
                sigs=[sig for sig in sigs if is_signature(sig)],
                ca=_checked_ca(fields.get('CA') or None, path_text, source),
            )
        except (InvalidStorePath, InvalidHash) as error:
            raise InvalidNarInfo('invalid narinfo: %s' % error, path=path_text, cache=source) from error

    def to_text(self, store_dir: str = STORE_DIR) -> str:
        lines = [('StorePath', self.store_path.path(store_dir)), ('URL', self.url),
                 ('Compression', self.compression)]
        if self.file_hash:
            lines.append(('FileHash', self.file_hash))
        if self.file_size is not None:
            lines.append(('FileSize', str(self.file_size)))
        lines += [('NarHash', self.nar_hash), ('NarSize', str(self.nar_size)),
                  ('References', ' '.join(ref.base for ref in self.references))]
        if self.deriver:
            lines.append(('Deriver', self.deriver))
        if self.system:
            lines.append(('System', self.system))
        lines += [('Sig', sig) for sig in self.sigs]
        if self.ca:
            lines.append(('CA', self.ca))
        return ''.join('%s: %s\n' % line for line in lines)

    def fingerprint(self, store_dir: str = STORE_DIR) -> bytes:
        """What a cache signs: ``1;<path>;<sha256:base32>;<size>;<sorted references>``."""
        references = ','.join(sorted(ref.path(store_dir) for ref in self.references))
        return ('1;%s;%s;%d;%s' % (self.store_path.path(store_dir), self.nar_hash,
                                   self.nar_size, references)).encode('utf-8')


def _size(fields, key, path, source):
    value = fields.get(key)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise InvalidNarInfo('%s must be a non-negative integer' % key, path=path, cache=source,
                             found=value)
    return int(value)


def _checked_url(url, path, source):
    """NAR URLs are joined to the cache root: only plain relative paths are accepted."""
    parts = url.split('/')
    if (not url or url.startswith('/') or '://' in url or '\\' in url or '\0' in url
            or any(part in ('', '.', '..') for part in parts)):
        raise InvalidNarInfo('NAR URL must be a plain path relative to the cache', path=path,
                             cache=source, found=url)
    return url


def _is_digest(encoded, size):
    """True if ``encoded`` is a hash of ``size`` bytes in base16, Nix base32 or base64."""
    if len(encoded) == 2 * size:
        return re.match('^[0-9a-fA-F]+$', encoded) is not None
    if len(encoded) == nixbase32.encoded_length(size):
        return nixbase32.is_valid(encoded, size)
    if len(encoded) == 4 * ((size + 2) // 3):
        try:
            return len(base64.b64decode(encoded, validate=True)) == size
        except (binascii.Error, ValueError):
            return False
    return False


def _checked_ca(value, path, source):
    """A content address as Nix 2.8 parses it: ``text:sha256:HASH`` or
    ``fixed:[r:]ALGO:HASH`` (ALGO md5, sha1, sha256 or sha512; HASH not SRI)."""
    if value is None:
        return None
    method, sep, rest = value.partition(':')
    if method == 'fixed' and rest.startswith('r:'):
        rest = rest[2:]
    algorithm, sep2, digest = rest.partition(':')
    allowed = ('sha256',) if method == 'text' else tuple(HASH_SIZES) if method == 'fixed' else ()
    if not (sep and sep2 and algorithm in allowed and _is_digest(digest, HASH_SIZES[algorithm])):
        raise InvalidNarInfo('CA is not a content address Nix accepts '
                             '(text:sha256:HASH or fixed:[r:]ALGORITHM:HASH)',
                             path=path, cache=source, found=value)
    return value


def _checked_file_hash(value, path, source):
    """``ALGO:HASH`` or SRI ``ALGO-BASE64``, as Nix parses FileHash."""
    if value is None:
        return None
    for separator in (':', '-'):
        algorithm, sep, digest = value.partition(separator)
        if sep and algorithm in HASH_SIZES:
            if separator == ':' and _is_digest(digest, HASH_SIZES[algorithm]):
                return value
            if separator == '-' and len(digest) == 4 * ((HASH_SIZES[algorithm] + 2) // 3) \
                    and _is_digest(digest, HASH_SIZES[algorithm]):
                return value
    raise InvalidNarInfo('FileHash is not a hash Nix accepts', path=path, cache=source,
                         found=value)


def _checked_system(value):
    """System is informational and not stored: anything but a plain word is dropped."""
    return value if value is not None and _SYSTEM.match(value) else None


def is_signature(text: str) -> bool:
    """``NAME:BASE64`` of a 64-byte Ed25519 signature, the only Sig form that can verify."""
    if not _SIGNATURE.match(text):
        return False
    try:
        return len(base64.b64decode(text.partition(':')[2], validate=True)) == 64
    except (binascii.Error, ValueError):
        return False
