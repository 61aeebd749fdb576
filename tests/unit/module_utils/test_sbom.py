"""SBOMs (``sbom.py``): names as Nix splits them, identifiers, the two formats checked by
the field's validators, and the same bytes from a host's store as from the caches."""
import hashlib
import io
import json
import os
import subprocess

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors, nar, sbom
from ansible_collections.nixcache.closure.plugins.module_utils.closure import plan_closure
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.nixbase32 import encode
from ansible_collections.nixcache.closure.plugins.module_utils.realise import realise_closure
from ansible_collections.nixcache.closure.plugins.module_utils.signing import SecretKey, TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath
from nixtest.sbom import cyclonedx_errors, spdx_errors

SIGNER = SecretKey('sbom-test-1', hashlib.sha256(b'sbom test key').digest())
PINNED = '2026-01-31T12:00:00Z'

# store path name -> (names it references, deriver, content address)
PACKAGES = {
    'postgresql-15.8': (['postgresql-15.8-lib', 'glibc-2.40-66', 'tzdata-2024b'], True, False),
    'postgresql-15.8-lib': (['glibc-2.40-66'], True, False),
    'glibc-2.40-66': (['glibc-2.40-66'], True, False),    # a reference to itself
    'tzdata-2024b': ([], False, True),
}
TOP = 'postgresql-15.8'


def path_of(name):
    return StorePath(encode(hashlib.sha256(name.encode()).digest()[:20]), name)


class MemoryCache(object):
    """A signed cache of PACKAGES in memory, with the interface the planner and realiser use."""

    def __init__(self, where, url='https://cache.example.org'):
        self.url = url
        self.store_dir = STORE_DIR
        self.unavailable = None
        self.infos, self.nars = {}, {}
        for name, (refs, has_deriver, has_ca) in sorted(PACKAGES.items()):
            tree = os.path.join(str(where), name)
            os.makedirs(tree)
            with open(os.path.join(tree, 'refs'), 'w') as handle:
                handle.write(''.join(str(path_of(ref)) + '\n' for ref in refs))
            chunks = []
            nar.dump(tree, chunks.append)
            data = b''.join(chunks)
            digest = hashlib.sha256(data).digest()
            info = NarInfo(path_of(name), 'nar/%s.nar' % name, format_base32(digest), len(data),
                           compression='none', references=[path_of(ref) for ref in refs],
                           deriver=path_of(name + '.drv').base if has_deriver else None,
                           ca='fixed:r:sha256:' + encode(digest) if has_ca else None)
            info.sigs = [SIGNER.sign(info.fingerprint(STORE_DIR))]
            self.infos[info.store_path], self.nars[info.url] = info, data

    def narinfo(self, path):
        return self.infos.get(path)

    def open_nar(self, url, store_path=None, nar_size=None):
        return io.BytesIO(self.nars[url])

    def cache_info(self):
        return {'StoreDir': STORE_DIR}

    def priority(self):
        return 40


@pytest.fixture
def cache(tmp_path):
    return MemoryCache(tmp_path / 'trees')


@pytest.fixture
def host(tmp_path, cache):
    """A root whose store holds the closure of TOP, realised from ``cache`` with receipts."""
    root = str(tmp_path / 'host')
    trusted = TrustedKeys([str(SIGNER.public_key())])
    realise_closure(root, [path_of(TOP)], [cache], trusted)
    return root


def from_host(root, formats=sbom.FORMATS, options=None, tops='top', directory=None, check_mode=False):
    """host_sbom of the closure of ``tops`` (default TOP; None: the receipts' paths)."""
    with LocalStore(root=root, create=False) as store:
        return sbom.host_sbom(store, [path_of(TOP)] if tops == 'top' else tops, formats,
                              directory or os.path.join(root, 'sbom'),
                              options or sbom.Options(timestamp=PINNED), check_mode)


# names as Nix splits them

@pytest.mark.parametrize('name, expected', [
    ('postgresql-15.8', ('postgresql', '15.8')),
    ('postgresql-15.8-lib', ('postgresql', '15.8-lib')),
    ('postgresql-and-plugins-15.8', ('postgresql-and-plugins', '15.8')),
    ('apache-httpd-2.0.48', ('apache-httpd', '2.0.48')),
    ('gcc-1-2', ('gcc', '1-2')),
    ('bash--1-2', ('bash', '-1-2')),
    ('xvidtune-?1-2', ('xvidtune', '?1-2')),
    ('7zip_archiver-0.2', ('7zip_archiver', '0.2')),
    ('hello', ('hello', '')),
    ('source', ('source', '')),
    ('glibc-locales', ('glibc-locales', '')),
    ('x-', ('x-', '')),
    ('-1.0', ('', '1.0')),
])
def test_split_name_as_nix(name, expected):
    assert sbom.split_name(name) == expected


