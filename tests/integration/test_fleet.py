"""Many hosts at once: one play, eight targets, one loopback cache that throttles.

A rollout realises the same closure on many hosts in parallel (``forks``); the cache
sees every host's requests at once and, like S3 or a CDN under load, answers some of
them with ``429 Too Many Requests`` and ``Retry-After``.  Each host waits as told and
asks again, within ``throttle_timeout``; every store ends up valid for real Nix, and the
module's memory on each host stays bounded.  The cache's request log gives what one
host costs it (printed; the README quotes it).
"""
import concurrent.futures
import email.utils
import os
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from nixtest import nix
from nixtest.ansible import run_playbook
from nixtest.target import TargetHost

pytestmark = [pytest.mark.slow, pytest.mark.nix]

HOSTS = 8
RSS_BOUND_MIB = 64.0   # the module's peak RSS on every host (the benchmark's target)
THROTTLED_NARINFOS = HOSTS          # answered 429 with Retry-After in seconds
THROTTLED_NARS = HOSTS // 2         # answered 429 with Retry-After as an HTTP date

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - name: Realise PostgreSQL
      nixcache.closure.realise:
        paths: "{{ paths }}"
        substituters: "{{ substituters }}"
        trusted_public_keys: "{{ keys }}"
        throttle_timeout: 60
      register: realised
"""


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    """HOSTS fresh targets from one base tarball, started once for the module: unpacked
    in parallel, then each sshd started from this thread (it lives as long as the thread
    that starts it)."""
    base = tmp_path_factory.mktemp('fleet')
    targets = [TargetHost(base / ('host%d' % n) / 'root') for n in range(HOSTS)]
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            for prepared in [pool.submit(target.prepare) for target in targets]:
                prepared.result()
        for target in targets:
            target.start()
        yield targets
    finally:
        for target in targets:
            target.stop()


def inventory(targets):
    lines = ['[fleet]']
    for n, target in enumerate(targets):
        interpreter = target.record_module_memory()
        lines.append(target.inventory('host%d' % n, ansible_python_interpreter=interpreter).strip())
    return '\n'.join(lines) + '\n'


def cache_file_bytes(cache, closure):
    """The bytes of the closure's compressed NARs in ``cache`` (its narinfos' FileSize)."""
    total = 0
    for hash_part in closure.hash_parts():
        with open(os.path.join(cache.directory, hash_part + '.narinfo')) as f:
            total += NarInfo.parse(f.read()).file_size
    return total


def http_date(seconds_ahead):
    return lambda: email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def test_eight_hosts_realise_postgres_from_one_throttling_cache(
        fleet, http_cache, caches, pg_closure, nix_keys):
    narinfos = http_cache.fault('/zstd/*.narinfo', status=429, headers={'Retry-After': '1'},
                                times=THROTTLED_NARINFOS)
    nars = http_cache.fault('/zstd/nar/*', status=429, headers={'Retry-After': http_date(2)},
                            times=THROTTLED_NARS)
    started = time.monotonic()
    result = run_playbook(PLAY, inventory=inventory(fleet), args=['--forks', str(HOSTS)],
                          extra_vars=dict(paths=[pg_closure.top],
                                          substituters=[http_cache.url_for('zstd')],
                                          keys=[nix_keys.trusted.public]))
    seconds = time.monotonic() - started
    result.assert_ok()
    assert narinfos.hits == THROTTLED_NARINFOS and nars.hits == THROTTLED_NARS

    expected = set(pg_closure.paths)
    version = '%s/lib/postgresql/%s/bin/postgres --version' % (pg_closure.top, pg_closure.major)
    for n, target in enumerate(fleet):
        realised = result.registered('realised', host='host%d' % n)
        assert realised['changed'] and set(realised['fetched']) == expected
        nix.verify_store(target.root)
        assert nix.valid_paths(target.root) == expected
        assert pg_closure.version in target.run(version, check=True).stdout
        peaks = [rss for rss, _seconds in target.module_memory()]
        assert peaks, 'the module ran without the memory recorder on host%d' % n
        assert max(peaks) <= RSS_BOUND_MIB, 'host%d: module peak RSS %.1f MiB' % (n, max(peaks))

    # Every throttled request was asked again and answered: each host read each narinfo
    # and each NAR exactly once, in full.
    hashes = pg_closure.hash_parts()
    served = [r for r in http_cache.requests_for('/zstd/*') if r.status in (200, 206)]
    narinfo_gets = [r for r in served if r.path.endswith('.narinfo')]
    nar_gets = [r for r in served if r.path.startswith('/zstd/nar/')]
    assert sorted(r.path for r in narinfo_gets) == sorted(
        '/zstd/%s.narinfo' % h for h in hashes for _host in range(HOSTS))
    assert len(nar_gets) == HOSTS * len(hashes)
    file_bytes = cache_file_bytes(caches['zstd'], pg_closure)
    assert sum(r.bytes_sent for r in nar_gets) == HOSTS * file_bytes

    # What one host costs the cache (the README quotes these figures).
    requests = http_cache.requests_for('/zstd/*')
    throttled = [r for r in requests if r.status == 429]
    assert len(throttled) == THROTTLED_NARINFOS + THROTTLED_NARS
    print('\nfleet: %d hosts, forks %d, %.1f s; per host: %.1f requests (%.1f answered 429), '
          '%d bytes of NAR (%.1f MiB), peak module RSS %.1f MiB (largest of all hosts)'
          % (HOSTS, HOSTS, seconds, len(requests) / float(HOSTS), len(throttled) / float(HOSTS),
             file_bytes, file_bytes / 1048576.0,
             max(max(rss for rss, _s in t.module_memory()) for t in fleet)))
