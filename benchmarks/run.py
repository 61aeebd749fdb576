"""`make bench`: the realise task as users see it, beside `nix copy`, a floor of C tools
and the library alone, on the same machine and the same caches.

Workloads, each in a cache written and signed by real Nix (benchmarks/workloads.py):

  postgres-xz     the PostgreSQL fixture closure, xz-compressed (as most caches are)
  postgres-zstd   the same closure, zstd-compressed
  wide-zstd       about 300 paths of about 1 MiB of this machine's binary files (many
                  small NARs; --wide-paths, --wide-kib)
  large-nar-zstd  one NAR of about 256 MiB (--large-mib): peak memory on a large NAR
  noop            module start-up: the task over the valid wide closure
  per-path        what one path of the wide closure costs, piece by piece, now and
                  before (benchmarks/per_path.py, on the module's Python)

For each workload, every repetition runs these back to back, each into a fresh root, so
that load drift affects all alike (the roots are removed at the end, not between
measurements: see measure.fresh_root; they take up to about 9 GiB with the defaults),
and before each timed run the machine is settled alike (measure.settle: dirty pages
written back, the page cache dropped when run as root, the cache's files read back in):

  ping      ansible-playbook (the test virtualenv's) of one play without fact gathering
            whose only task is ansible.builtin.ping, on localhost with
            ansible_connection=local; the module Python is /usr/bin/python3 in a
            virtualenv without pip or site packages (no cryptography, no zstandard:
            signatures and zstd go through the system's libcrypto and libzstd), behind
            benchmarks/maxrss.py
  task      the same run with the nixcache.closure.realise task instead of ping, over
            loopback HTTP; task seconds = task run - ping run of the same repetition
  nix copy  nix copy --from http://... --to ROOT, with an empty narinfo cache
  floor     every NAR read from the cache directory, decompressed by xz -dc / zstd -dc,
            hashed by openssl dgst -sha256 (as fast as hashlib; sha256sum is about 4
            times slower here) and unpacked by nix-store --restore, JOBS at a time
            (largest first); no database, no signature check
  library   benchmarks/realise_once.py: the library in the test virtualenv (with
            cryptography and zstandard) over loopback HTTP, as before

noop: a ping run and a run of the task over a root where an untimed first run of the
task made the whole wide closure valid, per repetition (3 x --runs by default, as it is
cheap); start-up = median of (task run - ping run).

The first task and library result of each workload are judged by `nix-store --verify
--check-contents`; every floor stream's SHA-256 must be its narinfo's NarHash.  Printed:
medians of the repetitions, ratios, the module's peak RSS (ru_maxrss of the module
process, with any process it waited for), how many worker processes fetched, the peak
PSS of the module with its worker processes (their shared pages counted once; the memory
target, RSS_TARGET_MIB, is judged on the larger of the two) and each target (TARGETS),
met or not.
"module s" is the wall time of the module process alone (from maxrss.py): the rest of
"task s" is the controller's share (templating, AnsiballZ, copying the module).  "module
CPU s" and "nix CPU s" are the CPU seconds (user and system) of the module process and of
nix copy: on a machine that other work shares, they vary much less than wall times, and
each run prints the load average beside its figures.
"""
import argparse
import os
import sys
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, REPO)  # first: the repository's conftest links the collection

# conftest links the collection under build/collections
import conftest  # noqa: E402,F401  pylint: disable=unused-import
import measure  # noqa: E402
import workloads  # noqa: E402
from nixtest import fixtures, nix  # noqa: E402
from nixtest.http import CacheServer  # noqa: E402

DEFAULT_JOBS = 4  # the realise module's default
TIMED = ('postgres-xz', 'postgres-zstd', 'wide-zstd', 'large-nar-zstd')
ALL = TIMED + ('noop', 'per-path')
# The targets: task seconds at most this many times nix copy's / the floor's.
TARGETS = {'postgres-xz': dict(nix=0.7, floor=1.3),
           'postgres-zstd': dict(nix=0.9, floor=1.3),
           'wide-zstd': dict(nix=0.6, floor=1.3),
           'large-nar-zstd': {}}  # there for peak memory