@pytest.mark.nix
def test_split_name_agrees_with_real_nix():
    names = ['postgresql-15.8', 'postgresql-15.8-lib', 'gcc-13.2.0-lib', 'bash--1-2',
             'xvidtune-?1-2', 'python3.11-psycopg2-2.9.9', 'openssl-3.0.14-bin', 'hello',
             'tzdata-2024b', 'util-linux-minimal-2.39.4-lib', 'pg_prove-3.36', 'nix-2.8.0',
             'perl5.38.2-DBD-Pg-3.18.0', 'source', 'a-B-1', 'icu4c-73.2', 'x-', 'a-_b']
    expression = '[%s]' % ' '.join('(builtins.parseDrvName "%s")' % name for name in names)
    output = subprocess.run(['nix-instantiate', '--eval', '--strict', '--json', '--expr', expression],
                            capture_output=True, text=True, check=True).stdout
    assert [sbom.split_name(name) for name in names] == \
        [(entry['name'], entry['version']) for entry in json.loads(output)]


def test_a_name_nix_splits_into_nothing_keeps_its_whole_name():
    assert sbom.component_name(StorePath('0' * 32, '-1.0')) == ('-1.0', '')


# identifiers

def test_purl_and_cpe():
    assert sbom.purl('postgresql', '15.8') == 'pkg:nix/postgresql@15.8'
    assert sbom.purl('hello', '') == 'pkg:nix/hello'
    assert sbom.purl('libc++', '1.0+git=2') == 'pkg:nix/libc%2B%2B@1.0%2Bgit%3D2'
    assert sbom.cpe('postgresql', '15.8') == 'cpe:2.3:a:postgresql:postgresql:15.8:*:*:*:*:*:*:*'
    assert sbom.cpe('glibc', '2.40-66') == 'cpe:2.3:a:gnu:glibc:2.40-66:*:*:*:*:*:*:*'
    assert sbom.cpe('krb5', '1.21') == 'cpe:2.3:a:mit:kerberos_5:1.21:*:*:*:*:*:*:*'
    assert sbom.cpe('hello', '') == 'cpe:2.3:a:hello:hello:-:*:*:*:*:*:*:*'
    assert sbom.cpe('libc++', '1?*') == 'cpe:2.3:a:libc\\+\\+:libc\\+\\+:1\\?\\*:*:*:*:*:*:*:*'
    assert sbom.cpe('foo', '1', {'foo': 'acme'}) == 'cpe:2.3:a:acme:foo:1:*:*:*:*:*:*:*'
    vendors = sbom.Options(cpe_vendors={'foo': 'acme:foo_server', 'glibc': 'other'}).cpe_vendors
    assert sbom.cpe('foo', '1', vendors) == 'cpe:2.3:a:acme:foo_server:1:*:*:*:*:*:*:*'
    assert sbom.cpe('glibc', '2', vendors) == 'cpe:2.3:a:other:glibc:2:*:*:*:*:*:*:*'


def test_spdx_ids_are_stable_and_allowed():
    path = StorePath('0' * 32, 'tzdata-2024b+x_y=z?')
    assert sbom.spdx_id(path) == 'SPDXRef-%s-tzdata-2024b-x-y-z-' % ('0' * 32)


@pytest.mark.parametrize('given, expected', [
    ('2026-01-31T12:00:00Z', '2026-01-31T12:00:00Z'),
    ('2026-01-31 12:00:00', '2026-01-31T12:00:00Z'),
    ('2026-01-31T12:00:00.250+00:00', '2026-01-31T12:00:00Z'),
    ('1769860800', '2026-01-31T12:00:00Z'),
    (0, '1970-01-01T00:00:00Z'),
])
def test_timestamps(given, expected):
    assert sbom.parse_timestamp(given) == expected


@pytest.mark.parametrize('options', [
    dict(timestamp='yesterday'), dict(timestamp='2026-02-30T00:00:00Z'),
    dict(timestamp='2026-01-31T12:00:00+02:00'), dict(cyclonedx_version='1.4'),
    dict(cpe_vendors={'foo': 'a b'}), dict(cpe_vendors={'foo': ['a', 'b', 'c']}),
])
def test_bad_options_are_named(options):
    with pytest.raises(errors.InvalidSbomOption) as raised:
        sbom.Options(**options)
    assert raised.value.found


def test_bad_formats_and_names_are_refused(host):
    with pytest.raises(errors.InvalidSbomOption):
        from_host(host, formats=['swid'])
    with pytest.raises(errors.InvalidSbomOption):
        from_host(host, formats=[])
    with pytest.raises(errors.InvalidSbomOption, match='file name'):
        from_host(host, options=sbom.Options(name='../../etc/passwd'))


