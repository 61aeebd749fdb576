"""Every module, run by ansible-playbook with bad input, fails cleanly: a message that names
what is wrong, and never a Python traceback.

One playbook realises a small closure into a root, then runs each module with options
that cannot work (a root or a file below a regular file, a missing source, paths that
are not store paths, values that do not parse), each task allowed to fail.
"""
import json
import os

import pytest

from nixtest.ansible import run_playbook

pytestmark = pytest.mark.slow


def cases(root, blocker, closure, cache):
    """(module, arguments, words the message must hold)."""
    top = closure.top
    cache_options = dict(substituters=[cache.url], trusted_public_keys=[cache.public_key])
    under_file = blocker + '/sub'
    broken = os.path.join(os.path.dirname(blocker), 'broken')   # its database is not a file
    os.makedirs(os.path.join(broken, 'nix/var/nix/db/db.sqlite'), exist_ok=True)
    return [
        ('realise', dict(paths=[top], root=under_file, **cache_options), [blocker]),
        ('realise', dict(paths=[top], root='relative/root', **cache_options), ['absolute']),
        ('realise', dict(paths=['/nix/store/not-a-path'], root=root, **cache_options),
         ['not-a-path']),
        ('realise', dict(paths=[top], root=root + '-fresh', substituters=['file:///nonexistent/cache'],
                         trusted_public_keys=[cache.public_key], use_nix_conf=False),
         ['nonexistent']),
        ('realise', dict(paths=[top], root=root, netrc_file='/nonexistent/netrc', **cache_options),
         ['netrc']),
        ('profile', dict(path=top, root=under_file), ['not valid']),
        ('profile', dict(path=top, root=root, profile='/in-root-file/sub/profile'),
         ['in-root-file']),
        ('profile', dict(path=top, root=root, link='/in-root-file/sub/link'), ['in-root-file']),
        ('profile', dict(path='/nix/store/' + 'a' * 32 + '-absent', root=root), ['absent']),
        ('link_tree', dict(source='/nonexistent/source', dest='/tmp/dest', root=root),
         ['nonexistent']),
        ('link_tree', dict(source=top, dest='/in-root-file/sub/dest', root=root),
         ['in-root-file']),
        ('gc', dict(root=root, delete_older_than='sometime'), ['sometime']),
        ('gc', dict(root=root, max_freed='lots'), ['lots']),
        ('store_info', dict(root=broken), ['/nix/var/nix/db']),
        ('gc', dict(root=broken), ['/nix/var/nix/db']),
        ('store_info', dict(root=root, paths=['/nix/store/' + 'a' * 32 + '-absent']), ['absent']),
        ('cache_needs', dict(paths=[top], root=broken, **cache_options), ['/nix/var/nix/db']),
        ('cache_needs', dict(paths=['not a path'], root=root, **cache_options), ['not a path']),
        ('closure_arch', dict(paths=[top], root=broken), ['/nix/var/nix/db']),
        ('closure_arch', dict(paths=['not a path'], root=root), ['not a path']),
    ]


def playbook(root, cache, closure, bad):
    tasks = [dict(name='realise', register='realised', **{'nixcache.closure.realise': dict(
        paths=[closure.top], root=root, substituters=[cache.url],
        trusted_public_keys=[cache.public_key])})]
    for number, (module, arguments, _words) in enumerate(bad):
        tasks.append(dict(name='case %d' % number, register='case_%d' % number,
                          ignore_errors=True, **{'nixcache.closure.' + module: arguments}))
    return json.dumps([dict(hosts='all', gather_facts=False, tasks=tasks)])


def test_bad_inputs_fail_cleanly_in_every_module(caches, small_closure, alt_root, tmp_path):
    blocker = tmp_path / 'a-regular-file'
    blocker.write_text('not a directory\n')
    (alt_root / 'in-root-file').write_text('not a directory either\n')
    cache = caches['xz']
    bad = cases(str(alt_root), str(blocker), small_closure, cache)
    result = run_playbook(playbook(str(alt_root), cache, small_closure, bad))
    assert result.tasks('realise', status='ok'), result
    assert 'Traceback' not in result.stdout + result.stderr, result
    for number, (module, arguments, words) in enumerate(bad):
        failed = result.registered('case_%d' % number)
        where = '%s %r: %r' % (module, arguments, failed)
        assert [event['status'] for event in result.tasks('case %d' % number)] == ['ignored'], where
        assert 'module_stderr' not in failed, where
        assert 'Traceback' not in failed.get('exception', ''), where
        for word in words:
            assert word in failed['msg'] + json.dumps(failed.get('path')), where


def test_missing_boto3_is_named_on_a_host_without_it(small_closure, alt_root, tmp_path):
    """Debian's Python with ``-S`` has no site packages: no boto3 for an ``s3://`` cache."""
    python = tmp_path / 'python-without-site'
    python.write_text('#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n')
    python.chmod(0o755)
    play = json.dumps([dict(hosts='all', gather_facts=False, tasks=[dict(
        name='realise', register='realised', ignore_errors=True,
        **{'nixcache.closure.realise': dict(
            paths=[small_closure.top], root=str(alt_root), use_nix_conf=False,
            substituters=['s3://bucket?endpoint=127.0.0.1:9&scheme=http']),
           })])])
    inventory = 'localhost ansible_connection=local ansible_python_interpreter=%s' % python
    result = run_playbook(play, inventory)
    failed = result.registered('realised')
    assert [event['status'] for event in result.tasks('realise')] == ['ignored'], result
    assert 'module_stderr' not in failed, result
    assert 'boto3' in failed['msg'] and 'for s3:// caches' in failed['msg'], failed
    assert failed['cache'].startswith('s3://bucket'), failed