RSS_TARGET_MIB = 64.0
FLAT_MARGIN_MIB = 8.0  # "flat": RSS on the large NAR at most this above RSS on small NARs
STARTUP_TARGET_S = 0.15


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=3, help='repetitions (default 3)')
    parser.add_argument('--jobs', type=int, default=DEFAULT_JOBS,
                        help='parallel NARs for the task, the floor and the library '
                             '(default %d, the module default)' % DEFAULT_JOBS)
    parser.add_argument('--wide-paths', type=int, default=300)
    parser.add_argument('--wide-kib', type=int, default=1024)
    parser.add_argument('--large-mib', type=int, default=256)
    parser.add_argument('--noop-runs', type=int,
                        help='repetitions of the cheap no-op run (default 3 x --runs)')
    parser.add_argument('--only', nargs='*', choices=ALL, help='workloads to run (default: all)')
    return parser.parse_args()


def build_workloads(names, args):
    """The Workloads of ``names`` (building only the closures they need)."""
    keys = fixtures.keys()
    found = {}
    if {'postgres-xz', 'postgres-zstd'} & names:
        postgres = fixtures.pg_closure('a')
        for compression in ('xz', 'zstd'):
            found['postgres-' + compression] = workloads.cached(
                'postgres-' + compression, postgres, keys, 'caches-pg', compression)
    if {'wide-zstd', 'noop', 'per-path'} & names:
        wide = workloads.wide_closure(args.wide_paths, args.wide_kib)
        found['wide-zstd'] = workloads.cached('wide-zstd', wide, keys, 'caches-wide', 'zstd')
    if 'large-nar-zstd' in names:
        large = workloads.large_closure(args.large_mib)
        found['large-nar-zstd'] = workloads.cached('large-nar-zstd', large, keys, 'caches-large',
                                                   'zstd')
    return keys.trusted.public, found


def check_fetched(what, fetched, closure):
    if sorted(fetched) != sorted(closure.paths):
        raise SystemExit('%s fetched the wrong paths: %s' % (what, sorted(fetched)))


def timed_run(run, workload, url, key, host, args):
    """One repetition of ping, task, nix copy, floor and library; a dict of figures."""
    closure, name, first = workload.closure, workload.name, run == 0
    cache = os.path.join(workloads.BENCH_DIR, workload.cache_dir)
    measure.settle(cache)   # the baseline too: writeback left by the last run would slow it
    ping = host.ping()

    root = measure.fresh_root('%s-task-%d' % (name, run + 1), cache)
    task = host.realise(url, key, closure.top, root)
    realised = task.result.registered('realised')
    check_fetched('the task', realised['fetched'], closure)
    if first:
        nix.verify_store(root)

    root = measure.fresh_root('%s-nix-%d' % (name, run + 1), cache)
    nix_run = measure.nix_copy(url, key, closure.top, root)
    nix_seconds, nix_rss = nix_run.seconds, nix_run.rss

    root = measure.fresh_root('%s-floor-%d' % (name, run + 1), cache)
    floor_seconds = measure.floor(workloads.nars(workload), root, args.jobs)

    root = measure.fresh_root('%s-library-%d' % (name, run + 1), cache)
    library_seconds, library_rss, report = measure.library(url, key, closure.top, root, args.jobs)
    check_fetched('the library', report['fetched'], closure)
    if first:
        nix.verify_store(root)

    figures = dict(ping=ping.seconds, task=task.seconds - ping.seconds,
                   module=task.module_seconds, module_cpu=task.module_cpu, task_rss=task.rss,
                   task_pss=task.pss, workers=realised['worker_processes'],
                   nix=nix_seconds, nix_cpu=nix_run.cpu, nix_rss=nix_rss, floor=floor_seconds,
                   library=library_seconds, library_rss=library_rss)
    print('  %-14s run %d: ping %5.2f  task %6.2f (module %6.2f, CPU %5.2f, %5.1f MiB, '
          'PSS %5.1f MiB with %d workers)  nix copy %6.2f (CPU %5.2f)  floor %6.2f  '
          'library %6.2f (%5.1f MiB)  load %s' % (
              name, run + 1, ping.seconds, figures['task'], task.module_seconds, task.module_cpu,
              task.rss, task.pss, figures['workers'], nix_seconds, nix_run.cpu, floor_seconds,
              library_seconds, library_rss, load()), flush=True)
    return figures