# the documents

@pytest.mark.parametrize('version', sbom.CYCLONEDX_VERSIONS)
def test_cyclonedx_document(host, version):
    found = from_host(host, formats=['cyclonedx'],
                      options=sbom.Options(timestamp=PINNED, cyclonedx_version=version))
    output, = found.outputs
    assert cyclonedx_errors(output.data, version) == []
    document = output.document
    assert document['specVersion'] == version and document['metadata']['timestamp'] == PINNED
    assert document['serialNumber'].startswith('urn:uuid:')
    components = dict((c['bom-ref'], c) for c in document['components'])
    assert sorted(components) == sorted(str(path_of(name)) for name in PACKAGES)
    lib = components[str(path_of('postgresql-15.8-lib'))]
    assert (lib['name'], lib['version']) == ('postgresql', '15.8-lib')
    assert lib['purl'] == 'pkg:nix/postgresql@15.8-lib'
    assert lib['cpe'] == 'cpe:2.3:a:postgresql:postgresql:15.8-lib:*:*:*:*:*:*:*'
    with LocalStore(root=host, create=False) as store:
        info = store.path_info(path_of('postgresql-15.8-lib'))
    assert lib['hashes'] == [{'alg': 'SHA-256', 'content': hashlib.sha256(
        _nar_of(host, 'postgresql-15.8-lib')).hexdigest()}]
    properties = [(p['name'], p['value']) for p in lib['properties']]
    assert ('nix:narinfo:nar_hash', info['nar_hash']) in properties
    assert ('nix:narinfo:nar_size', str(info['nar_size'])) in properties
    assert ('nix:narinfo:deriver', str(path_of('postgresql-15.8-lib.drv'))) in properties
    assert ('nix:narinfo:sig', info['sigs'][0]) in properties
    assert ('nixcache:substituter', 'https://cache.example.org') in properties
    tzdata = dict((p['name'], p['value']) for p in components[str(path_of('tzdata-2024b'))]['properties'])
    assert tzdata['nix:narinfo:ca'].startswith('fixed:r:sha256:') and 'nix:narinfo:deriver' not in tzdata
    edges = dict((d['ref'], d['dependsOn']) for d in document['dependencies'])
    assert edges[str(path_of('glibc-2.40-66'))] == []     # its reference to itself is no edge
    assert sorted(edges[str(path_of(TOP))]) == sorted(str(path_of(ref)) for ref in PACKAGES[TOP][0])
    root_ref = document['metadata']['component']['bom-ref']
    assert edges[root_ref] == [str(path_of(TOP))]
    assert document['metadata']['properties'] == [{'name': 'nixcache:top_path', 'value': str(path_of(TOP))}]


def _nar_of(root, name):
    chunks = []
    nar.dump(os.path.join(root, 'nix', 'store', path_of(name).base), chunks.append)
    return b''.join(chunks)


def test_spdx_document(host, tmp_path):
    output, = from_host(host, formats=['spdx']).outputs
    written = tmp_path / 'closure.spdx.json'
    written.write_bytes(output.data)
    assert spdx_errors(written) == []
    document = output.document
    assert document['spdxVersion'] == 'SPDX-2.3' and document['creationInfo']['created'] == PINNED
    packages = dict((p['SPDXID'], p) for p in document['packages'])
    top = packages[sbom.spdx_id(path_of(TOP))]
    assert (top['name'], top['versionInfo']) == ('postgresql', '15.8')
    assert top['checksums'][0]['checksumValue'] == hashlib.sha256(_nar_of(host, TOP)).hexdigest()
    assert {ref['referenceType'] for ref in top['externalRefs']} == {'purl', 'cpe23Type'}
    assert 'nix:store_path=%s' % path_of(TOP) in [a['comment'] for a in top['annotations']]
    relations = set((r['spdxElementId'], r['relationshipType'], r['relatedSpdxElement'])
                    for r in document['relationships'])
    assert ('SPDXRef-DOCUMENT', 'DESCRIBES', sbom.spdx_id(path_of(TOP))) in relations
    expected = set((sbom.spdx_id(path_of(name)), 'DEPENDS_ON', sbom.spdx_id(path_of(ref)))
                   for name, (refs, _d, _c) in PACKAGES.items() for ref in refs if ref != name)
    assert relations - {('SPDXRef-DOCUMENT', 'DESCRIBES', sbom.spdx_id(path_of(TOP)))} == expected


