"""`make bench`: the realiser against `nix copy`, on the same machine and the same caches.

Three workloads, each served over loopback HTTP from a cache written and signed by real Nix:

  postgres-xz     the PostgreSQL fixture closure, xz-compressed (as most caches are)
  postgres-zstd   the same closure, zstd-compressed
  wide-zstd       about 300 paths and 1 GiB of NAR made of this machine's real binary
                  files (benchmarks/wide.nix); one leaf holds a quarter of it, so peak
                  memory is measured on one large NAR too

For each, `realise` (the library as the module runs it, in a child process) and
`nix copy --from http://... --to ROOT` alternate into fresh roots, RUNS times each.
Printed: median wall seconds, the ratio, and peak RSS of each child; then the time
the realiser spends on a no-op re-run over the valid wide closure.

Targets (README): <= 0.6x nix copy on xz, <= 0.5x on zstd and on the wide closure,
peak RSS <= 64 MB and flat as NAR size grows, no-op re-run of 300 paths <= 0.3 s.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, REPO)  # first: the repository's conftest links the collection

import conftest  # noqa: E402  (links the collection under build/collections)
from nixtest import fixtures, nix  # noqa: E402
from nixtest.http import CacheServer  # noqa: E402

BENCH_DIR = os.path.join(conftest.REPO, 'build', 'bench')
SOURCES = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/bin', '/usr/lib/jvm',
           '/usr/lib/gcc', '/usr/libexec', '/usr/lib']
MIB = 1024.0 * 1024.0


def real_binary_files(total_bytes):
    """Regular files of 4 KiB to 16 MiB from SOURCES, in a stable order, up to total_bytes."""
    chosen, seen, size = [], set(), 0
    for source in SOURCES:
        for directory, subdirs, names in os.walk(source):
            subdirs.sort()
            for name in sorted(names):
                path = os.path.join(directory, name)
                if path in seen or os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    length = os.path.getsize(path)
                    with open(path, 'rb'):
                        pass
                except OSError:
                    continue
                if not 4096 <= length <= 16 * 1024 * 1024 or any(c in path for c in '\n"$`\\'):
                    continue
                seen.add(path)
                chosen.append((path, length))
                size += length
                if size >= total_bytes:
                    return chosen
    return chosen


def wide_groups(files, count):
    """``count`` non-empty lists of files: the first holds about a quarter of the bytes,
    the others share the rest round-robin."""
    total = sum(length for _path, length in files)
    first, rest, size = [], [], 0
    for path, length in files:
        if size < total / 4.0:
            first.append(path)
            size += length
        else:
            rest.append(path)
    if len(rest) < count - 1:
        raise SystemExit('only %d files found for %d paths' % (len(rest), count - 1))
    return [first] + [rest[start::count - 1] for start in range(count - 1)]


def wide_closure(total_bytes, count):
    os.makedirs(BENCH_DIR, exist_ok=True)
    list_file = os.path.join(BENCH_DIR, 'wide-files.json')
    groups = wide_groups(real_binary_files(total_bytes), count)
    text = json.dumps(groups, indent=0)
    if not os.path.exists(list_file) or open(list_file).read() != text:
        with open(list_file, 'w') as handle:
            handle.write(text)
    top = nix.build(os.path.join(HERE, 'wide.nix'), {'listFile': list_file})[0]
    paths = nix.closure([top])
    return fixtures.Closure('wide', top, paths, nix.path_info(None, paths, recursive=False))


def run_child(command, env=None):
    """Run a command; (wall seconds, peak RSS in MiB, stdout)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit('%s failed:\n%s' % (' '.join(command), err.read().decode()[-4000:]))
        return seconds, usage.ru_maxrss / 1024.0, out.read().decode()


def fresh_root(name):
    root = os.path.join(BENCH_DIR, 'roots', name)
    remove(root)
    os.makedirs(root)
    return root


def remove(path):
    if os.path.lexists(path):
        subprocess.run(['chmod', '-R', 'u+w', path], check=False)
        shutil.rmtree(path)


def ours(url, key, top, root, jobs):
    command = [sys.executable, os.path.join(HERE, 'realise_once.py'), '--root', root,
               '--cache', url, '--key', key, '--jobs', str(jobs), top]
    seconds, rss, out = run_child(command)
    return seconds, rss, json.loads(out)


