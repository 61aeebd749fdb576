"""Minor upgrades with automatic rollback, end to end over SSH on fresh Debian hosts.

A cluster with rows in it runs on one build of PostgreSQL 15; the pin moves to another build of
the same major.  A good build: the role restarts the cluster on it in-line and checks it with
the health query.  A bad build (tests/fixtures/postgresql-fault.sh: a server program that
cannot be loaded, or one whose hstore extension is gone): the role puts the generation that
served back, restarts it, checks it, and fails saying what happened; the rows are all there.
A re-run with the bad pin tries again (and rolls back again); a dry run says what would
happen and changes nothing.  Both layouts; and a rolling upgrade of two hosts with
``serial: 1`` and ``max_fail_percentage: 0`` stops at the first bad host, leaving the other
untouched.

Each test starts its own targets from the cached debootstrap tarball.  The clusters of the
debian layout listen on loopback addresses of their own (the hosts share the machine's
network); those of the nix-profile layout on their socket only.
"""
import os
import shlex

import pytest

from nixtest import REPO, fixtures
from nixtest.ansible import run_playbook
from nixtest.http import CacheServer
from nixtest.target import TargetHost

pytestmark = pytest.mark.slow

with open(os.path.join(REPO, 'playbooks', 'postgres.yml')) as _playbook:
    PLAYBOOK = _playbook.read()

ROLLED_BACK = 'Fail, saying that the new build was rolled back'
CHECK_FAILED = 'Fail when the cluster does not serve on this build'   # rescued
RESTART = 'Restart the cluster on the new build and check it'
DOUBLE_FAILURE = 'Fail, saying that the previous build did not come up either'
DRY_RUN_REPORT = 'Report the restart and health check a minor upgrade would make'

# How the contract's own tasks start the nix-profile cluster (tests/integration/test_roles_e2e.py).
START_CONTRACT_CLUSTER = (
    "runuser -u postgres -- bash -c 'source /var/lib/postgresql/.bashrc && "
    "/usr/lib/postgresql/bin/pg_ctl -D /var/lib/postgresql/data -l /tmp/pg.log -w "
    "-o \"-c listen_addresses= -k /tmp\" start'")

# What a run cut off right after the profile switch has done.
SWITCH_ONLY = '''
- hosts: target
  gather_facts: false
  tasks:
    - nixcache.closure.realise:
        paths: ["{{ pin }}"]
        substituters: "{{ substituters }}"
        trusted_public_keys: "{{ trusted_public_keys }}"
    - nixcache.closure.profile:
        user: postgres
        path: "{{ pin }}"
        link: /var/lib/postgresql/.nix-profile
        keep: 2
'''

# A fleet rolled through one host at a time, stopping at the first failure, as the README says.
FLEET_PLAYBOOK = '''
- name: A rolling minor upgrade of the fleet
  hosts: fleet
  serial: 1
  max_fail_percentage: 0
  become: true
  gather_facts: false
  tasks:
    - name: Upgrade PostgreSQL, checked, rolled back on the host where it fails
      ansible.builtin.include_role:
        name: nixcache.closure.postgres
'''


@pytest.fixture(scope='module')
def broken():
    """The broken builds of the same Postgres, by fault."""
    return {fault: fixtures.pg_broken_closure(fault) for fault in fixtures.PG_FAULTS}


@pytest.fixture(scope='module')
def servers(caches, nix_keys, broken):
    """The good builds' cache and one holding the broken builds, over HTTP on loopback."""
    broken_caches = fixtures.caches(nix_keys, list(broken.values()), root=os.path.join(
        fixtures.FIXTURES_BUILD_DIR, 'caches-broken'), compressions=('none',))
    with CacheServer(caches.root) as good, CacheServer(broken_caches.root) as bad:
        yield dict(substituters=[good.url_for('xz'), bad.url_for('none')],
                   trusted_public_keys=[nix_keys.trusted.public])


@pytest.fixture
def new_target(tmp_path):
    started = []

    def start(name='target'):
        target = TargetHost(tmp_path / name / 'root').start()
        started.append(target)
        return target
    yield start
    for target in started:
        target.stop()


def postmaster(target, data_dir):
    """The running postmaster's PID and the real path of the program it runs."""
    pid = target.sh('head -n 1 %s/postmaster.pid' % data_dir)
    return pid, target.sh('readlink /proc/%s/exe' % pid)