def bench(workload, url, key, host, args):
    """The medians (peak RSS: the largest) of ``args.runs`` repetitions of one workload."""
    closure = workload.closure
    print('%s: %d paths, %.0f MiB of NAR, the largest %.0f MiB'
          % (workload.name, len(closure.paths), closure.nar_size / workloads.MIB,
             largest_nar(closure) / workloads.MIB), flush=True)
    runs = [timed_run(run, workload, url, key, host, args) for run in range(args.runs)]
    row = dict(name=workload.name, compression=os.path.basename(workload.cache_dir),
               paths=len(closure.paths),
               nar_mib=closure.nar_size / workloads.MIB,
               largest_nar_mib=largest_nar(closure) / workloads.MIB)
    for field in ('ping', 'task', 'module', 'module_cpu', 'nix', 'nix_cpu', 'floor', 'library'):
        row[field] = median(run[field] for run in runs)
    for field in ('task_rss', 'task_pss', 'workers', 'nix_rss', 'library_rss'):
        row[field] = max(run[field] for run in runs)
    return row


def load():
    """The machine's load average over the last minute, as text."""
    with open('/proc/loadavg') as handle:
        return handle.read().split()[0]


def largest_nar(closure):
    return max(info['narSize'] for info in closure.infos.values())


def startup(workload, url, key, host, args):
    """Medians of (the task over a complete store - ping), of the module process's
    seconds in that task and in ping; the module's largest peak RSS."""
    closure = workload.closure
    root = measure.fresh_root('noop')
    # Filled by the task itself, so that its receipts are there too.
    check_fetched('the task', host.realise(url, key, closure.top, root).result.registered(
        'realised')['fetched'], closure)
    differences, modules, pings, rss = [], [], [], []
    print('noop: the task over the %d valid paths of %s' % (len(closure.paths), workload.name),
          flush=True)
    for run in range(args.noop_runs or 3 * args.runs):
        ping = host.ping()
        task = host.realise(url, key, closure.top, root)
        registered = task.result.registered('realised')
        if registered['fetched'] or registered['changed']:
            raise SystemExit('the no-op task changed the store')
        differences.append(task.seconds - ping.seconds)
        modules.append(task.module_seconds)
        pings.append(ping.module_seconds)
        rss.append(task.rss)
        print('  noop           run %d: ping %5.2f  task %6.2f (module %5.3f, ping module %5.3f, '
              '%5.1f MiB)' % (run + 1, ping.seconds, differences[-1], task.module_seconds,
                              ping.module_seconds, task.rss), flush=True)
    return dict(startup=median(differences), module=median(modules), ping_module=median(pings),
                rss=max(rss))


def verdict(value, target, unit=''):
    """``value`` beside ``<= target`` and whether it is met (the bare value without a target)."""
    if target is None:
        return '%s%s' % (value, unit)
    return '%s%s (<=%g%s %s)' % (value, unit, target, unit, 'ok' if float(value) <= target else 'MISSED')


