"""The test fixtures themselves: closures, caches, servers and runners are what they claim."""
import http.client
import json
import os
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from nixtest import fixtures, nix
from nixtest.ansible import ansible_bin, ansible_env, run_playbook
from nixtest.postgres import PostgresSmokeError, run_postgres_smoke

pytestmark = pytest.mark.slow

MAGIC = {
    'xz': b'\xfd7zXZ\x00',
    'zstd': b'\x28\xb5\x2f\xfd',
    'bzip2': b'BZh',
    'none': b'\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1',
}


def read_narinfo(text):
    fields = {}
    for line in text.splitlines():
        key, dummy, value = line.partition(': ')
        fields.setdefault(key, []).append(value)
    return fields


def base(path):
    return os.path.basename(path)


# --- the small closure ----------------------------------------------------------------

def test_small_closure_shape(small_closure):
    c = small_closure
    names = sorted(base(p)[33:] for p in c.paths)
    assert names == ['small-blob-1.0', 'small-env-1.0', 'small-lib-1.0', 'small-link-1.0',
                     'small-note-1.0', 'small-tool-1.0']
    blob, lib, tool = c.by_name('blob'), c.by_name('lib'), c.by_name('tool')
    note, link, env = c.by_name('note'), c.by_name('link'), c.top

    def refs(p):
        return sorted(c.infos[p]['references'])

    assert refs(blob) == []
    assert refs(lib) == sorted([blob, lib])                  # self-reference
    assert refs(tool) == sorted([lib, tool])
    assert refs(link) == [tool]
    assert refs(note) == []
    assert refs(env) == sorted([env, lib, link, note, tool])
    assert c.nar_size > 4 * 1024 * 1024


def test_small_closure_has_every_nar_feature(small_closure):
    c = small_closure
    lib, tool, blob = c.by_name('lib'), c.by_name('tool'), c.by_name('blob')
    # Root nodes of every type.
    assert os.path.isdir(c.top)
    assert stat.S_ISREG(os.lstat(c.by_name('note')).st_mode)
    assert os.path.islink(c.by_name('link'))
    # Empty file, empty directory, nested directories.
    assert os.path.getsize(os.path.join(lib, 'lib/empty-file')) == 0
    assert os.listdir(os.path.join(lib, 'share/empty-dir')) == []
    assert os.path.isfile(os.path.join(lib, 'lib/nested/deeper/deepest/where-is-the-blob'))
    # Executables and not.
    assert os.access(os.path.join(tool, 'bin/small-hello'), os.X_OK)
    assert not os.access(os.path.join(tool, 'bin/README'), os.X_OK)
    # Symlinks: relative, absolute, dangling, to directories.
    links = os.path.join(tool, 'share/links')
    targets = {name: os.readlink(os.path.join(links, name)) for name in os.listdir(links)
               if os.path.islink(os.path.join(links, name))}
    assert targets['relative-to-file'] == '../../bin/small-hello'
    assert targets['absolute-into-dependency'].startswith(lib + '/')
    assert targets['absolute-into-self'].startswith(tool + '/')
    assert not os.path.exists(os.path.join(links, 'dangling-absolute'))
    assert not os.path.exists(os.path.join(links, 'dangling-relative'))
    # Unusual names.
    names = set(os.listdir(os.path.join(lib, 'share/names')))
    for name in ('with space', '-leading-dash', 'we?ird=name+chars_~%#@!,;.txt', 'tab\there',
                 'ünïcødé-名前.txt', '.hidden', 'back\\slash', 'quote\'and"double'):
        assert name in names
    assert max(len(n.encode()) for n in names) == 255
    # A few MB of binary data.
    assert os.path.getsize(os.path.join(blob, 'share/data/random.bin')) > 2 * 1024 * 1024
    # The executable runs and reads its dependency.
    out = subprocess.run([os.path.join(c.top, 'bin/small-hello')], capture_output=True,
                         text=True, check=True).stdout
    assert blob in out


# --- the PostgreSQL closure -----------------------------------------------------------

def test_pg_closure_shape(pg_closure, pg_closure_b):
    a, b = pg_closure, pg_closure_b
    assert len(a.paths) == 3
    assert base(a.top)[33:] == 'postgresql-and-plugins-%s' % a.version
    assert a.version.startswith('15.') and a.major == '15'
    assert sorted(a.infos[a.top]['references']) == sorted([a.top, a.libs, a.glibc])
    assert sorted(a.infos[a.libs]['references']) == sorted([a.libs, a.glibc])
    assert a.infos[a.glibc]['references'] == []

    tools = os.listdir(os.path.join(a.top, 'lib/postgresql/15/bin'))
    assert {'postgres', 'initdb', 'pg_ctl', 'psql', 'pg_config'} <= set(tools)
    for tool in tools:
        link = os.path.join(a.top, 'bin', tool)
        assert os.readlink(link) == '../lib/postgresql/15/bin/' + tool
    for entry in ('extension', 'contrib', 'timezonesets', 'tsearch_data'):
        assert os.path.isdir(os.path.join(a.top, 'share/postgresql', entry))
    assert os.path.exists(os.path.join(a.top, 'share/postgresql/extension/plpgsql.control'))
    with open(os.path.join(a.top, 'receipt.json')) as f:
        receipt = json.load(f)
    assert receipt['postgresql']['version'] == a.version

    # Variant b: the same Postgres and libraries under another top path.
    assert b.top != a.top and base(b.top)[33:] == base(a.top)[33:]
    assert (b.glibc, b.libs) == (a.glibc, a.libs)
    with open(os.path.join(b.top, 'share/postgresql/fixture-variant')) as f:
        assert f.read().strip() == 'b'


