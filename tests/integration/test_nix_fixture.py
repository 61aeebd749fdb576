"""Nix from the cache: the Nix fixture closure (tests/fixtures/nix.nix) realised by our
library onto a root with no Nix, and that Nix then run against its own store.

Two ways of running the realised Nix:

* from the host with ``--store ROOT`` (``env -i``, nothing from the environment);
  its loader and libraries are then found under the machine's /nix/store, where the
  fixture was built;
* in a private mount namespace where ``ROOT/nix`` is bind-mounted over ``/nix``: there
  the loader, the libraries and Nix are the realised files and nothing of the
  machine's store or its Nix can be reached, as on a host that never had Nix.
"""
import os
import shutil
import subprocess

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from nixtest import fixtures, nix

pytestmark = pytest.mark.slow

NIX_TOOLS = ('nix', 'nix-build', 'nix-channel', 'nix-collect-garbage', 'nix-copy-closure',
             'nix-daemon', 'nix-env', 'nix-hash', 'nix-instantiate', 'nix-prefetch-url',
             'nix-shell', 'nix-store')


def base(path):
    return os.path.basename(path)


@pytest.fixture(scope='module')
def nix_closure():
    try:
        nix.require()
    except nix.NixMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return fixtures.nix_closure()


@pytest.fixture(scope='module')
def nix_cache(nix_closure):
    caches = fixtures.caches(fixtures.keys(), [nix_closure],
                             root=os.path.join(fixtures.FIXTURES_BUILD_DIR, 'caches-nix'),
                             compressions=('xz',))
    return caches['xz']


@pytest.fixture
def realised(nix_closure, nix_cache, alt_root):
    """``alt_root`` with the Nix closure realised into it by our library."""
    with LocalStore(root=str(alt_root)) as store:
        Realiser(store, [make_substituter(nix_cache.url)],
                 TrustedKeys([nix_cache.public_key])).realise([StorePath.parse(nix_closure.top)])
    return alt_root


def run_clean(args, env=None, check=True):
    """Run with ``env -i`` plus ``env``: no PATH, no NIX_*, nothing of ours."""
    cmd = ['env', '-i'] + ['%s=%s' % kv for kv in sorted((env or {}).items())] + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError('%s exited %d\nstdout:\n%s\nstderr:\n%s' % (
            ' '.join(cmd), proc.returncode, proc.stdout, proc.stderr))
    return proc


def verify_complaints(stderr):
    progress = {'reading the Nix store...', 'checking path existence...',
                'checking link hashes...', 'checking store hashes...'}
    return [line for line in stderr.splitlines() if line.strip() and line.strip() not in progress]


def in_namespace(root, script, home):
    """Run ``script`` (sh) with ``ROOT/nix`` mounted over ``/nix`` in a private mount
    namespace, with a scrubbed environment."""
    if shutil.which('unshare') is None or os.geteuid() != 0:
        pytest.skip('needs unshare and root for a private mount namespace')
    proc = nix.in_namespace(root, script, env={'HOME': str(home)})
    if proc.returncode != 0:
        raise AssertionError('namespace script exited %d\nstdout:\n%s\nstderr:\n%s' % (
            proc.returncode, proc.stdout, proc.stderr))
    return proc


# --- the closure as built -------------------------------------------------------------

