# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SBOMs of a closure: CycloneDX 1.5/1.6 JSON and SPDX 2.3 JSON from one list of records.

A ``Record`` is what both the host and a cache know of a store path: NarHash, NarSize,
references, deriver, signatures, content address and the cache that served it.  The host's
records come from the Nix database and the receipts (``records_from_store``), a cache's
from its narinfos (``records_from_plan``); the same closure gives the same records, so the
same document, byte for byte (``serialise``).

Each store path is one component / package: its name split into name and version as Nix
splits a derivation name (``split_name``), its NarHash as SHA-256, a purl
``pkg:nix/<name>@<version>`` and a CPE ``cpe:2.3:a:<vendor>:<product>:<version>:...`` for
scanners that match by CPE.  The rest goes into CycloneDX properties of the registered
``nix`` namespace (``nix:store_path``, ``nix:narinfo:*``) and SPDX annotations of the same
names.  Nothing depends on the time unless no timestamp is pinned; the serial number and
the SPDX namespace are derived from the document itself.
"""

import calendar
import hashlib
import json
import os
import re
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidSbomOption,
    NixCacheError,
    StoreError,
    file_errors,
)
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import parse_hash
from ansible_collections.nixcache.closure.plugins.module_utils.receipts import (
    RECEIPTS_DIR,
    recorded_receipts,
    recorded_sources,
    write_file_atomically,
)
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath

TOOL_NAME = 'nixcache.closure'
TOOL_VERSION = '0.2.0'   # the collection's version (galaxy.yml; tests/release checks they agree)
FORMATS = ('cyclonedx', 'spdx')
CYCLONEDX_VERSIONS = ('1.5', '1.6')
READ_LIMIT = 256 * 1024 * 1024   # an existing file larger than this is replaced unread
SBOM_DIR = '/nix/var/nixcache/sbom'   # the default directory, beside the receipts
FILE_SUFFIXES = {'cyclonedx': '.cdx.json', 'spdx': '.spdx.json'}
_TIMESTAMP = re.compile(r'\A(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]00:?00)?\Z')
# uuid5 namespace of this collection's SBOMs (uuid5 of the URL namespace and the tool name)
_SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, 'urn:nixcache.closure:sbom')

# NVD's vendor (and product, where it is not the Nix name) for names common in Nix closures
# whose vendor is not the name itself.  Any other name gets itself as vendor, as syft guesses.
CPE_VENDORS = {
    'bash': 'gnu', 'binutils': 'gnu', 'coreutils': 'gnu', 'gcc': 'gnu', 'gettext': 'gnu',
    'glibc': 'gnu', 'gnutar': ('gnu', 'tar'), 'gzip': 'gnu', 'libidn2': 'gnu', 'mpfr': 'gnu',
    'ncurses': 'gnu', 'readline': 'gnu', 'gmp': 'gmplib',
    'libxml2': 'xmlsoft', 'libxslt': 'xmlsoft', 'zstd': 'facebook', 'lz4': 'lz4_project',
    'xz': 'tukaani', 'bzip2': 'bzip', 'krb5': ('mit', 'kerberos_5'),
    'icu4c': ('icu-project', 'international_components_for_unicode'),
    'cyrus-sasl': 'cmu', 'curl': 'haxx', 'python3': ('python', 'python'),
    'libffi': 'libffi_project', 'pcre2': 'pcre', 'pcre': 'pcre', 'expat': 'libexpat_project',
    'systemd': 'systemd_project', 'util-linux': 'kernel', 'brotli': 'google',
    'protobuf': 'google', 'geos': 'osgeo', 'proj': 'osgeo', 'gdal': 'osgeo', 'nix': 'nixos',
}


class Record(object):
    """One store path of a closure, as the Nix database or a narinfo describes it."""

    __slots__ = ('path', 'nar_hash', 'nar_size', 'references', 'deriver', 'signatures', 'ca',
                 'cache')

    def __init__(self, path: StorePath, nar_hash: str, nar_size: Optional[int], references: Iterable[StorePath] = (), deriver: Optional[str] = None,
                 signatures: Iterable[str] = (), ca: Optional[str] = None, cache: Optional[str] = None, store_dir: str = STORE_DIR) -> None:
        self.path = path
        self.nar_hash = nar_hash
        self.nar_size = nar_size
        self.references = sorted(set(references))
        self.deriver = _full_path(deriver, store_dir)
        self.signatures = list(signatures)
        self.ca = ca or None
        self.cache = cache or None


def records_from_store(store: Any, top_paths: Iterable[StorePath], sources: Dict[str, str]) -> List[Record]:
    """The records of the closure of ``top_paths`` (valid in ``store``, a LocalStore);
    ``sources``: path text -> the cache it came from (the receipts')."""
    closure = store.closure(list(top_paths))
    infos = store.path_infos(closure)
    return [Record(path, info['nar_hash'], info['nar_size'], info['references'], info['deriver'],
                   info['sigs'], info['ca'], sources.get(path.path(store.store_dir)),
                   store.store_dir)
            for path, info in sorted(infos.items())]


def records_from_plan(planned: Iterable[Any], store_dir: str = STORE_DIR) -> List[Record]:
    """The records of planned paths (closure.PlannedPath: a narinfo and its cache)."""
    return sorted((Record(item.store_path, item.narinfo.nar_hash, item.narinfo.nar_size,
                          item.narinfo.references, item.narinfo.deriver, item.narinfo.sigs,
                          item.narinfo.ca, item.cache.url, store_dir)
                   for item in planned), key=lambda record: record.path)


class HostSbom(object):
    """The documents of a closure in a host's store: ``top_paths``, ``records``,
    ``outputs`` (one Output a format) and ``pending`` (in check mode, top paths not valid
    yet, so no document could be made)."""

    def __init__(self, top_paths, records, outputs, pending):
        self.top_paths = top_paths
        self.records = records
        self.outputs = outputs
        self.pending = pending


def host_sbom(store: Any, top_paths: Optional[Sequence[StorePath]], formats: Iterable[str], directory: str, options: 'Options',
              check_mode: bool = False) -> HostSbom:
    """The documents of the closure of ``top_paths`` (None: of every receipt's path) in
    ``store`` (opened), compared with the files in ``directory``.  A top path that is not
    valid fails, except in check mode, where a preceding ``realise`` would fetch it (and
    write the receipts): then it is pending."""
    receipts = recorded_receipts(store.root)
    tops = host_top_paths(store, receipts) if top_paths is None else sorted(set(top_paths))
    invalid = sorted(set(tops) - store.valid_subset(tops))
    if check_mode and (invalid or not tops):
        return HostSbom(tops, [], [], [str(path) for path in invalid])
    if not tops:
        raise InvalidSbomOption('no store paths given and no receipts found to take them from',
                                path=os.path.join(store.root, RECEIPTS_DIR.lstrip('/')))
    if invalid:
        raise StoreError('not valid in the store', path=str(invalid[0]),
                         expected='a valid store path (realise it first)')
    records = records_from_store(store, tops, recorded_sources(receipts))
    return HostSbom(tops, records, render(records, tops, formats, directory, options,
                                          store.store_dir), [])


def host_top_paths(store: Any, receipts: Iterable[Dict[str, Any]]) -> List[StorePath]:
    """The paths the receipts were written for that are still valid: what ``realise`` put
    on the host and the garbage collector left."""
    requested = set()
    for receipt in receipts:
        try:
            requested.add(StorePath.parse(receipt.get('requested'), store.store_dir))
        except NixCacheError:
            continue
    return sorted(store.valid_subset(requested))


# names, identifiers

def split_name(name: str) -> Tuple[str, str]:
    """(name, version) as Nix's ``DrvName`` splits a derivation name: the version starts
    after the first '-' that is followed by a character other than an ASCII letter
    (``builtins.parseDrvName``); no such '-': no version."""
    for index in range(len(name) - 1):
        if name[index] == '-' and not _is_ascii_letter(name[index + 1]):
            return name[:index], name[index + 1:]
    return name, ''


def _is_ascii_letter(char):
    return ('a' <= char <= 'z') or ('A' <= char <= 'Z')


def component_name(path: StorePath) -> Tuple[str, str]:
    """A component's name and version; a name Nix splits into nothing keeps its whole name."""
    name, version = split_name(path.name)
    return (name, version) if name else (path.name, '')


def purl(name: str, version: str) -> str:
    """``pkg:nix/<name>@<version>``, percent-encoded as the purl specification asks."""
    text = 'pkg:nix/' + _percent(name)
    return text + '@' + _percent(version) if version else text


def _percent(text):
    return ''.join(char if re.match(r'[A-Za-z0-9._~-]', char) else '%%%02X' % ord(char)
                   for char in text)


def cpe(name: str, version: str, vendors: Optional[Dict[str, Any]] = None) -> str:
    """A CPE 2.3 formatted string for a Nix package: vendor and product from ``vendors``
    (name -> vendor or (vendor, product)), else from CPE_VENDORS, else the name for both;
    version ``-`` (not applicable) when the name carries none."""
    found = (vendors or {}).get(name) or CPE_VENDORS.get(name) or name
    vendor, product = (found, name) if isinstance(found, str) else tuple(found)
    fields = [_cpe_value(vendor.lower()), _cpe_value(product.lower()),
              _cpe_value(version) if version else '-']
    return 'cpe:2.3:a:%s:*:*:*:*:*:*:*' % ':'.join(fields)


def _cpe_value(text):
    """Quote what CPE's formatted string binding quotes: all but letters, digits, ``_ - .``."""
    return ''.join(char if re.match(r'[A-Za-z0-9_.-]', char) else '\\' + char for char in text)


def spdx_id(path: StorePath) -> str:
    """``SPDXRef-<hash>-<name>``, unique in a store as the hash part is; characters SPDX
    does not allow become '-'."""
    return 'SPDXRef-%s-%s' % (path.hash_part, re.sub(r'[^A-Za-z0-9.-]', '-', path.name))


# the documents

# the module's and the lookup's options for the document (doc fragment nixcache.closure.sbom)
DOCUMENT_ARGUMENT_SPEC = dict(
    name=dict(type='str'),
    cyclonedx_version=dict(type='str', choices=list(CYCLONEDX_VERSIONS), default='1.6'),
    timestamp=dict(type='str'),
    cpe_vendors=dict(type='dict', default={}),
)


def options_from(params: Dict[str, Any]) -> 'Options':
    """Options from the module's or lookup's parameters of DOCUMENT_ARGUMENT_SPEC."""
    return Options(name=params.get('name'), timestamp=params.get('timestamp'),
                   cyclonedx_version=params.get('cyclonedx_version') or '1.6',
                   cpe_vendors=params.get('cpe_vendors'))


class Options(object):
    """What a document says beyond its records: its name, timestamp, CycloneDX version,
    CPE vendors.  ``timestamp``: ISO 8601 UTC or seconds since the epoch (as
    SOURCE_DATE_EPOCH); None or '' means now."""

    def __init__(self, name: Optional[str] = None, timestamp: Any = None, cyclonedx_version: str = '1.6', cpe_vendors: Optional[Dict[str, Any]] = None) -> None:
        if cyclonedx_version not in CYCLONEDX_VERSIONS:
            raise InvalidSbomOption('CycloneDX versions written are %s' % ', '.join(CYCLONEDX_VERSIONS),
                                    found=str(cyclonedx_version))
        self.name = name
        self.pinned = timestamp not in (None, '')
        self.timestamp = parse_timestamp(timestamp) if self.pinned else None
        self.cyclonedx_version = cyclonedx_version
        self.cpe_vendors = _checked_vendors(cpe_vendors or {})


def parse_timestamp(value: Any) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` from an ISO 8601 UTC time or seconds since the epoch."""
    text = str(value).strip()
    if re.match(r'\A\d{1,12}\Z', text):
        return format_timestamp(int(text))
    match = _TIMESTAMP.match(text)
    if match:
        try:
            seconds = int(_utc_seconds(match.groups()[:6]))
        except (ValueError, OverflowError):
            seconds = None
        if seconds is not None:
            return format_timestamp(seconds)
    raise InvalidSbomOption('the timestamp must be a UTC time such as 2026-01-31T12:00:00Z or '
                            'seconds since 1970 (as SOURCE_DATE_EPOCH)', found=text)


def _utc_seconds(fields):
    parts = [int(part) for part in fields]
    time.strptime('%04d-%02d-%02d %02d:%02d:%02d' % tuple(parts), '%Y-%m-%d %H:%M:%S')
    return calendar.timegm(tuple(parts) + (0, 0, 0))


def format_timestamp(seconds: float) -> str:
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seconds))


def _checked_vendors(vendors):
    checked = {}
    for name, value in vendors.items():
        pair = value.split(':', 1) if isinstance(value, str) else value
        if (not isinstance(name, str) or not isinstance(pair, (list, tuple)) or len(pair) not in (1, 2)
                or not all(isinstance(part, str) and re.match(r'\A[A-Za-z0-9_.\-~+]+\Z', part)
                           for part in pair)):
            raise InvalidSbomOption('cpe_vendors maps a Nix package name to a CPE vendor, '
                                    'or to vendor:product', found='%s: %s' % (name, value))
        checked[name] = pair[0] if len(pair) == 1 else tuple(pair)
    return checked


def default_name(top_paths: Sequence[StorePath]) -> str:
    """The store path's base name for one top path, else their names joined by '+'."""
    tops = sorted(top_paths)
    if len(tops) == 1:
        return tops[0].base
    return '+'.join(path.name for path in tops) or 'empty-closure'


def build(fmt: str, records: Sequence[Record], top_paths: Iterable[StorePath], options: Options, store_dir: str = STORE_DIR,
          timestamp: Optional[str] = None) -> Dict[str, Any]:
    """The document of ``fmt`` ('cyclonedx' or 'spdx') as a dict.  ``timestamp`` (already
    formatted) overrides the options' one; without either, now."""
    if fmt not in FORMATS:
        raise InvalidSbomOption('SBOM formats are %s' % ', '.join(FORMATS), found=str(fmt))
    tops = sorted(set(top_paths))
    known = set(record.path for record in records)
    missing = [path for path in tops if path not in known]
    if missing:
        raise InvalidSbomOption('a top path is not among the records of the closure',
                                path=str(missing[0]))
    when = timestamp or options.timestamp or format_timestamp(time.time())
    name = options.name or default_name(tops)
    builder = _cyclonedx if fmt == 'cyclonedx' else _spdx
    return builder(sorted(records, key=lambda record: record.path), tops, name, when, options,
                   store_dir)


def serialise(document: Dict[str, Any]) -> bytes:
    """The document's bytes: sorted keys, two-space indents, UTF-8, a final newline."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False,
                       separators=(',', ': ')) + '\n').encode('utf-8')


def document_timestamp(fmt: str, document: Any) -> Optional[str]:
    """The timestamp a document of ``fmt`` carries, or None."""
    try:
        if fmt == 'cyclonedx':
            return document['metadata']['timestamp']
        return document['creationInfo']['created']
    except (KeyError, TypeError):
        return None


def _digest_uuid(document):
    """A UUID derived from the document itself (without its serial or namespace)."""
    return str(uuid.uuid5(_SERIAL_NAMESPACE, hashlib.sha256(serialise(document)).hexdigest()))


def _properties(record, store_dir):
    """The ``nix`` namespace facts of a record, as (name, value) pairs, in a fixed order."""
    text = record.path.path(store_dir)
    pairs = [('nix:store_path', text), ('nix:narinfo:store_path', text),
             ('nix:narinfo:nar_hash', record.nar_hash)]
    if record.nar_size is not None:
        pairs.append(('nix:narinfo:nar_size', str(record.nar_size)))
    pairs.append(('nix:narinfo:references', ' '.join(ref.base for ref in record.references)))
    if record.deriver:
        pairs.append(('nix:narinfo:deriver', record.deriver))
    if record.ca:
        pairs.append(('nix:narinfo:ca', record.ca))
    pairs += [('nix:narinfo:sig', sig) for sig in record.signatures]
    if record.cache:
        pairs.append(('nixcache:substituter', record.cache))
    return pairs


def _dependencies(record):
    """The references that are other paths (a path's reference to itself is no edge)."""
    return [ref for ref in record.references if ref != record.path]


def _tool_text():
    return '%s-%s' % (TOOL_NAME, TOOL_VERSION)


def _cyclonedx(records, tops, name, when, options, store_dir):
    version = options.cyclonedx_version
    components, dependencies = [], []
    for record in records:
        pname, pversion = component_name(record.path)
        component = {
            'type': 'library',
            'bom-ref': record.path.path(store_dir),
            'name': pname,
            'hashes': [{'alg': 'SHA-256', 'content': parse_hash(record.nar_hash).hex()}],
            'purl': purl(pname, pversion),
            'cpe': cpe(pname, pversion, options.cpe_vendors),
            'properties': [{'name': key, 'value': value}
                           for key, value in _properties(record, store_dir)],
        }
        if pversion:
            component['version'] = pversion
        components.append(component)
        dependencies.append({'ref': record.path.path(store_dir),
                             'dependsOn': [ref.path(store_dir) for ref in _dependencies(record)]})
    root_ref = 'urn:nixcache.closure:' + name
    dependencies.insert(0, {'ref': root_ref, 'dependsOn': [top.path(store_dir) for top in tops]})
    document = {
        '$schema': 'http://cyclonedx.org/schema/bom-%s.schema.json' % version,
        'bomFormat': 'CycloneDX',
        'specVersion': version,
        'version': 1,
        'metadata': {
            'timestamp': when,
            'tools': {'components': [{'type': 'application', 'group': 'nixcache',
                                      'name': TOOL_NAME, 'version': TOOL_VERSION}]},
            'component': {'type': 'application', 'bom-ref': root_ref, 'name': name},
            'properties': [{'name': 'nixcache:top_path', 'value': top.path(store_dir)}
                           for top in tops],
        },
        'components': components,
        'dependencies': dependencies,
    }
    document['serialNumber'] = 'urn:uuid:' + _digest_uuid(document)
    return document


def _spdx(records, tops, name, when, options, store_dir):
    tool = 'Tool: ' + _tool_text()
    packages, relationships = [], []
    for top in tops:
        relationships.append({'spdxElementId': 'SPDXRef-DOCUMENT', 'relationshipType': 'DESCRIBES',
                              'relatedSpdxElement': spdx_id(top)})
    for record in records:
        pname, pversion = component_name(record.path)
        package = {
            'SPDXID': spdx_id(record.path),
            'name': pname,
            'downloadLocation': 'NOASSERTION',
            'filesAnalyzed': False,
            'checksums': [{'algorithm': 'SHA256',
                           'checksumValue': parse_hash(record.nar_hash).hex()}],
            'licenseConcluded': 'NOASSERTION',
            'licenseDeclared': 'NOASSERTION',
            'copyrightText': 'NOASSERTION',
            'externalRefs': [
                {'referenceCategory': 'PACKAGE-MANAGER', 'referenceType': 'purl',
                 'referenceLocator': purl(pname, pversion)},
                {'referenceCategory': 'SECURITY', 'referenceType': 'cpe23Type',
                 'referenceLocator': cpe(pname, pversion, options.cpe_vendors)},
            ],
            'annotations': [{'annotationDate': when, 'annotationType': 'OTHER',
                             'annotator': tool, 'comment': '%s=%s' % pair}
                            for pair in _properties(record, store_dir)],
        }
        if pversion:
            package['versionInfo'] = pversion
        packages.append(package)
        relationships += [{'spdxElementId': spdx_id(record.path), 'relationshipType': 'DEPENDS_ON',
                           'relatedSpdxElement': spdx_id(ref)} for ref in _dependencies(record)]
    document = {
        'spdxVersion': 'SPDX-2.3',
        'dataLicense': 'CC0-1.0',
        'SPDXID': 'SPDXRef-DOCUMENT',
        'name': name,
        'creationInfo': {
            'created': when,
            'creators': [tool],
            'comment': 'The runtime closure of %s; each package is a Nix store path, its '
                       'checksum the SHA-256 of its NAR serialisation.'
                       % ', '.join(top.path(store_dir) for top in tops),
        },
        'packages': packages,
        'relationships': relationships,
    }
    document['documentNamespace'] = 'urn:uuid:' + _digest_uuid(document)
    return document


def _full_path(deriver, store_dir):
    if not deriver:
        return None
    return deriver if deriver.startswith('/') else '%s/%s' % (store_dir.rstrip('/'), deriver)


# the files

class Output(object):
    """One document to be written: ``fmt``, ``path``, ``document``, its bytes ``data`` and
    the bytes already there, ``before`` (None: no file)."""

    def __init__(self, fmt, path, document, data, before):
        self.fmt = fmt
        self.path = path
        self.document = document
        self.data = data
        self.before = before

    @property
    def changed(self) -> bool:
        return self.data != self.before


def file_path(directory: str, name: str, fmt: str) -> str:
    """``<directory>/<name>.cdx.json`` or ``.spdx.json``; the name may not leave the directory."""
    if not name or '/' in name or name in ('.', '..') or '\0' in name:
        raise InvalidSbomOption('an SBOM name is a file name, without "/"', found=name)
    return os.path.join(directory, name + FILE_SUFFIXES[fmt])


def render(records: Sequence[Record], top_paths: Sequence[StorePath], formats: Iterable[str], directory: str, options: Options,
           store_dir: str = STORE_DIR) -> List[Output]:
    """The documents of ``formats`` for ``directory``, each compared with the file there.

    Without a pinned timestamp a file whose content is otherwise unchanged keeps its own
    timestamp (and so its bytes): a re-run leaves it alone.  A changed closure is dated now."""
    name = options.name or default_name(top_paths)
    outputs = []
    for fmt in _checked_formats(formats):
        path = file_path(directory, name, fmt)
        before = _read(path)
        document = None
        if not options.pinned and before is not None:
            document = _same_but_time(fmt, records, top_paths, options, store_dir, before)
        if document is None:
            document = build(fmt, records, top_paths, options, store_dir)
        outputs.append(Output(fmt, path, document, serialise(document), before))
    return outputs


def _same_but_time(fmt, records, top_paths, options, store_dir, before):
    """The document dated as the file ``before`` is, if it then has the very same bytes."""
    try:
        stamp = document_timestamp(fmt, json.loads(before.decode('utf-8')))
        stamp = parse_timestamp(stamp) if isinstance(stamp, str) else None
    except (ValueError, InvalidSbomOption):
        return None
    if stamp is None:
        return None
    document = build(fmt, records, top_paths, options, store_dir, timestamp=stamp)
    return document if serialise(document) == before else None


def write(outputs: Iterable[Output]) -> List[str]:
    """Write the changed documents, each in one rename; returns their paths."""
    written = []
    for output in outputs:
        if output.changed:
            with file_errors('cannot write the SBOM', output.path):
                write_file_atomically(output.path, output.data, prefix='.sbom-')
            written.append(output.path)
    return written


def _checked_formats(formats):
    checked = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise InvalidSbomOption('SBOM formats are %s' % ', '.join(FORMATS), found=str(fmt))
        if fmt not in checked:
            checked.append(fmt)
    if not checked:
        raise InvalidSbomOption('no SBOM format asked for', expected=', '.join(FORMATS))
    return checked


def _read(path):
    """The file's bytes; one larger than any SBOM we write is not read (it will be replaced)."""
    try:
        with open(path, 'rb') as handle:
            if os.fstat(handle.fileno()).st_size > READ_LIMIT:
                return b''
            return handle.read(READ_LIMIT)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StoreError('cannot read the SBOM: %s' % (error.strerror or error), path=path) from error