def test_postgres_runs_from_an_alternate_root_alone(pg_closure, caches, alt_root):
    nix.copy([pg_closure.top], to=alt_root, from_=caches['zstd'].url)
    assert nix.store_entries(alt_root) == sorted(base(p) for p in pg_closure.paths)
    nix.verify_store(alt_root)
    version = run_postgres_smoke(alt_root, pg_closure.top)
    assert version.startswith('PostgreSQL %s ' % pg_closure.version)


def test_postgres_smoke_notices_a_missing_library_path(pg_closure, alt_root):
    nix.copy_to_root([pg_closure.top], alt_root)
    store = os.path.join(alt_root, 'nix/store')
    os.chmod(store, 0o755)
    libs = os.path.join(store, base(pg_closure.libs))
    for dirpath, _dirnames, _filenames in os.walk(libs):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(libs)
    # The copied loader falls back to the machine's libraries; that must not pass.
    with pytest.raises(PostgresSmokeError, match='outside /nix/store'):
        run_postgres_smoke(alt_root, pg_closure.top)


# --- the caches -----------------------------------------------------------------------

@pytest.mark.parametrize('compression', nix.COMPRESSIONS)
def test_cache_has_a_signed_narinfo_for_every_path(caches, nix_keys, compression):
    cache = caches[compression]
    with open(os.path.join(cache.directory, 'nix-cache-info')) as f:
        info = read_narinfo(f.read())
    assert info['StoreDir'] == ['/nix/store'] and info['WantMassQuery'] == ['1']

    all_infos = {}
    for closure in caches.closures:
        all_infos.update(closure.infos)
    assert set(caches.paths) == set(all_infos)
    for path in caches.paths:
        with open(os.path.join(cache.directory, base(path)[:32] + '.narinfo')) as f:
            narinfo = read_narinfo(f.read())
        assert narinfo['StorePath'] == [path]
        assert narinfo['Compression'] == [compression]
        url = narinfo['URL'][0]
        assert url.startswith('nar/') and url.endswith(nix.NAR_EXTENSIONS[compression])
        nar_file = os.path.join(cache.directory, url)
        assert os.path.getsize(nar_file) == int(narinfo['FileSize'][0])
        with open(nar_file, 'rb') as f:
            assert f.read(len(MAGIC[compression])) == MAGIC[compression]
        assert int(narinfo['NarSize'][0]) == all_infos[path]['narSize']
        assert sorted(narinfo['References'][0].split()) == \
            sorted(base(r) for r in all_infos[path]['references'])
        sigs = narinfo['Sig']
        assert len(sigs) == 1 and sigs[0].startswith(nix_keys.trusted.name + ':')

    # Real Nix agrees: every NAR matches its NarHash and the trusted key signed it ...
    tops = [c.top for c in caches.closures]
    nix.verify_cache(cache.url, tops, [nix_keys.trusted.public])
    # ... and the untrusted key did not.
    complaints = nix.verify_cache(cache.url, tops, [nix_keys.untrusted.public],
                                  raise_on_error=False)
    assert len(complaints) == len(caches.paths)
    assert all('untrusted' in line for line in complaints)


def test_caches_are_built_once(caches, nix_keys):
    stamps = {c: os.path.getmtime(caches[c].directory + '.stamp.json') for c in caches}
    started = time.monotonic()
    again = fixtures.caches(nix_keys, caches.closures, root=caches.root)
    assert time.monotonic() - started < 10
    assert {c: os.path.getmtime(again[c].directory + '.stamp.json') for c in again} == stamps


# --- the HTTP server ------------------------------------------------------------------

def test_http_cache_serves_what_nix_reads(http_cache, small_closure, nix_keys, alt_root):
    url = http_cache.url_for('xz')
    with urllib.request.urlopen(url + '/nix-cache-info') as r:
        assert b'StoreDir: /nix/store' in r.read()
    # Real Nix copies from it, checking signatures, into an alternate root.
    nix.copy([small_closure.top], to=alt_root, from_=url, check_sigs=True,
             extra_args=['--trusted-public-keys', nix_keys.trusted.public])
    assert nix.verify_store(alt_root) == []
    infos = nix.path_info(alt_root, [small_closure.top])
    assert sorted(infos) == small_closure.paths
    assert len(http_cache.fetched('/xz/nar/*')) == len(small_closure.paths)
    assert nix.unregistered_entries(alt_root) == []