def test_nix_closure_shape(nix_closure):
    c = nix_closure
    version = subprocess.run(['nix-store', '--version'], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
    assert base(c.top)[33:] == 'nix-' + version
    glibc, libs = c.by_name('glibc-runtime'), c.by_name('nix-libs')
    assert c.paths == sorted([glibc, libs, c.top])
    # The daemon's unit files, which the fixture always writes, name the path itself.
    assert sorted(c.infos[c.top]['references']) == sorted([glibc, libs, c.top])
    assert sorted(c.infos[libs]['references']) == sorted([glibc, libs])
    assert c.infos[glibc]['references'] == []

    assert sorted(os.listdir(os.path.join(c.top, 'bin'))) == sorted(NIX_TOOLS)
    for tool in NIX_TOOLS[1:]:
        assert os.readlink(os.path.join(c.top, 'bin', tool)) == 'nix'
    for name in ('libnixstore.so', 'libnixutil.so', 'libnixexpr.so', 'libnixmain.so',
                 'libnixfetchers.so', 'libnixcmd.so', 'libsqlite3.so.0',
                 'libcurl-gnutls.so.4', 'libboost_context.so.1.74.0'):
        assert os.path.isfile(os.path.join(libs, 'lib', name)), name

    exe = os.path.join(c.top, 'bin', 'nix')
    interp = subprocess.run(['patchelf', '--print-interpreter', exe], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert interp.startswith(glibc + '/lib/')
    rpath = subprocess.run(['patchelf', '--print-rpath', exe], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert rpath == '%s/lib:%s/lib' % (libs, glibc)

    # The daemon units are the fixture's own, whatever the machine has installed.
    units = os.path.join(c.top, 'lib/systemd/system')
    assert sorted(os.listdir(units)) == ['nix-daemon.service', 'nix-daemon.socket']
    with open(os.path.join(units, 'nix-daemon.service')) as f:
        service = f.read()
    assert 'ExecStart=@%s/bin/nix-daemon nix-daemon --daemon' % c.top in service
    with open(os.path.join(units, 'nix-daemon.socket')) as f:
        socket = f.read()
    assert 'ListenStream=/nix/var/nix/daemon-socket/socket' in socket
    assert '/usr/bin' not in service + socket


def test_built_nix_runs_with_nothing_from_the_host(nix_closure, tmp_path):
    nix_store = os.path.join(nix_closure.top, 'bin', 'nix-store')
    out = run_clean([nix_store, '--version']).stdout
    assert out.strip() == 'nix-store (Nix) %s' % base(nix_closure.top)[37:]
    # Every object the loader initialises comes from the closure.
    trace = run_clean([nix_store, '--version'], env={'LD_DEBUG': 'libs'}).stderr
    loaded = [line.split('calling init:')[1].strip() for line in trace.splitlines()
              if 'calling init:' in line]
    assert len(loaded) > 20
    assert [p for p in loaded if not p.startswith(tuple(nix_closure.paths))] == []
    # An empty alternate root: Nix creates the store and its database there.
    root = tmp_path / 'empty-root'
    proc = run_clean([nix_store, '--store', str(root), '--verify'])
    assert verify_complaints(proc.stderr) == []
    assert os.path.isfile(os.path.join(str(root), 'nix/var/nix/db/db.sqlite'))


# --- Nix from the cache ---------------------------------------------------------------

def test_realised_nix_verifies_its_own_store(nix_closure, realised):
    root = str(realised)
    nix_store = os.path.join(root, 'nix/store', base(nix_closure.top), 'bin/nix-store')
    assert os.access(nix_store, os.X_OK)
    proc = run_clean([nix_store, '--store', root, '--verify', '--check-contents'])
    assert proc.returncode == 0
    assert verify_complaints(proc.stderr) == []
    closure = run_clean([nix_store, '--store', root, '-qR', nix_closure.top]).stdout.split()
    assert sorted(closure) == nix_closure.paths
    # And the machine's Nix agrees.
    assert nix.verify_store(root) == []


def test_realised_nix_manages_its_store_where_there_is_no_other_nix(
        nix_closure, realised, tmp_path):
    """Inside the namespace /nix is the realised root: loader, libraries and Nix are the
    files our library wrote, and the machine's store is out of reach."""
    top = nix_closure.top
    glibc = nix_closure.by_name('glibc-runtime')
    home = tmp_path / 'home'
    home.mkdir()
    profile = '/nix/var/nix/profiles/default'
    script = '''
        bin=%(top)s/bin
        [ -x "$bin/nix-store" ]
        "$bin/nix-store" --version
        "$bin/nix-store" --verify --check-contents
        echo "== closure"; "$bin/nix-store" -qR %(top)s
        # Two generations: the Nix closure is reachable from the second only.
        "$bin/nix-env" -p %(profile)s --set %(glibc)s
        "$bin/nix-env" -p %(profile)s --set %(top)s
        echo "== generations before"; "$bin/nix-env" -p %(profile)s --list-generations
        # Paths nothing refers to, for the garbage collectors.
        echo one > "$HOME/garbage-1"
        echo two > "$HOME/garbage-2"
        garbage1=$("$bin/nix-store" --add "$HOME/garbage-1")
        "$bin/nix-collect-garbage" -d > /dev/null
        echo "== generations after"; "$bin/nix-env" -p %(profile)s --list-generations
        if [ -e "$garbage1" ]; then echo "nix-collect-garbage left $garbage1" >&2; exit 1; fi
        garbage2=$("$bin/nix-store" --add "$HOME/garbage-2")
        echo "== collected"; "$bin/nix-store" --gc
        if [ -e "$garbage2" ]; then echo "nix-store --gc left $garbage2" >&2; exit 1; fi
        echo "== garbage"; echo "$garbage1"; echo "$garbage2"
        "$bin/nix-store" --verify --check-contents
        echo "== valid"; "$bin/nix-store" -qR %(top)s
        echo "== end"
    ''' % {'top': top, 'glibc': glibc, 'profile': profile}
    proc = in_namespace(realised, script, home)
    out = proc.stdout
    assert 'nix-store (Nix)' in out

    def section(name):
        return out.split('== ' + name + '\n')[1].split('==')[0].split('\n')

    assert sorted(filter(None, section('closure'))) == nix_closure.paths
    before = [line.split()[0] for line in section('generations before') if line.strip()]
    after = [line.split()[0] for line in section('generations after') if line.strip()]
    assert before == ['1', '2']
    assert after == ['2']
    garbage = sorted(filter(None, section('garbage')))
    assert sorted(p[44:] for p in garbage) == ['garbage-1', 'garbage-2']
    # Only garbage-2 was left for nix-store --gc.
    assert [line for line in section('collected') if line] == [
        '1 store paths deleted, 0.00 MiB freed']
    assert sorted(filter(None, section('valid'))) == nix_closure.paths
    # Back on the host: what the realised Nix left behind verifies with the machine's Nix.
    assert nix.verify_store(str(realised)) == []
    assert sorted(p for p in nix.valid_paths(str(realised))) == nix_closure.paths
    assert os.readlink(os.path.join(str(realised), 'nix/var/nix/profiles/default')) == \
        'default-2-link'