def nix_copy(url, key, top, root):
    cache_home = tempfile.mkdtemp(prefix='nix-cache-home-')  # no narinfo cache between runs
    try:
        env = nix.env({'XDG_CACHE_HOME': cache_home})
        command = ['nix', 'copy', '--from', url, '--to', root,
                   '--option', 'trusted-public-keys', key, top]
        seconds, rss, _out = run_child(command, env)
        return seconds, rss
    finally:
        shutil.rmtree(cache_home, ignore_errors=True)


def bench(name, url, key, closure, runs, jobs):
    ours_times, ours_rss, nix_times, nix_rss = [], [], [], []
    for run in range(runs):
        root = fresh_root(name + '-ours')
        seconds, rss, report = ours(url, key, closure.top, root, jobs)
        assert sorted(report['fetched']) == sorted(closure.paths), 'realise fetched the wrong paths'
        if run == 0:  # judge the result once with real Nix
            nix.verify_store(root)
        ours_times.append(seconds)
        ours_rss.append(rss)
        remove(root)
        root = fresh_root(name + '-nix')
        seconds, rss = nix_copy(url, key, closure.top, root)
        nix_times.append(seconds)
        nix_rss.append(rss)
        remove(root)
        print('  %-14s run %d: realise %6.2f s %5.1f MiB   nix copy %6.2f s %5.1f MiB'
              % (name, run + 1, ours_times[-1], ours_rss[-1], nix_times[-1], nix_rss[-1]),
              flush=True)
    return dict(name=name, paths=len(closure.paths), nar_mib=closure.nar_size / MIB,
                ours=statistics.median(ours_times), nix=statistics.median(nix_times),
                ours_rss=max(ours_rss), nix_rss=max(nix_rss))


def noop_rerun(url, key, closure, jobs, runs):
    """Seconds the realiser spends (inside the module) when the whole closure is valid."""
    root = fresh_root('noop')
    ours(url, key, closure.top, root, jobs)
    times = []
    for _run in range(runs):
        _seconds, _rss, report = ours(url, key, closure.top, root, jobs)
        assert report['fetched'] == []
        times.append(report['seconds'])
    remove(root)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--jobs', type=int, default=4, help='realise jobs (the module default)')
    parser.add_argument('--wide-mib', type=int, default=1024)
    parser.add_argument('--wide-paths', type=int, default=300)
    parser.add_argument('--only', nargs='*', help='workloads to run (default: all)')
    args = parser.parse_args()

    print('building fixtures (once; kept under build/)', flush=True)
    keys = fixtures.keys()
    postgres = fixtures.pg_closure('a')
    fixtures.caches(keys, [postgres], root=os.path.join(BENCH_DIR, 'caches-pg'),
                    compressions=('xz', 'zstd'))
    wide = wide_closure(args.wide_mib * 1024 * 1024, args.wide_paths)
    fixtures.caches(keys, [wide], root=os.path.join(BENCH_DIR, 'caches-wide'),
                    compressions=('zstd',))
    key = keys.trusted.public
    results = []
    with CacheServer(BENCH_DIR) as server:
        workloads = [('postgres-xz', 'caches-pg/xz', postgres),
                     ('postgres-zstd', 'caches-pg/zstd', postgres),
                     ('wide-zstd', 'caches-wide/zstd', wide)]
        for name, relative, closure in workloads:
            if args.only and name not in args.only:
                continue
            print('%s: %d paths, %.0f MiB of NAR' % (name, len(closure.paths),
                                                     closure.nar_size / MIB), flush=True)
            results.append(bench(name, server.url_for(relative), key, closure, args.runs, args.jobs))
        noop = None
        if not args.only or 'noop' in args.only:
            noop = noop_rerun(server.url_for('caches-wide/zstd'), key, wide, args.jobs, args.runs)
    remove(os.path.join(BENCH_DIR, 'roots'))

    print()
    print('%-14s %6s %9s %11s %11s %7s %12s %12s' % (
        'workload', 'paths', 'NAR MiB', 'realise s', 'nix copy s', 'ratio', 'realise RSS',
        'nix RSS'))
    for r in results:
        print('%-14s %6d %9.0f %11.2f %11.2f %6.2fx %8.1f MiB %8.1f MiB' % (
            r['name'], r['paths'], r['nar_mib'], r['ours'], r['nix'], r['ours'] / r['nix'],
            r['ours_rss'], r['nix_rss']))
    if noop is not None:
        print('no-op re-run over the %d valid paths of the wide closure: %.3f s inside the realiser'
              % (len(wide.paths), noop))
    print('(medians of %d alternating runs; RSS is the peak of each child process)' % args.runs)


if __name__ == '__main__':
    main()
