"""Realise one closure into a root with the collection's library, as the module does, and
print the module's report as JSON.  benchmarks/run.py runs it as a child process so that
its wall time and peak RSS can be measured apart from the benchmark driver."""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'build', 'collections'))

from ansible_collections.nixcache.closure.plugins.module_utils.common import (  # noqa: E402
    caches_from_options,
    parse_store_paths,
)
from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser  # noqa: E402
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--root', required=True)
    parser.add_argument('--cache', required=True)
    parser.add_argument('--key', required=True)
    parser.add_argument('--jobs', type=int, default=4)
    parser.add_argument('paths', nargs='+')
    args = parser.parse_args()
    options = dict(substituters=[args.cache], trusted_public_keys=[args.key], use_nix_conf=False)
    caches, keys = caches_from_options(options, root=args.root)
    started = time.monotonic()
    with LocalStore(root=args.root) as store:
        report = Realiser(store, caches, keys, jobs=args.jobs).realise(
            parse_store_paths(args.paths)).as_dict()
    report['seconds'] = time.monotonic() - started  # what the module spends, report included
    json.dump(dict((k, report[k]) for k in ('fetched', 'download_bytes', 'unpacked_bytes', 'seconds')),
              sys.stdout)


if __name__ == '__main__':
    main()
