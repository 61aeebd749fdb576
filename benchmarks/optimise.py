"""`make bench-optimise`: deduplicating a store, ours beside real `nix-store --optimise`.

Workloads, each a closure built by real Nix and copied unoptimised into two fresh roots
under build/bench (one for us, one for Nix):

  postgres            the PostgreSQL fixture closure of the tests (tests/fixtures/postgresql.nix)
  postgres-twice      two builds of that PostgreSQL side by side (variants "a" and "b":
                      the same server under two top paths, as two image generations keep it)
  postgres-extensions PostgreSQL with four versions of its contrib extensions beside it
                      (benchmarks/extensions.nix), as images keeping old versions for
                      upgrades ship them

For each: ours is nixcache.closure's library (optimise.optimise_store, in this Python) on
one root, Nix's is `nix-store --store ROOT --optimise` on the other.  Printed: the store's
size, files linked, MiB saved (as each reports it) and seconds, then the checks: both
roots pass `nix-store --verify --check-contents`, the `.links` directories are the same,
and a real `nix-store --optimise` after ours finds nothing more.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'tests'))
sys.path.insert(0, REPO)  # first: the repository's conftest links the collection

# conftest links the collection under build/collections
import conftest  # noqa: E402,F401  pylint: disable=unused-import
from ansible_collections.nixcache.closure.plugins.module_utils.optimise import optimise_store  # noqa: E402
from nixtest import nix  # noqa: E402
from nixtest.links import links, unique_files  # noqa: E402

BENCH_DIR = os.path.join(REPO, 'build', 'bench', 'optimise')
NIX_FREED = re.compile(r'^([0-9]+\.[0-9]{2}) MiB freed by hard-linking ([0-9]+) files$', re.M)
MIB = 1024.0 * 1024.0


def workload_tops(name):
    if name == 'postgres':
        return nix.build('postgresql.nix', {'variant': 'a'})
    if name == 'postgres-twice':
        return nix.build('postgresql.nix', {'variant': 'a'}) + nix.build('postgresql.nix', {'variant': 'b'})
    if name == 'postgres-extensions':
        return nix.build(os.path.join(HERE, 'extensions.nix'))
    raise SystemExit('unknown workload %s' % name)


WORKLOADS = ('postgres', 'postgres-twice', 'postgres-extensions')


def fresh_root(name):
    root = os.path.join(BENCH_DIR, name)
    remove(root)
    os.makedirs(root)
    return root


def remove(root):
    if os.path.exists(root):
        subprocess.run(['chmod', '-R', 'u+w', root], check=True)
        shutil.rmtree(root)


def store_figures(root):
    """(files, MiB) of the store: regular files and symlinks, each inode once."""
    files = unique_files(root)
    return len(files), sum(files.values()) / MIB


def nix_optimise(root):
    """(seconds, MiB freed, files linked) of a real `nix-store --optimise`."""
    started = time.monotonic()
    proc = nix.run(['nix-store', '--store', root, '--optimise'])
    seconds = time.monotonic() - started
    match = NIX_FREED.search(proc.stderr)
    if not match:
        raise SystemExit('no summary from nix-store --optimise:\n' + proc.stderr)
    return seconds, float(match.group(1)), int(match.group(2))


def bench(name):
    tops = workload_tops(name)
    ours_root, nix_root = fresh_root(name + '-ours'), fresh_root(name + '-nix')
    for root in (ours_root, nix_root):
        nix.copy_to_root(tops, root)
    files, mib = store_figures(ours_root)
    started = time.monotonic()
    savings = optimise_store(ours_root)
    ours_seconds = time.monotonic() - started
    nix_seconds, nix_mib, nix_files = nix_optimise(nix_root)
    checks = []
    for root in (ours_root, nix_root):
        nix.verify_store(root)
    checks.append('both verify')
    if sorted(links(ours_root)) != sorted(links(nix_root)):
        raise SystemExit('%s: the .links directories differ' % name)
    checks.append('same .links (%d)' % len(links(ours_root)))
    _seconds, more_mib, more_files = nix_optimise(ours_root)
    if more_files:
        raise SystemExit('%s: nix-store --optimise after ours linked %d more files (%.2f MiB)'
                         % (name, more_files, more_mib))
    checks.append('nix finds nothing more')
    after_files, after_mib = store_figures(ours_root)
    remove(ours_root)
    remove(nix_root)
    return dict(name=name, paths=len(nix.closure(tops)), files=files, mib=mib, after_mib=after_mib,
                ours_files=savings.files_linked, ours_mib=savings.bytes_saved / MIB,
                ours_seconds=ours_seconds, nix_files=nix_files, nix_mib=nix_mib,
                nix_seconds=nix_seconds, checks=checks)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', nargs='*', choices=WORKLOADS, help='workloads (default: all)')
    args = parser.parse_args()
    nix.require()
    rows = [bench(name) for name in args.only or WORKLOADS]
    print()
    print('%-20s %5s %7s %9s | %7s %9s %7s | %7s %9s %7s | %6s'
          % ('workload', 'paths', 'files', 'store MiB', 'linked', 'saved MiB', 'ours s',
             'nix lnk', 'nix MiB', 'nix s', 'ours/nix'))
    for row in rows:
        print('%-20s %5d %7d %9.1f | %7d %9.2f %7.2f | %7d %9.2f %7.2f | %6.2f'
              % (row['name'], row['paths'], row['files'], row['mib'], row['ours_files'],
                 row['ours_mib'], row['ours_seconds'], row['nix_files'], row['nix_mib'],
                 row['nix_seconds'], row['ours_seconds'] / max(row['nix_seconds'], 1e-6)))
    print()
    for row in rows:
        print('%-20s store %.1f MiB -> %.1f MiB after; %s' % (
            row['name'], row['mib'], row['after_mib'], '; '.join(row['checks'])))


if __name__ == '__main__':
    main()
