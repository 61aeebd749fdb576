"""``nixcache.closure.realise`` run by ansible-playbook against caches written by real Nix.

Each realised root is judged by real Nix: ``nix-store --verify --check-contents`` and
``nix path-info`` must agree with the cache, and the realised PostgreSQL must run.
"""
import json
import os

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.hashes import parse_hash
from nixtest import nix
from nixtest.ansible import realise_play, run_playbook
from nixtest.postgres import run_postgres_smoke

pytestmark = pytest.mark.slow

PLAY = realise_play()


def realise(paths, root, substituters, keys, inventory=None, check=False):
    result = run_playbook(PLAY, inventory, check=check, extra_vars=dict(
        paths=list(paths), root=str(root), substituters=list(substituters), keys=list(keys)))
    return result, result.registered('realised')


def assert_matches_cache(root, closure):
    """The root passes real Nix's content check and holds exactly the cache's metadata."""
    nix.verify_store(str(root))
    realised = nix.path_info(str(root), [closure.top])
    assert set(realised) == set(closure.paths)
    for path, info in realised.items():
        expected = closure.infos[path]
        assert info['narHash'] == expected['narHash'], path
        assert info['narSize'] == expected['narSize'], path
        assert sorted(info['references']) == sorted(expected['references']), path
        assert info.get('signatures'), path
    assert nix.unregistered_entries(str(root)) == []


@pytest.mark.parametrize('compression', ['xz', 'zstd', 'bzip2', 'none'])
def test_realises_small_closure_from_file_cache(compression, caches, small_closure, alt_root):
    cache = caches[compression]
    result, realised = realise([small_closure.top], alt_root, [cache.url], [cache.public_key])
    result.assert_ok()
    assert realised['changed'] is True
    assert sorted(realised['fetched']) == sorted(small_closure.paths)
    assert realised['unpacked_bytes'] == small_closure.nar_size
    assert all(entry['state'] == 'fetched' and entry['cache'] == cache.url
               for entry in realised['closure'])
    assert_matches_cache(alt_root, small_closure)

    receipt_file = alt_root / 'nix/var/nixcache/receipts' / (os.path.basename(small_closure.top) + '.json')
    assert realised['receipts'] == [str(receipt_file)]
    receipt = json.loads(receipt_file.read_text())
    assert receipt['requested'] == small_closure.top and receipt['paths'] == len(small_closure.paths)
    assert receipt['nar_bytes'] == small_closure.nar_size
    for entry in receipt['closure']:
        expected = small_closure.infos[entry['path']]
        assert parse_hash(entry['nar_hash']) == parse_hash(expected['narHash'])
        assert sorted(entry['references']) == sorted(expected['references'])
        assert entry['cache'] == cache.url and entry['signatures']
    written = receipt_file.stat().st_mtime_ns

    again, second = realise([small_closure.top], alt_root, [cache.url], [cache.public_key])
    again.assert_ok()
    assert second['changed'] is False and second['receipts'] == []
    assert receipt_file.stat().st_mtime_ns == written
    assert second['fetched'] == []
    assert sorted(entry['path'] for entry in second['closure']) == sorted(small_closure.paths)
    assert all(entry['state'] == 'valid' for entry in second['closure'])


def test_postgres_over_http_and_ssh_with_a_bare_python(
        caches, pg_closure, http_cache, sshd_target, alt_root):
    """The whole Postgres closure, xz over loopback HTTP, by a stdlib-only host Python."""
    url = http_cache.url_for('xz')
    inventory = sshd_target.inventory('target')
    result, realised = realise([pg_closure.top], alt_root, [url], [caches['xz'].public_key],
                               inventory=inventory)
    result.assert_ok()
    assert sorted(realised['fetched']) == sorted(pg_closure.paths)
    assert realised['download_bytes'] == sum(
        request.bytes_sent for request in http_cache.requests_for('/xz/nar/*', 'GET'))
    assert_matches_cache(alt_root, pg_closure)
    assert 'PostgreSQL %s' % pg_closure.version in run_postgres_smoke(str(alt_root), pg_closure.top)

    http_cache.clear_log()
    again, second = realise([pg_closure.top], alt_root, [url], [caches['xz'].public_key],
                            inventory=inventory)
    again.assert_ok()
    assert second['changed'] is False
    assert http_cache.fetched('*/nar/*') == []


def test_check_mode_plans_without_touching_the_root(caches, pg_closure, alt_root):
    cache = caches['zstd']
    result, plan = realise([pg_closure.top], alt_root, [cache.url], [cache.public_key], check=True)
    result.assert_ok()
    assert plan['changed'] is True
    assert sorted(plan['to_fetch']) == sorted(pg_closure.paths)
    assert plan['unpacked_bytes'] == pg_closure.nar_size
    assert plan['download_mb'] > 0
    assert os.listdir(str(alt_root)) == []


def test_failure_is_reported_with_path_cache_and_key(caches, small_closure, nix_keys, alt_root):
    cache = caches['xz']
    result, failed = realise([small_closure.top], alt_root, [cache.url], [nix_keys.untrusted.public])
    result.assert_failed()
    assert failed['error'] == 'UntrustedPath'
    assert failed['cache'] == cache.url
    assert nix_keys.untrusted.name in failed['expected']
    assert nix_keys.trusted.name in failed['found']
    assert nix.valid_paths(str(alt_root)) == set()


def test_results_are_json_clean(caches, small_closure, alt_root):
    """Everything the module returns survives a JSON round trip (no bytes, no objects)."""
    cache = caches['none']
    result, realised = realise([small_closure.top], alt_root, [cache.url], [cache.public_key])
    result.assert_ok()
    assert json.loads(json.dumps(realised))['closure']


def predicted_and_real(paths, root, cache):
    """A check-mode run, then the real run, on the same root."""
    check, predicted = realise(paths, root, [cache.url], [cache.public_key], check=True)
    check.assert_ok()
    real, done = realise(paths, root, [cache.url], [cache.public_key])
    real.assert_ok()
    return predicted, done


def assert_predicted(predicted, done):
    assert predicted['changed'] == done['changed']
    assert sorted(predicted['to_fetch']) == sorted(done['fetched'])
    assert sorted(predicted['receipts']) == sorted(done['receipts'])
    assert predicted['unpacked_bytes'] == done['unpacked_bytes']


def test_check_mode_predicts_the_real_run(caches, small_closure, alt_root):
    """On a fresh root, on an up-to-date root, and when only a receipt is missing."""
    cache = caches['xz']
    predicted, done = predicted_and_real([small_closure.top], alt_root, cache)
    assert_predicted(predicted, done)
    assert done['changed'] and done['fetched'] and len(done['receipts']) == 1

    predicted, done = predicted_and_real([small_closure.top], alt_root, cache)
    assert_predicted(predicted, done)
    assert not done['changed'] and done['receipts'] == []

    receipt = receipt_file(alt_root, small_closure.top)
    os.unlink(receipt)
    predicted, done = predicted_and_real([small_closure.top], alt_root, cache)
    assert_predicted(predicted, done)
    assert done['changed'] and done['fetched'] == []
    assert done['receipts'] == [receipt]


def receipt_file(root, store_path):
    return os.path.join(str(root), 'nix/var/nixcache/receipts', os.path.basename(store_path) + '.json')
