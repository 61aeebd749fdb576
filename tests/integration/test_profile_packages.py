"""``nixcache.closure.profile`` with ``paths``: several packages in one generation, as
``nix profile install`` makes it, judged by real Nix 2.8 (``nix profile list``,
``history``, ``rollback`` and ``install`` itself, ``nix-store --verify``, ``nix path-info``)
running in a private mount namespace over the root we wrote."""
import json
import os
import re
import shutil

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.realise import Realiser
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from nixtest import nix
from nixtest.ansible import run_playbook

PLAY = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Profile
      nixcache.closure.profile: ARGS
      register: profiled
'''
ANSI = re.compile(r'\x1b\[[0-9;]*m')
NIX_ENV = {'NIX_CONFIG': 'experimental-features = nix-command flakes\nsubstituters =\n'
                         'sandbox = false\nbuild-users-group =\n'}


def profile(root, check=False, diff=False, **args):
    args.setdefault('root', str(root))
    result = run_playbook(PLAY.replace('ARGS', json.dumps(args)), check=check, diff=diff)
    return result, result.registered('profiled')


@pytest.fixture
def small_root(alt_root, caches, small_closure):
    """An alternate root with the small closure valid."""
    cache = caches['none']
    with LocalStore(root=str(alt_root)) as store:
        Realiser(store, [make_substituter(cache.url)], TrustedKeys([cache.public_key])).realise(
            [StorePath.parse(small_closure.top)])
    return alt_root


def real_nix(root, script, home):
    if shutil.which('unshare') is None or os.geteuid() != 0:
        pytest.fail('needs unshare and root for a private mount namespace', pytrace=False)
    env = dict(NIX_ENV, HOME=str(home))
    proc = nix.in_namespace(root, script, env)
    if proc.returncode != 0:
        raise AssertionError('real Nix failed (%d)\nstdout:\n%s\nstderr:\n%s'
                             % (proc.returncode, proc.stdout, proc.stderr))
    return ANSI.sub('', proc.stdout)


def section(out, name):
    return [line for line in out.split('== %s\n' % name)[1].split('== ')[0].splitlines() if line]


def test_packages_in_one_generation_as_real_nix_profile_sees_them(
        small_root, small_closure, tmp_path):
    root = small_root
    tool, lib, blob = (small_closure.by_name(n) for n in ('small-tool', 'small-lib', 'small-blob'))
    result, first = profile(root, name='tools', paths=[tool, lib, blob])
    result.assert_ok()
    target = first['target']
    assert first['changed'] and first['generation'] == 1 and target.endswith('-profile')
    assert [e['path'] for e in first['elements']] == [tool, lib, blob]
    assert first['closure_diff']['added'] == sorted(
        set(nix.closure([tool, lib, blob])) | {target})
    tree = str(root) + target
    # share/ came from several packages: a directory of links; bin/ from one: a link
    assert os.path.isdir(tree + '/share') and not os.path.islink(tree + '/share')
    assert os.readlink(tree + '/bin') == tool + '/bin'
    assert os.readlink(tree + '/share/data') == blob + '/share/data'

    result, again = profile(root, name='tools', paths=[tool, lib, blob])
    result.assert_ok()
    assert again['changed'] is False and again['generation'] == 1

    result, planned = profile(root, check=True, diff=True, name='tools', paths=[tool, lib])
    result.assert_ok()
    assert planned['changed'] and planned['generation'] == 1
    assert planned['closure_diff']['removed'] == [target]  # the blob stays: lib refers to it
    assert '+closure %s' % planned['target'] in result.stdout
    assert '-package %s' % blob in result.stdout
    result, second = profile(root, name='tools', paths=[tool, lib])
    result.assert_ok()
    assert second['generation'] == 2 and second['target'] == planned['target']

    profiles = '/nix/var/nix/profiles'
    out = real_nix(root, '''
        p=%(profiles)s/tools
        echo "== list"; nix profile list --profile $p
        echo "== history"; nix profile history --profile $p
        echo "== verify"; nix-store --verify --check-contents 2>&1
        echo "== info"; nix path-info --json "$(readlink -f $p)"; echo
        echo "== install"
        nix profile install --profile %(profiles)s/real %(tool)s %(lib)s %(blob)s 2>&1
        readlink -f %(profiles)s/real
        echo "== rollback"; nix profile rollback --profile $p 2>&1; readlink $p
        echo "== end"
    ''' % dict(profiles=profiles, tool=tool, lib=lib, blob=blob), tmp_path)

    assert section(out, 'list') == ['0 - - %s' % tool, '1 - - %s' % lib]
    history = '\n'.join(section(out, 'history'))
    assert 'Version 1 ' in history and 'Version 2 ' in history
    assert 'small-blob: 1.0 -> ∅' in history
    assert section(out, 'verify') == ['reading the Nix store...', 'checking path existence...',
                                      'checking link hashes...', 'checking store hashes...']
    info = json.loads(section(out, 'info')[0])[0]
    assert info['path'] == second['target']
    assert info['ca'].startswith('fixed:r:sha256:')
    assert sorted(info['references']) == sorted([tool, lib])
    # real Nix, given the same packages, makes the very store path we made
    assert section(out, 'install')[-1] == target
    assert section(out, 'rollback')[-1] == 'tools-1-link'

    # after Nix's rollback we carry on as Nix would: the next switch is generation 3
    result, third = profile(root, name='tools', paths=[tool, lib])
    result.assert_ok()
    assert third['previous'] == target and third['generation'] == 3
    nix.verify_store(str(root))


def test_the_same_file_from_two_packages_fails_naming_both_unless_a_priority_decides(
        small_root, small_closure):
    root = small_root
    env, tool = small_closure.top, small_closure.by_name('small-tool')
    result, refused = profile(root, name='clash', paths=[env, tool])
    result.assert_failed()
    assert '%s/bin/small-hello' % env in refused['msg']
    assert '%s/bin/small-hello' % tool in refused['msg']
    assert not os.path.lexists(str(root / 'nix/var/nix/profiles/clash'))
    result, made = profile(root, name='clash', paths=[env, tool], priorities={tool: 4})
    result.assert_ok()
    link = str(root) + made['target'] + '/bin/small-hello'
    assert os.readlink(link) == tool + '/bin/small-hello'
    assert made['elements'][1] == {'path': tool, 'priority': 4, 'active': True}
    result, wrong = profile(root, name='clash', paths=[env], priorities={tool: 4})
    result.assert_failed()
    assert 'not in paths' in wrong['msg']


def test_check_mode_reports_packages_still_to_realise(alt_root, small_closure):
    tool = small_closure.by_name('small-tool')
    result, planned = profile(alt_root, check=True, diff=True, user='nobody-yet',
                              link='/home/x/.nix-profile', paths=[small_closure.top, tool])
    result.assert_ok()
    assert planned['changed'] and planned['target'] is None
    assert planned['pending'] == [small_closure.top, tool]
    assert 'to realise %s' % tool in result.stdout
    assert os.listdir(str(alt_root)) == []
    result, refused = profile(alt_root, paths=[tool])
    result.assert_failed()
    assert 'realise it first' in refused['msg'] and tool in refused['msg']