def apply_role(target, servers, pin, ok=True, check=False, **variables):
    result = run_playbook(PLAYBOOK, target.inventory(), check=check, diff=check,
                          extra_vars=dict(servers, postgres_store_path=pin, **variables))
    if ok:
        result.assert_ok()
    else:
        result.assert_failed()
    return result


class NixProfileHost(object):
    """A host with the nix-profile layout and the contract's cluster, rows in it."""

    data = '/data/pgdata'

    def __init__(self, target, servers):
        self.target, self.servers = target, servers

    def apply(self, pin, **options):
        return apply_role(self.target, self.servers, pin, postgres_initdb=True, **options)

    def psql(self, query, db='postgres'):
        return self.target.sh('/usr/lib/postgresql/bin/psql -h /tmp -U supabase_admin -XAtd %s -c %s'
                              % (db, shlex.quote(query)), user='postgres')


class DebianHost(NixProfileHost):
    """A host with the debian layout and its running 15/main cluster, rows in it."""

    data = '/var/lib/postgresql/15/main'

    def __init__(self, target, servers, addresses):
        super().__init__(target, servers)
        self.options = dict(postgres_layout='debian', postgres_createcluster_options=[
            '--pgoption', 'listen_addresses=%s' % addresses])

    def apply(self, pin, **options):
        return apply_role(self.target, self.servers, pin, **dict(self.options, **options))

    def psql(self, query, db='postgres'):
        return self.target.sh('psql -XAtd %s -c %s' % (db, shlex.quote(query)), user='postgres')


def fill(host):
    host.psql('create database shop')
    host.psql('create extension hstore; create table orders (id serial primary key, item hstore); '
              "insert into orders (item) select ('n=>' || n)::hstore from generate_series(1, 1000) n",
              db='shop')


def assert_rows_kept(host):
    assert host.psql("select count(*), sum((item -> 'n')::int) from orders", db='shop') == '1000|500500'


def assert_serves(host, closure):
    pid, program = postmaster(host.target, host.data)
    assert program.startswith(closure.top + '/'), program
    return pid


def check_rollback(host, good, bad, failed, what_failed):
    """The run ``failed`` tried ``bad`` and put ``good`` back: the message says so, the old
    build serves again with every row, and the profile and the links lead to it."""
    assert failed.failed_tasks() == [CHECK_FAILED, ROLLED_BACK]
    message = failed.task(ROLLED_BACK)['msg']
    assert bad.top in message and good.top in message, message
    assert what_failed in message, message
    print(message)
    assert 'no data was lost' in message and 'a re-run with the same pin tries it again' in message
    assert_serves(host, good)
    assert_rows_kept(host)
    assert host.target.realpath('/var/lib/postgresql/.nix-profile/bin/postgres').startswith(good.top + '/')
    return message


def test_nix_profile_layout_minor_upgrade_good_and_bad(new_target, servers, pg_closure, pg_closure_b, broken):
    host = NixProfileHost(new_target(), servers)
    host.apply(pg_closure.top)
    host.target.sh(START_CONTRACT_CLUSTER)
    fill(host)
    pid = assert_serves(host, pg_closure)

    # a dry run of a switch says what would happen and restarts nothing
    planned = host.apply(broken['no-start'].top, check=True)
    report = planned.task(DRY_RUN_REPORT)['msg']
    assert 'would restart the cluster on /data/pgdata' in report and pg_closure.top in report
    assert assert_serves(host, pg_closure) == pid

    # a server that cannot start: rolled back, with the loader's complaint in the message
    failed = host.apply(broken['no-start'].top, ok=False)
    message = check_rollback(host, pg_closure, broken['no-start'], failed, 'libnixtest-missing.so.1')
    assert 'last lines of /var/lib/postgresql/postgresql.log' in message
    for link in ('/usr/lib/postgresql/bin/postgres', '/usr/bin/psql'):
        assert host.target.realpath(link).startswith(pg_closure.top + '/'), link

    # the same bad pin again: tried again, rolled back again
    again = host.apply(broken['no-start'].top, ok=False)
    check_rollback(host, pg_closure, broken['no-start'], again, 'libnixtest-missing.so.1')

    # a server that starts but fails the health query (a missing extension library)
    query = dict(postgres_health_database='shop', postgres_health_timeout=10,
                 postgres_health_query="select count(*) = 1000 from orders where item ? 'n'")
    failed = host.apply(broken['no-hstore'].top, ok=False, **query)
    check_rollback(host, pg_closure, broken['no-hstore'], failed, '$libdir/hstore')

    # a check that hangs past its timeout fails the new build, and then the old one too: the
    # task says that the old build runs but does not pass, and the rows are there
    hung = host.apply(pg_closure_b.top, ok=False, postgres_health_query='select pg_sleep(60)',
                      postgres_health_timeout=5)
    assert hung.failed_tasks()[-1] == DOUBLE_FAILURE
    message = hung.task(DOUBLE_FAILURE)['msg']
    assert pg_closure_b.top in message and 'did not come up either' in message, message
    assert 'statement timeout' in message or 'did not answer within' in message, message
    assert 'does not pass the check' in message and 'fix postgres_health_query' in message, message
    assert_serves(host, pg_closure)
    assert_rows_kept(host)

    # a good build of the same major: restarted on it in-line, checked, data kept
    upgraded = host.apply(pg_closure_b.top, **query)
    assert RESTART in [event['task'] for event in upgraded.events if event['status'] == 'ok']
    health = upgraded.registered('postgres_health')
    assert health['healthy'] and health['answer'] == 't'
    assert assert_serves(host, pg_closure_b) != pid
    assert_rows_kept(host)
    # the server keeps the options it was started with
    assert host.psql('show listen_addresses') == '' and host.psql('show unix_socket_directories') == '/tmp'
    assert host.apply(pg_closure_b.top, **query).changed_tasks() == []


