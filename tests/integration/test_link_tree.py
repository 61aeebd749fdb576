"""``nixcache.closure.link_tree``: per-entry links through a profile, idempotent, pruned."""
import json
import os

from nixtest.ansible import run_playbook

PLAY = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Mirror
      nixcache.closure.link_tree: {{ args }}
      register: mirrored
'''


def mirror(**args):
    result = run_playbook(PLAY.replace('{{ args }}', json.dumps(args)))
    return result, result.registered('mirrored')


def test_links_follow_the_profile_and_stale_ones_go(alt_root):
    profile_target = alt_root / 'nix/store/env-a'
    (profile_target / 'bin').mkdir(parents=True)
    (profile_target / 'share/ext').mkdir(parents=True)
    for name in ('psql', 'pg_ctl', 'pg_config'):
        (profile_target / 'bin' / name).write_text('#!/bin/sh\n')
    for name in ('a.control', 'b.sql'):
        (profile_target / 'share/ext' / name).write_text('x')
    (profile_target / 'share/README').write_text('x')
    (alt_root / 'home').mkdir()
    os.symlink('/nix/store/env-a', str(alt_root / 'home/.profile'))  # absolute, inside the root
    (alt_root / 'usr/bin').mkdir(parents=True)
    (alt_root / 'usr/bin/pg_config').write_text('left by a package')
    (alt_root / 'usr/bin/other').write_text('not ours')

    common = dict(root=str(alt_root))
    result, first = mirror(source='/home/.profile/bin', dest='/usr/bin', replace=['pg_config'], **common)
    result.assert_ok()
    assert sorted(first['created']) == ['/usr/bin/pg_config', '/usr/bin/pg_ctl', '/usr/bin/psql']
    assert os.readlink(str(alt_root / 'usr/bin/psql')) == '/home/.profile/bin/psql'
    assert (alt_root / 'usr/bin/other').read_text() == 'not ours'

    result, share = mirror(source='/home/.profile/share', dest='/usr/lib/pg/share',
                           directories=['ext'], **common)
    result.assert_ok()
    assert os.path.isdir(str(alt_root / 'usr/lib/pg/share/ext'))
    assert not os.path.islink(str(alt_root / 'usr/lib/pg/share/ext'))
    assert os.readlink(str(alt_root / 'usr/lib/pg/share/ext/a.control')) == '/home/.profile/share/ext/a.control'

    result, again = mirror(source='/home/.profile/bin', dest='/usr/bin', replace=['pg_config'], **common)
    assert again['changed'] is False

    (profile_target / 'bin/pg_ctl').unlink()   # a build without that tool
    result, pruned = mirror(source='/home/.profile/bin', dest='/usr/bin', **common)
    assert pruned['removed'] == ['/usr/bin/pg_ctl'] and not os.path.lexists(str(alt_root / 'usr/bin/pg_ctl'))


def test_a_foreign_file_is_never_replaced(alt_root):
    (alt_root / 'src').mkdir()
    (alt_root / 'src/tool').write_text('x')
    (alt_root / 'dest').mkdir()
    (alt_root / 'dest/tool').write_text('precious')
    result, refused = mirror(source='/src', dest='/dest', root=str(alt_root))
    result.assert_failed()
    assert 'replace' in refused['msg'] and (alt_root / 'dest/tool').read_text() == 'precious'


def test_check_and_diff_mode_report_links_and_sources_still_to_come(alt_root):
    (alt_root / 'store/env/bin').mkdir(parents=True)
    (alt_root / 'store/env/bin/psql').write_text('x')
    os.symlink('/store/env', str(alt_root / 'profile'))
    args = dict(source='/profile/bin', dest='/usr/bin', root=str(alt_root))
    result = run_playbook(PLAY.replace('{{ args }}', json.dumps(args)), check=True, diff=True)
    result.assert_ok()
    planned = result.registered('mirrored')
    assert planned['changed'] and planned['created'] == ['/usr/bin', '/usr/bin/psql']
    assert '+/usr/bin/psql -> /profile/bin/psql' in result.stdout
    assert not (alt_root / 'usr').exists()

    # a profile that an earlier task of the same dry run would make: pending, not a failure
    args = dict(source='/home/.nix-profile/bin', dest='/usr/lib/pg/bin', root=str(alt_root))
    result = run_playbook(PLAY.replace('{{ args }}', json.dumps(args)), check=True, diff=True)
    result.assert_ok()
    assert result.registered('mirrored')['pending'] == ['/home/.nix-profile/bin']
    result, refused = mirror(**args)
    result.assert_failed()
    assert 'cannot list the source' in refused['msg'] and refused['path'] == '/home/.nix-profile/bin'
    assert not (alt_root / 'usr').exists()


def test_a_dry_run_plans_links_from_the_packages_the_profile_is_about_to_hold(alt_root):
    """The profile holds A; a dry run of a switch to A and B shows B's tool linked, and one
    back to A alone shows it pruned (the packages are valid in the store under the root)."""
    from ansible_collections.nixcache.closure.plugins.module_utils.store import LocalStore
    from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath
    from ansible_collections.nixcache.closure.plugins.module_utils.userenv import PathInfo

    a = '/nix/store/vxygwb7rm97z1rwphvayz2lvq231zxx6-pkga-1.0'
    b = '/nix/store/hi8589gp90zmkvbmm79awz5fd9hwb59n-pkgb-2.0'
    for package, tool in ((a, 'toola'), (b, 'toolb')):
        (alt_root / package.lstrip('/') / 'bin').mkdir(parents=True)
        (alt_root / package.lstrip('/') / 'bin' / tool).write_text('x')
    with LocalStore(root=str(alt_root)) as store:   # registered valid, as realise leaves them
        store.register([PathInfo(StorePath.parse(p), 'sha256:' + '0' * 52, 8, [], None)
                        for p in (a, b)])
    os.symlink(a, str(alt_root / 'profile'))
    args = dict(source='/profile/bin', dest='/usr/bin', root=str(alt_root))
    mirror(**args)[0].assert_ok()
    assert sorted(os.listdir(str(alt_root / 'usr/bin'))) == ['toola']

    plan = dict(link='/profile', packages=[a, b])
    result = run_playbook(PLAY.replace('{{ args }}', json.dumps(dict(args, plan=plan))),
                          check=True, diff=True)
    result.assert_ok()
    assert result.registered('mirrored')['created'] == ['/usr/bin/toolb']
    assert '+/usr/bin/toolb -> /profile/bin/toolb' in result.stdout

    os.unlink(str(alt_root / 'profile'))
    os.symlink(b, str(alt_root / 'profile'))
    mirror(**args)[0].assert_ok()                    # now the profile holds B only
    result = run_playbook(PLAY.replace('{{ args }}', json.dumps(dict(args, plan=dict(
        link='/profile', packages=[a])))), check=True, diff=True)
    result.assert_ok()
    planned = result.registered('mirrored')
    assert planned['created'] == ['/usr/bin/toola'] and planned['removed'] == ['/usr/bin/toolb']
    assert sorted(os.listdir(str(alt_root / 'usr/bin'))) == ['toolb']
    # outside check mode the plan is not used: the links follow the profile as it is
    assert mirror(plan=plan, **args)[1]['changed'] is False
