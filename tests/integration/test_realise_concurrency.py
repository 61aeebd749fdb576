"""Several runs on one store at once: our own, side by side, and real ``nix copy``.

Each run holds a path's lock only while that path is fetched and registered (as Nix
does), so runs with overlapping closures never wait on each other in a cycle, and each
ends with a store that real Nix verifies and that holds no unregistered entry.
"""
import concurrent.futures
import multiprocessing
import os
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.receipts import write_receipts
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from nixtest import nix
from nixtest.ansible import realise_play, run_playbook


PLAY = realise_play(jobs='{{ jobs }}')
RUN_TIMEOUT = 120     # a deadlocked run would wait forever; this ends the test instead


def start_playbook(pool, paths, root, url, key, jobs):
    return pool.submit(run_playbook, PLAY, timeout=RUN_TIMEOUT, extra_vars=dict(
        paths=list(paths), root=str(root), substituters=[url], keys=[key], jobs=jobs))


def nar_url(cache, path):
    """The URL path of ``path``'s NAR in a fixture cache, as the HTTP server sees it."""
    hash_part = os.path.basename(path)[:32]
    with open(os.path.join(cache.directory, hash_part + '.narinfo')) as handle:
        url = [line.split(': ', 1)[1] for line in handle.read().splitlines()
               if line.startswith('URL: ')][0]
    return '/%s/%s' % (cache.compression, url)


def wait_for_request(server, pattern, seconds=60):
    deadline = time.monotonic() + seconds
    while not server.requests_for(pattern, 'GET'):
        assert time.monotonic() < deadline, 'no request for %s' % pattern
        time.sleep(0.05)


def assert_store_whole(root, paths):
    nix.verify_store(str(root))
    assert set(paths) <= nix.valid_paths(str(root))
    assert nix.unregistered_entries(str(root)) == []


@pytest.mark.slow
def test_two_playbooks_with_overlapping_closures_both_finish(
        caches, small_closure, http_cache, alt_root):
    """One run takes blob, then lib; the other, with more workers, would take lib while
    waiting for blob.  Holding every lock until the end deadlocked them."""
    cache = caches['xz']
    url = http_cache.url_for('xz')
    blob, tool = small_closure.by_name('small-blob'), small_closure.by_name('small-tool')
    slow_nar = nar_url(cache, blob)
    http_cache.fault(slow_nar, delay=3, times=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = start_playbook(pool, [tool], alt_root, url, cache.public_key, jobs=1)
        wait_for_request(http_cache, slow_nar)    # the first run holds blob's lock
        second = start_playbook(pool, [small_closure.top], alt_root, url, cache.public_key,
                                jobs=2)
        results = [first.result(), second.result()]
    for result in results:
        result.assert_ok()
    assert_store_whole(alt_root, small_closure.paths)
    fetched = [set(result.registered('realised')['fetched']) for result in results]
    assert not fetched[0] & fetched[1]                # each path was fetched once
    assert fetched[0] | fetched[1] == set(small_closure.paths)
    for result in results:                            # the receipts directory raced too
        assert len(result.registered('realised')['receipts']) == 1


@pytest.mark.slow
def test_playbook_beside_real_nix_copy_to_the_same_root(
        caches, pg_closure, pg_closure_b, http_cache, alt_root):
    """Postgres "b" by us over HTTP while real Nix copies Postgres "a" (sharing glibc and
    the libraries) from a file cache into the same root."""
    cache = caches['zstd']
    http_cache.fault('/zstd/nar/*', delay=0.5)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ours = start_playbook(pool, [pg_closure_b.top], alt_root, http_cache.url_for('zstd'),
                              cache.public_key, jobs=2)
        theirs = pool.submit(nix.copy, [pg_closure.top], to=str(alt_root), from_=cache.url)
        theirs.result()
        ours.result().assert_ok()
    assert_store_whole(alt_root, set(pg_closure.paths) | set(pg_closure_b.paths))


def open_store_and_write_a_receipt(root, barrier):
    """One run's first steps on a fresh root: the layout, the database, a receipt."""
    try:
        barrier.wait()
        with LocalStore(root=root) as store:
            write_receipts(store, [StorePath.parse('/nix/store/%s-x' % ('1' * 32))], {},
                           root=root)
        return None
    except Exception as error:  # reported to the test
        return repr(error)


def test_runs_starting_together_on_a_fresh_root_create_it_once(tmp_path):
    """Eight runs at once, ten fresh roots: no "File exists", one database Nix reads."""
    context = multiprocessing.get_context('fork')
    runs = 8
    with context.Manager() as manager, context.Pool(runs) as pool:
        for round_number in range(10):
            root = str(tmp_path / ('root-%d' % round_number))
            os.mkdir(root)
            barrier = manager.Barrier(runs)
            errors = [error for error in pool.starmap(open_store_and_write_a_receipt,
                                                      [(root, barrier)] * runs) if error]
            assert errors == []
            nix.verify_store(root)
            assert nix.unregistered_entries(root) == []