def test_http_range_head_and_faults(http_cache, small_closure):
    hash_part = base(small_closure.by_name('blob'))[:32]
    narinfo_url = http_cache.url_for('none/%s.narinfo' % hash_part)
    with urllib.request.urlopen(narinfo_url) as r:
        nar_url = http_cache.url_for('none/' + read_narinfo(r.read().decode())['URL'][0])

    request = urllib.request.Request(nar_url, headers={'Range': 'bytes=8-20'})
    with urllib.request.urlopen(request) as r:
        assert r.status == 206 and r.read() == b'nix-archive-1'
    with urllib.request.urlopen(urllib.request.Request(nar_url, method='HEAD')) as r:
        size = int(r.headers['Content-Length'])
        assert r.read() == b''

    http_cache.fault('*.narinfo', status=503, times=1)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(narinfo_url)
    assert exc.value.code == 503
    urllib.request.urlopen(narinfo_url).close()              # only once

    http_cache.fault('/none/nar/*', truncate_after=1000, times=1)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        urllib.request.urlopen(nar_url).read()
    http_cache.fault('/none/nar/*', reset=True, times=1)
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        urllib.request.urlopen(nar_url).read()
    with urllib.request.urlopen(nar_url) as r:
        assert len(r.read()) == size

    log = http_cache.requests_for('/none/nar/*', method='GET')
    assert [r.status for r in log] == [206, 200, None, 200]
    assert log[1].truncated and log[1].bytes_sent == 1000
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(http_cache.url_for('none/0000000000000000000000000000000a.narinfo'))
    assert exc.value.code == 404


# --- judging stores -------------------------------------------------------------------

def test_verify_store_reports_damage(small_closure, alt_root):
    nix.copy_to_root([small_closure.top], alt_root)
    assert nix.verify_store(alt_root) == []
    assert nix.valid_paths(alt_root) == set(small_closure.paths)
    store = os.path.join(alt_root, 'nix/store')

    # A modified file.
    victim = os.path.join(store, base(small_closure.by_name('blob')), 'share/data/eight-bytes')
    os.chmod(os.path.dirname(victim), 0o755)
    os.chmod(victim, 0o644)
    with open(victim, 'wb') as f:
        f.write(b'87654321')
    with pytest.raises(nix.StoreCorrupt) as exc:
        nix.verify_store(alt_root)
    assert any('was modified' in line for line in exc.value.complaints)

    # A vanished path that others still refer to.
    os.chmod(store, 0o755)
    lib = os.path.join(store, base(small_closure.by_name('lib')))
    subprocess.run(['chmod', '-R', 'u+w', lib], check=True)
    shutil.rmtree(lib)
    complaints = nix.verify_store(alt_root, check_contents=False, raise_on_error=False)
    assert any('disappeared' in line for line in complaints)

    # Leftovers that the database does not know.
    os.mkdir(os.path.join(store, 'leftover'))
    open(os.path.join(store, base(small_closure.top) + '.lock'), 'w').close()
    assert nix.unregistered_entries(alt_root) == sorted(['leftover', base(small_closure.top) + '.lock'])


# --- Ansible and the target host ------------------------------------------------------

def test_playbook_runner_and_bare_target(sshd_target):
    inventory = '[targets]\n%s\n[controller]\nlocalhost ansible_connection=local\n' % \
        sshd_target.inventory('target1', greeting='hello there')
    result = run_playbook('''
- hosts: all
  gather_facts: false
  tasks:
    - name: which python
      ansible.builtin.command: >-
        {{ ansible_python_interpreter | default(ansible_playbook_python) }} -c
        "import sys, importlib.util as u; print(sys.executable,
         u.find_spec('cryptography') is not None, u.find_spec('zstandard') is not None)"
      register: python
      changed_when: false
    - name: a variable from the inventory and one from extra vars
      ansible.builtin.set_fact:
        said: "{{ greeting | default('') }} {{ extra }}"
      register: said
    - name: a failure that is ignored
      ansible.builtin.fail:
        msg: expected
      ignore_errors: true
      when: inventory_hostname == 'localhost'
''', inventory, extra_vars={'extra': 'world'})
    result.assert_ok()
    exe, crypto, zstd = result.registered('python', host='target1')['stdout'].split()
    assert (exe, crypto, zstd) == ('/usr/bin/python3', 'False', 'False')
    assert result.registered('said', host='target1')['ansible_facts']['said'] == 'hello there world'
    assert result.tasks('a failure that is ignored', host='localhost')[0]['status'] == 'ignored'
    assert result.stats['target1']['failures'] == 0
    assert result.workdir is None                            # cleaned after success

    failed = run_playbook('- hosts: all\n  gather_facts: false\n  tasks:\n'
                          '    - ansible.builtin.fail: {msg: boom}\n', inventory, check=True)
    failed.assert_failed()
    assert failed.task('ansible.builtin.fail', host='target1')['msg'] == 'boom'
    assert '--check' in failed.command
    shutil.rmtree(failed.workdir)


def test_ansible_sees_the_collection(tmp_path):
    proc = subprocess.run([ansible_bin('ansible-galaxy'), 'collection', 'list', 'nixcache.closure'],
                          env=ansible_env(str(tmp_path)), capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'nixcache.closure' in proc.stdout