def test_debian_layout_minor_upgrade_good_and_bad(new_target, servers, pg_closure, pg_closure_b, broken):
    host = DebianHost(new_target(), servers, '127.0.19.1,127.0.19.2')
    host.apply(pg_closure.top)
    fill(host)
    assert_serves(host, pg_closure)

    failed = host.apply(broken['no-start'].top, ok=False)
    message = check_rollback(host, pg_closure, broken['no-start'], failed, 'libnixtest-missing.so.1')
    assert 'last lines of /var/log/postgresql/postgresql-15-main.log' in message
    assert host.target.realpath('/usr/lib/postgresql/15/bin/postgres').startswith(pg_closure.top + '/')
    assert host.target.sh('pg_lsclusters -h').split()[3] == 'online'

    # a run cut off between the profile switch and the restart: the server still runs the old
    # build, and the next run (the profile already switched) restarts it on the new one
    pid = assert_serves(host, pg_closure)     # the rolled-back server's
    run_playbook(SWITCH_ONLY, host.target.inventory(),
                 extra_vars=dict(servers, pin=pg_closure_b.top)).assert_ok()
    assert assert_serves(host, pg_closure) == pid
    upgraded = host.apply(pg_closure_b.top)
    assert not upgraded.registered('postgres_profile')['changed']
    assert upgraded.registered('postgres_health')['healthy']
    assert assert_serves(host, pg_closure_b) != pid
    assert_rows_kept(host)
    # the handler of an environment change did not restart it a second time
    assert 'Restart the main cluster on the new build' not in upgraded.changed_tasks()
    assert host.apply(pg_closure_b.top).changed_tasks() == []


def test_a_rolling_upgrade_stops_at_the_first_bad_host(new_target, servers, pg_closure, pg_closure_b, broken):
    hosts = [DebianHost(new_target('host%d' % n), servers, '127.0.19.%d,127.0.19.%d' % (2 * n + 1, 2 * n + 2))
             for n in (1, 2)]
    for host in hosts:
        host.apply(pg_closure.top)
        fill(host)
    second_pid = assert_serves(hosts[1], pg_closure)
    inventory = '[fleet]\n' + ''.join(host.target.inventory('host%d' % n)
                                      for n, host in zip((1, 2), hosts))

    def roll(pin):
        # include_role takes the role's own option names, not the playbook's
        return run_playbook(FLEET_PLAYBOOK, inventory, extra_vars=dict(
            postgres_substituters=servers['substituters'],
            postgres_trusted_public_keys=servers['trusted_public_keys'],
            postgres_store_path=pin, **hosts[0].options))

    bad = roll(broken['no-start'].top)
    bad.assert_failed()
    assert bad.failed_tasks(host='host1') == [CHECK_FAILED, ROLLED_BACK]
    assert not bad.tasks(host='host2')          # the play stopped before the second host
    check_rollback(hosts[0], pg_closure, broken['no-start'], bad, 'libnixtest-missing.so.1')
    assert assert_serves(hosts[1], pg_closure) == second_pid
    assert not os.path.exists(hosts[1].target.path(broken['no-start'].top))

    good = roll(pg_closure_b.top)
    good.assert_ok()
    for host in hosts:
        assert_serves(host, pg_closure_b)
        assert_rows_kept(host)
