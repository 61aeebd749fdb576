"""A password in a cache URL (``http://user:password@host/...``) is used, never shown.

Not in results (closure entries, errors, the module's echoed arguments), receipts,
messages or ``-vvv`` output; receipts are world-readable on purpose and hold nothing
secret.
"""
import json
import os
import stat

from nixtest import nix
from nixtest.ansible import realise_play, run_playbook

PASSWORD = 'pa55-in-the-url'
PLAY = realise_play(timeout=5, retries=0)


def url_with_password(server, cache, password=PASSWORD):
    return server.url_for(cache).replace('://', '://nix:%s@' % password, 1)


def everything_said(result, root):
    """Output, recorded results and every file the run left under ``root``'s nixcache."""
    texts = [result.stdout, result.stderr, json.dumps(result.events)]
    receipts = os.path.join(str(root), 'nix', 'var', 'nixcache')
    for top, _dirs, files in os.walk(receipts):
        for name in files:
            with open(os.path.join(top, name)) as handle:
                texts.append(handle.read())
    return '\n'.join(texts)


def test_password_in_the_cache_url_is_never_shown(http_cache, caches, small_closure, alt_root):
    http_cache.require_basic_auth('nix', PASSWORD)
    url = url_with_password(http_cache, 'xz')
    shown = 'http://nix:********@127.0.0.1:%d/xz' % http_cache.port
    result = run_playbook(PLAY, verbosity=3, extra_vars=dict(
        paths=[small_closure.top], root=str(alt_root), substituters=[url],
        keys=[caches['xz'].public_key]))
    result.assert_ok()
    realised = result.registered('realised')
    assert {entry['cache'] for entry in realised['closure']} == {shown}
    said = everything_said(result, alt_root)
    assert PASSWORD not in said
    receipt = realised['receipts'][0]
    assert stat.S_IMODE(os.stat(receipt).st_mode) == 0o644
    with open(receipt) as handle:
        assert {entry['cache'] for entry in json.load(handle)['closure']} == {shown}
    nix.verify_store(str(alt_root))


def test_password_is_not_in_failures_either(http_cache, caches, small_closure, alt_root):
    """A wrong password (401) and a path the cache lacks: both messages name the cache
    without the password."""
    http_cache.require_basic_auth('nix', PASSWORD)
    wrong = 'n0t-' + PASSWORD
    missing = '/nix/store/%s-not-there' % ('0' * 32)
    for password, paths in ((wrong, [small_closure.top]), (PASSWORD, [missing])):
        result = run_playbook(PLAY, verbosity=3, extra_vars=dict(
            paths=paths, root=str(alt_root), substituters=[url_with_password(
                http_cache, 'xz', password)], keys=[caches['xz'].public_key]))
        result.assert_failed()
        failed = result.registered('realised')
        assert 'nix:********@127.0.0.1' in failed['msg']
        assert password not in everything_said(result, alt_root)
        assert 'Traceback' not in result.stdout + result.stderr