def test_validators_catch_a_broken_document(host, tmp_path):
    """The checks above can fail: a component without a type, a dangling SPDX relation."""
    cdx, spdx = from_host(host).outputs
    document = json.loads(cdx.data)
    del document['components'][0]['type']
    assert cyclonedx_errors(json.dumps(document).encode(), '1.6')
    document = json.loads(spdx.data)
    document['relationships'][0]['relatedSpdxElement'] = 'SPDXRef-nothing'
    broken = tmp_path / 'broken.spdx.json'
    broken.write_text(json.dumps(document))
    assert spdx_errors(broken)


def test_the_caches_give_the_same_bytes_as_the_host(host, cache):
    """What the lookup builds from narinfos is what the module builds from the store."""
    trusted = TrustedKeys([str(SIGNER.public_key())])
    plan = plan_closure([path_of(TOP)], [cache], trusted)
    records = sbom.records_from_plan(plan.to_fetch)
    for fmt in sbom.FORMATS:
        for version in sbom.CYCLONEDX_VERSIONS:
            options = sbom.Options(timestamp=PINNED, cyclonedx_version=version,
                                   cpe_vendors={'tzdata': 'iana'})
            output, = from_host(host, formats=[fmt], options=options).outputs
            assert sbom.serialise(sbom.build(fmt, records, [path_of(TOP)], options)) == output.data


def test_several_top_paths_and_the_receipts_default(host, cache, tmp_path):
    tops = [path_of(TOP), path_of('tzdata-2024b')]
    found = from_host(host, tops=tops)
    assert [output.document.get('name') for output in found.outputs] == [None, 'postgresql-15.8+tzdata-2024b']
    assert len(found.records) == len(PACKAGES)
    # no paths given: those of the receipts (realise wrote one for TOP)
    implicit = from_host(host, tops=None)
    assert implicit.top_paths == [path_of(TOP)] and len(implicit.records) == len(PACKAGES)


def test_a_top_path_not_valid_fails_or_is_pending_in_check_mode(host):
    missing = path_of('absent-1.0')
    with pytest.raises(errors.StoreError) as raised:
        from_host(host, tops=[missing])
    assert raised.value.path == str(missing)
    pending = from_host(host, tops=[missing], check_mode=True)
    assert pending.pending == [str(missing)] and pending.outputs == []
    empty = str(os.path.join(host, 'empty'))
    with pytest.raises(errors.InvalidSbomOption, match='no receipts'):
        from_host(empty, tops=None)


# the files

def test_pinned_documents_are_written_once(host, tmp_path):
    directory = str(tmp_path / 'out')
    first = from_host(host, directory=directory).outputs
    assert sorted(sbom.write(first)) == sorted(
        os.path.join(directory, path_of(TOP).base + suffix) for suffix in ('.cdx.json', '.spdx.json'))
    again = from_host(host, directory=directory).outputs
    assert not any(output.changed for output in again) and sbom.write(again) == []
    other = from_host(host, directory=directory, options=sbom.Options(timestamp='0')).outputs
    assert all(output.changed for output in other)
    assert oct(os.stat(first[0].path).st_mode & 0o777) == '0o644'


def test_unpinned_documents_keep_their_time_until_the_closure_changes(host, tmp_path, monkeypatch):
    directory = str(tmp_path / 'out')
    monkeypatch.setattr(sbom.time, 'time', lambda: 1700000000.0)
    sbom.write(from_host(host, directory=directory, options=sbom.Options()).outputs)
    monkeypatch.setattr(sbom.time, 'time', lambda: 1800000000.0)
    again = from_host(host, directory=directory, options=sbom.Options()).outputs
    assert not any(output.changed for output in again)
    assert again[0].document['metadata']['timestamp'] == '2023-11-14T22:13:20Z'
    grown = from_host(host, directory=directory, options=sbom.Options(),
                      tops=[path_of(TOP), path_of('tzdata-2024b')]).outputs
    assert grown[0].document['metadata']['timestamp'] == '2027-01-15T08:00:00Z'
    renamed = from_host(host, directory=directory, options=sbom.Options(name='image')).outputs
    assert all(output.before is None for output in renamed)


def test_serial_numbers_follow_the_content():
    records = [sbom.Record(path_of('a-1'), format_base32(b'\0' * 32), 1)]
    options = sbom.Options(timestamp=PINNED)
    one = sbom.build('cyclonedx', records, [path_of('a-1')], options)
    assert one == sbom.build('cyclonedx', records, [path_of('a-1')], options)
    later = sbom.build('cyclonedx', records, [path_of('a-1')], sbom.Options(timestamp='0'))
    assert one['serialNumber'] != later['serialNumber']
    spdx = sbom.build('spdx', records, [path_of('a-1')], options)
    assert spdx['documentNamespace'].startswith('urn:uuid:')
