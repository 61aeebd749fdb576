"""``nixcache.closure.profile``: generations as nix-env keeps them, judged by real Nix."""
import json
import os

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
      nixcache.closure.profile: {{ args | to_json }}
      register: profiled
'''


@pytest.fixture
def realised_root(alt_root, caches, pg_closure, pg_closure_b):
    """An alternate root with both Postgres closures valid and a postgres user."""
    cache = caches['none']
    with LocalStore(root=str(alt_root)) as store:
        Realiser(store, [make_substituter(cache.url)], TrustedKeys([cache.public_key])).realise(
            [StorePath.parse(pg_closure.top), StorePath.parse(pg_closure_b.top)])
    (alt_root / 'etc').mkdir()
    (alt_root / 'etc' / 'passwd').write_text(
        'root:x:0:0:root:/root:/bin/bash\npostgres:x:4242:4243::/var/lib/postgresql:/bin/bash\n')
    return alt_root


def profile(root, check=False, diff=False, **args):
    args.setdefault('root', str(root))
    result = run_playbook(PLAY.replace('{{ args | to_json }}', json.dumps(args)), check=check,
                          diff=diff)
    return result, result.registered('profiled')


def generations(profile_path):
    """What real nix-env says: [(number, current?)]."""
    out = nix.run(['nix-env', '-p', profile_path, '--list-generations']).stdout
    return [(int(line.split()[0]), '(current)' in line) for line in out.splitlines() if line.strip()]


def test_switch_rollback_and_absent_as_nix_sees_them(realised_root, pg_closure, pg_closure_b):
    root = realised_root
    real_profile = str(root / 'nix/var/nix/profiles/per-user/postgres/profile')
    home_link = root / 'var/lib/postgresql/.nix-profile'

    result, first = profile(root, user='postgres', path=pg_closure.top)
    result.assert_ok()
    assert first['changed'] and first['generation'] == 1 and first['previous'] is None
    assert first['closure_diff']['added'] == sorted(pg_closure.paths)
    assert os.readlink(str(home_link)) == '/nix/var/nix/profiles/per-user/postgres/profile'
    assert os.path.realpath(str(root / 'nix/var/nix/profiles/per-user/postgres/profile')) \
        .endswith(pg_closure.top)
    assert os.lstat(real_profile).st_uid == 4242 and os.lstat(str(home_link)).st_uid == 4242
    assert generations(real_profile) == [(1, True)]

    result, again = profile(root, user='postgres', path=pg_closure.top)
    result.assert_ok()
    assert again['changed'] is False and 'closure_diff' not in again

    result, planned = profile(root, check=True, diff=True, user='postgres', path=pg_closure_b.top)
    result.assert_ok()
    assert planned['changed'] is True and generations(real_profile) == [(1, True)]

    result, second = profile(root, user='postgres', path=pg_closure_b.top)
    result.assert_ok()
    diff = second['closure_diff']
    assert second['generation'] == 2 and second['previous'] == pg_closure.top
    assert diff['added'] == [pg_closure_b.top] and diff['removed'] == [pg_closure.top]
    assert diff['added_bytes'] > 0
    assert generations(real_profile) == [(1, False), (2, True)]

    result, back = profile(root, user='postgres', state='rollback')
    result.assert_ok()
    assert back['target'] == pg_closure.top and back['generation'] == 1
    assert generations(real_profile) == [(1, True), (2, False)]

    result, gone = profile(root, user='postgres', state='absent')
    result.assert_ok()
    assert gone['changed'] and not os.path.lexists(real_profile) and not os.path.lexists(str(home_link))
    result, gone_again = profile(root, user='postgres', state='absent')
    assert gone_again['changed'] is False


def test_keep_deletes_old_generations(realised_root, pg_closure, pg_closure_b):
    root = realised_root
    for path in (pg_closure.top, pg_closure_b.top, pg_closure.top):
        profile(root, name='pg', path=path)[0].assert_ok()
    real_profile = str(root / 'nix/var/nix/profiles/pg')
    assert generations(real_profile) == [(1, False), (2, False), (3, True)]
    result, kept = profile(root, name='pg', path=pg_closure.top, keep=1)
    result.assert_ok()
    assert kept['changed'] is True
    assert generations(real_profile) == [(2, False), (3, True)]
    assert os.readlink(str(root / 'nix/var/nix/gcroots/profiles')) == '/nix/var/nix/profiles'


def test_unrealised_path_is_refused(realised_root, small_closure):
    result, refused = profile(realised_root, name='x', path=small_closure.top)
    result.assert_failed()
    assert 'realise it first' in refused['msg']
    assert not os.path.lexists(str(realised_root / 'nix/var/nix/profiles/x'))


def test_real_garbage_collection_keeps_profile_closures(realised_root, caches, small_closure,
                                                        pg_closure, pg_closure_b):
    root = realised_root
    cache = caches['none']
    with LocalStore(root=str(root)) as store:  # something no profile refers to
        Realiser(store, [make_substituter(cache.url)], TrustedKeys([cache.public_key])).realise(
            [StorePath.parse(small_closure.top)])
    profile(root, name='pg', path=pg_closure.top)[0].assert_ok()
    profile(root, user='postgres', path=pg_closure_b.top)[0].assert_ok()
    nix.run(['nix-store', '--store', str(root), '--gc'])
    left = nix.valid_paths(str(root))
    assert left == set(pg_closure.paths) | set(pg_closure_b.paths)
    nix.verify_store(str(root))


def test_profile_outside_the_profiles_directory_gets_an_indirect_root(realised_root, pg_closure):
    """As nix-env -p gives them: gcroots/auto/<base32 sha1> -> each generation link."""
    result, made = profile(realised_root, profile='/opt/app/profile', path=pg_closure.top)
    result.assert_ok()
    auto = realised_root / 'nix/var/nix/gcroots/auto'
    assert [os.readlink(str(auto / name)) for name in os.listdir(str(auto))] == ['/opt/app/profile-1-link']
    assert os.readlink(str(realised_root / 'opt/app/profile-1-link')) == pg_closure.top
    # The name Nix 2.8 gives it (addIndirectRoot): the Nix base32 of the link's SHA-1.
    expected_name = nix.run(['nix-hash', '--type', 'sha1', '--flat', '--base32', '/dev/stdin'],
                            input='/opt/app/profile-1-link').stdout.strip()
    assert os.listdir(str(auto)) == [expected_name]
    profile(realised_root, profile='/opt/app/profile', state='absent')[0].assert_ok()
    assert os.listdir(str(auto)) == []