def print_table(rows):
    header = ('workload', 'paths', 'NAR MiB', 'task s', 'module s', 'nix copy s', 'floor s', 'library s',
              'task/nix', 'task/floor', 'module CPU s', 'nix CPU s', 'CPU module/nix',
              'module RSS MiB', 'workers', 'module+workers PSS MiB')
    lines = [header]
    for r in rows:
        targets = TARGETS[r['name']]
        lines.append((r['name'], '%d' % r['paths'], '%.0f' % r['nar_mib'], '%.2f' % r['task'],
                      '%.2f' % r['module'], '%.2f' % r['nix'], '%.2f' % r['floor'], '%.2f' % r['library'],
                      verdict('%.2f' % (r['task'] / r['nix']), targets.get('nix'), 'x'),
                      verdict('%.2f' % (r['task'] / r['floor']), targets.get('floor'), 'x'),
                      '%.2f' % r['module_cpu'], '%.2f' % r['nix_cpu'],
                      '%.2fx' % (r['module_cpu'] / r['nix_cpu']),
                      '%.0f' % r['task_rss'], '%d' % r['workers'],
                      verdict('%.0f' % max(r['task_pss'], r['task_rss']), RSS_TARGET_MIB)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print('  '.join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths))))


def print_flatness(rows):
    """Peak RSS of the module on the largest NAR against the workload of smallest NARs,
    for each compression (an xz decoder needs more memory than a zstd one), among the
    workloads the module streams itself (without worker processes, whose parent streams
    nothing)."""
    for compression in sorted({r['compression'] for r in rows}):
        alike = [r for r in rows if r['compression'] == compression and not r['workers']]
        if len(alike) < 2:
            continue
        large = max(alike, key=lambda r: r['largest_nar_mib'])
        small = min(alike, key=lambda r: r['largest_nar_mib'])
        if small['largest_nar_mib'] == large['largest_nar_mib']:
            continue
        growth = large['task_rss'] - small['task_rss']
        print('peak RSS flat in NAR size (%s): %.0f MiB with a %.0f MiB NAR (%s), %.0f MiB with '
              'NARs of at most %.1f MiB (%s): %s' % (
                  compression, large['task_rss'], large['largest_nar_mib'], large['name'],
                  small['task_rss'], small['largest_nar_mib'], small['name'],
                  verdict('%+.0f' % growth, FLAT_MARGIN_MIB, ' MiB')))


def print_report(rows, noop, host, args):
    print()
    if rows:
        print_table(rows)
        print_flatness(rows)
    if noop is not None:
        print('module start-up (no-op task over a complete store - ping): %s; the module process '
              'took %.3f s (ping\'s %.3f s), module RSS %.0f MiB' % (
                  verdict('%.3f' % noop['startup'], STARTUP_TARGET_S, ' s'), noop['module'],
                  noop['ping_module'], noop['rss']))
    print('(medians of %d alternating runs, %d jobs; task = ansible-playbook with the task - '
          'the same with only ping, local connection, module Python %s)'
          % (args.runs, args.jobs, host.python))
    if rows:
        print('(peak RSS of the library in the virtualenv: %s MiB; of nix copy: %s MiB)' % (
            ', '.join('%.0f' % r['library_rss'] for r in rows),
            ', '.join('%.0f' % r['nix_rss'] for r in rows)))


def main():
    args = parse_args()
    names = set(args.only or ALL)
    measure.remove_roots()   # of an interrupted run
    print('building fixtures (once; kept under build/bench)', flush=True)
    key, found = build_workloads(names, args)
    host = measure.Host(args.jobs)
    print('module Python: %s (%s), standard library only; maxrss.py adds %.1f ms per module run'
          % (host.python, os.path.realpath(host.python), host.wrapper_overhead() * 1000), flush=True)
    rows, noop = [], None
    with CacheServer(workloads.BENCH_DIR) as server:
        for name in TIMED:
            if name in names:
                workload = found[name]
                rows.append(bench(workload, server.url_for(workload.cache_dir), key, host, args))
        if 'noop' in names:
            workload = found['wide-zstd']
            noop = startup(workload, server.url_for(workload.cache_dir), key, host, args)
        costs = None
        if 'per-path' in names:
            workload = found['wide-zstd']
            costs = measure.per_path(host, workload, server.url_for(workload.cache_dir), key)
    measure.remove_roots()
    print_report(rows, noop, host, args)
    if costs:
        print()
        print(costs.rstrip())


if __name__ == '__main__':
    main()
