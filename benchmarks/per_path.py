"""What one path of a wide closure costs the module on a bare host, piece by piece.

Run by benchmarks/run.py with the bare /usr/bin/python3 of the task (standard library
only), over the wide closure's zstd cache: ``per_path.py CACHE_DIR CACHE_URL KEY ROOT``.
For each piece it times the way the module works now against the way it worked before,
and prints milliseconds a path (medians of 3 passes over up to COUNT paths):

  signature   a narinfo's Ed25519 signature: the interpreter's libcrypto (ctypes) /
              the pure-Python implementation
  zstd        decompressing a NAR: the system's libzstd in process / one zstd process
  narinfo     fetching a .narinfo: a kept-alive connection / a new connection each time
  register    registering a path in the Nix database: synchronous = normal (as Nix) /
              the SQLite default (an fsync a transaction)
"""
import glob
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'build', 'collections'))

from ansible_collections.nixcache.closure.plugins.module_utils import compression, signing  # noqa: E402
from ansible_collections.nixcache.closure.plugins.module_utils.httpclient import HttpClient  # noqa: E402
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo  # noqa: E402
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore  # noqa: E402
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import references_first  # noqa: E402

COUNT = 100


def per_path(action, items):
    """Median over 3 passes of the milliseconds ``action(item)`` takes per item."""
    passes = []
    for _pass in range(3):
        started = time.perf_counter()
        for item in items:
            action(item)
        passes.append((time.perf_counter() - started) * 1000.0 / len(items))
    return statistics.median(passes)


def read_all(stream):
    while stream.read(1 << 18):
        pass
    stream.close()


def main():
    cache_dir, url, key, root = sys.argv[1:5]
    texts = [open(path).read() for path in sorted(glob.glob(os.path.join(cache_dir, '*.narinfo')))]
    infos = [NarInfo.parse(text) for text in texts][:COUNT]
    trusted = signing.TrustedKeys([key])
    rows = []

    def check(backend):
        return lambda info: trusted.signer_of(info.fingerprint(), info.sigs, backend)

    rows.append(('signature', per_path(check(signing.LibcryptoBackend), infos),
                 per_path(check(signing.PurePythonBackend), infos[:20])))

    nars = [os.path.join(cache_dir, info.url) for info in infos if info.compression == 'zstd']

    def library(path):
        read_all(compression.open_decompressed('zstd', open(path, 'rb')))

    def program(path):
        names = compression.ZSTD_LIBRARIES
        compression.ZSTD_LIBRARIES = ()
        try:
            read_all(compression.open_decompressed('zstd', open(path, 'rb')))
        finally:
            compression.ZSTD_LIBRARIES = names
    rows.append(('zstd', per_path(library, nars), per_path(program, nars)))

    names = ['%s/%s.narinfo' % (url, info.store_path.hash_part) for info in infos]
    kept = HttpClient()
    rows.append(('narinfo', per_path(lambda name: read_all(kept.get(name)), names),
                 per_path(lambda name: read_all(HttpClient().get(name)), names)))

    every = dict((info.store_path, info) for info in (NarInfo.parse(text) for text in texts))
    order = references_first(list(every), lambda path: every[path].references)
    registered = []
    for synchronous in ('normal', 'full'):
        with LocalStore(root=os.path.join(root, synchronous)) as store:
            store._db.execute('pragma synchronous = %s' % synchronous)
            started = time.perf_counter()
            for path in order:   # the database alone: no files are unpacked
                store.register([every[path]])
            registered.append((time.perf_counter() - started) * 1000.0 / len(order))
    rows.append(('register', registered[0], registered[1]))

    print('per path on this host (ms)     now    before  (%d paths of the wide closure)' % len(infos))
    for name, now, before in rows:
        print('  %-10s %22.3f %9.3f' % (name, now, before))


if __name__ == '__main__':
    main()
