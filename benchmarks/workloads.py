"""The benchmark's closures and caches, built once and kept under build/bench.

``postgres``  the PostgreSQL fixture closure of the tests (3 paths, about 85 MiB of NAR)
``wide``      COUNT paths of about KIB KiB each plus a top path (benchmarks/wide.nix):
              many small NARs
``large``     one leaf of about MIB MiB plus a top path: one large NAR, for peak memory

``wide`` and ``large`` hold real binary files of this machine, so they compress as real
closures do.  Each closure is written to signed ``file://`` caches by real Nix, served
over loopback HTTP by run.py and read from disk by the floor.
"""
import collections
import json
import os

from nixtest import fixtures, nix

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH_DIR = os.path.join(os.path.dirname(HERE), 'build', 'bench')
SOURCES = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/bin', '/usr/lib/jvm',
           '/usr/lib/gcc', '/usr/libexec', '/usr/lib']
KIB = 1024
MIB = 1024 * 1024

Workload = collections.namedtuple('Workload', 'name closure cache_dir')
Workload.__doc__ = ('A closure and the directory of one of its caches (relative to BENCH_DIR, '
                    'which run.py serves over HTTP).')

Nar = collections.namedtuple('Nar', 'store_path file compression nar_hash nar_size')
Nar.__doc__ = 'One NAR of a file cache: its compressed file, compression, NarHash and NarSize.'


def real_binary_files(largest):
    """Regular files of 4 KiB to ``largest`` bytes from SOURCES, in a stable order."""
    seen = set()
    for source in SOURCES:
        for directory, subdirs, names in os.walk(source):
            subdirs.sort()
            for name in sorted(names):
                path = os.path.join(directory, name)
                if path in seen or os.path.islink(path) or not os.path.isfile(path):
                    continue
                if any(c in path for c in '\n"$`\\'):
                    continue
                try:
                    length = os.path.getsize(path)
                    with open(path, 'rb'):
                        pass
                except OSError:
                    continue
                if 4 * KIB <= length <= largest:
                    seen.add(path)
                    yield path, length


def file_groups(count, group_bytes, largest):
    """``count`` lists of files of at least ``group_bytes`` each (files of at most
    ``largest`` bytes), no file twice."""
    groups, current, size = [], [], 0
    for path, length in real_binary_files(largest):
        current.append(path)
        size += length
        if size >= group_bytes:
            groups.append(current)
            if len(groups) == count:
                return groups
            current, size = [], 0
    raise SystemExit('only %d groups of %d bytes of files found under %s, %d wanted'
                     % (len(groups), group_bytes, ', '.join(SOURCES), count))


def files_closure(name, groups):
    """Build benchmarks/wide.nix over ``groups`` (one leaf per list of files)."""
    os.makedirs(BENCH_DIR, exist_ok=True)
    list_file = os.path.join(BENCH_DIR, name + '-files.json')
    text = json.dumps(groups, indent=0)
    if not os.path.exists(list_file) or open(list_file).read() != text:
        with open(list_file, 'w') as handle:
            handle.write(text)
    top = nix.build(os.path.join(HERE, 'wide.nix'), {'listFile': list_file, 'name': name})[0]
    paths = nix.closure([top])
    return fixtures.Closure(name, top, paths, nix.path_info(None, paths, recursive=False))


def wide_closure(count, kib):
    """About ``count`` paths of about ``kib`` KiB (files of at most half of it each)."""
    return files_closure('wide', file_groups(count, kib * KIB, kib * KIB // 2))


def large_closure(mib):
    """One leaf of about ``mib`` MiB (files of up to 16 MiB)."""
    return files_closure('large', file_groups(1, mib * MIB, 16 * MIB))


def cached(name, closure, keys, caches_name, compression):
    """A Workload: ``closure`` in the signed ``compression`` cache BENCH_DIR/caches_name."""
    fixtures.caches(keys, [closure], root=os.path.join(BENCH_DIR, caches_name),
                    compressions=(compression,))
    return Workload(name, closure, os.path.join(caches_name, compression))


def read_narinfo(path):
    fields = {}
    with open(path) as handle:
        for line in handle:
            key, _sep, value = line.rstrip('\n').partition(': ')
            fields[key] = value
    return fields


def nars(workload):
    """The NARs of a workload's closure as its cache holds them, largest first."""
    cache = os.path.join(BENCH_DIR, workload.cache_dir)
    found = []
    for path in workload.closure.paths:
        info = read_narinfo(os.path.join(cache, os.path.basename(path)[:32] + '.narinfo'))
        found.append(Nar(path, os.path.join(cache, info['URL']), info['Compression'],
                         info['NarHash'], int(info['NarSize'])))
    return sorted(found, key=lambda nar: -nar.nar_size)
