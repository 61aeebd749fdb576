# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``.narinfo`` files: parse, write back, and the fingerprint that signatures cover."""

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidHash,
    InvalidNarInfo,
    InvalidStorePath,
)
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32, parse_hash
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath

REQUIRED = ('StorePath', 'URL', 'NarHash', 'NarSize')
SINGLE = ('StorePath', 'URL', 'Compression', 'FileHash', 'FileSize', 'NarHash', 'NarSize',
          'References', 'Deriver', 'System', 'CA')


class NarInfo(object):
    """The fields of one narinfo; ``nar_hash`` is normalised to ``sha256:<base32>``."""

    def __init__(self, store_path, url, nar_hash, nar_size, compression='bzip2', file_hash=None,
                 file_size=None, references=(), deriver=None, system=None, sigs=(), ca=None):
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
    def parse(cls, text, store_dir=STORE_DIR, source=None):
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
                file_hash=fields.get('FileHash') or None,
                file_size=_size(fields, 'FileSize', path_text, source),
                references=references,
                deriver=deriver,
                system=fields.get('System') or None,
                sigs=sigs,
                ca=fields.get('CA') or None,
            )
        except (InvalidStorePath, InvalidHash) as error:
            raise InvalidNarInfo('invalid narinfo: %s' % error, path=path_text, cache=source)

    def to_text(self, store_dir=STORE_DIR):
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

    def fingerprint(self, store_dir=STORE_DIR):
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
