"""The pure parts of a major upgrade: what the pre-flight checks refuse, how the new cluster is
made to match the old one, pg_upgrade's command line, the recorded state, and what a cluster
on disk says about itself."""
import json
import os

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.pgcluster import (
    ClusterError,
    data_version,
    major_of,
    parse_controldata,
    quote_options,
    running_server,
    start_options,
)
from ansible_collections.nixcache.closure.plugins.module_utils.pgupgrade import (
    STATES,
    StateFile,
    Upgrade,
    UpgradeError,
    UpgradeLock,
    data_size,
    initdb_options,
    library_name,
    missing_libraries,
    pg_upgrade_command,
    preflight_problems,
    split_setting_list,
)

MIB = 1024 * 1024


def facts(**changes):
    base = dict(old_major=15, new_major=17, method='copy', new_libdir='/new/lib',
                missing_programs=[], missing_libraries=[], locale_provider='c',
                new_has_icu=False, needed_bytes=10 * MIB, free_bytes=100 * MIB,
                target_dir='/data')
    base.update(changes)
    return base


def test_nothing_to_refuse():
    assert preflight_problems(facts()) == []


def test_a_downgrade_is_refused_naming_both_majors():
    [problem] = preflight_problems(facts(old_major=17, new_major=16))
    assert 'PostgreSQL 16, older than the cluster\'s 17' in problem and 'downgrade' in problem


def test_missing_libraries_are_named_with_the_new_library_directory():
    [problem] = preflight_problems(facts(missing_libraries=['$libdir/pg_cron', 'auto_explain_x']))
    assert '$libdir/pg_cron, auto_explain_x' in problem and '/new/lib' in problem


def test_missing_programs_are_named():
    [problem] = preflight_problems(facts(missing_programs=['pg_upgrade']))
    assert 'lacks pg_upgrade' in problem


def test_not_enough_space_for_a_copy_says_both_numbers():
    [problem] = preflight_problems(facts(needed_bytes=300, free_bytes=200))
    assert '300 bytes' in problem and '200 bytes free' in problem and '/data' in problem


@pytest.mark.parametrize('method', ['link', 'clone'])
def test_link_and_clone_need_no_room_for_a_copy(method):
    assert preflight_problems(facts(method=method, needed_bytes=300, free_bytes=200)) == []


def test_icu_clusters_need_a_new_build_with_icu():
    assert 'ICU' in preflight_problems(facts(locale_provider='i'))[0]
    assert preflight_problems(facts(locale_provider='i', new_has_icu=True)) == []


def test_every_problem_is_reported_at_once():
    assert len(preflight_problems(facts(old_major=17, new_major=16, missing_programs=['psql'],
                                        missing_libraries=['x'], needed_bytes=2,
                                        free_bytes=1))) == 4


OLD = dict(install_user='supabase_admin', encoding='UTF8', collate='en_US.UTF-8',
           ctype='en_US.UTF-8', locale_provider='c', icu_locale='', checksums=0,
           wal_segment_size=16 * MIB)


def test_initdb_matches_the_old_cluster():
    options = initdb_options(OLD, 17)
    assert options[:5] == ['--username=supabase_admin', '--encoding=UTF8',
                           '--lc-collate=en_US.UTF-8', '--lc-ctype=en_US.UTF-8',
                           '--locale=en_US.UTF-8']
    assert '--locale-provider=libc' in options and '--wal-segsize=16' in options
    assert not any('checksums' in option for option in options)


def test_initdb_turns_checksums_on_when_the_old_cluster_has_them():
    options = initdb_options(dict(OLD, checksums=1, wal_segment_size=64 * MIB), 16)
    assert '--data-checksums' in options and '--wal-segsize=64' in options


def test_initdb_of_18_turns_its_default_checksums_off_for_an_old_cluster_without():
    assert '--no-data-checksums' in initdb_options(OLD, 18)
    assert '--no-data-checksums' not in initdb_options(dict(OLD, checksums=1), 18)


def test_initdb_keeps_the_icu_locale():
    options = initdb_options(dict(OLD, locale_provider='i', icu_locale='und'), 17)
    assert '--locale-provider=icu' in options and '--icu-locale=und' in options


PLAN = dict(old=dict(bindir='/old/bin'), new=dict(bindir='/new/bin'), old_data_dir='/d',
            new_data_dir='/d.17', install_user='admin', jobs=2, socket_dir='/tmp',
            work_dir='/d.upgrade', port=5432, method='copy')


def test_pg_upgrade_check_runs_against_the_running_old_server():
    command = pg_upgrade_command(PLAN, check=True)
    assert command[0] == '/new/bin/pg_upgrade' and command[-1] == '--check'
    assert '--old-port=5432' in command and '--socketdir=/tmp' in command
    assert '--jobs=2' in command and '--username=admin' in command
    assert not any(word in command for word in ('--link', '--clone', '--copy'))


def test_pg_upgrade_runs_its_servers_on_other_ports_in_the_work_directory():
    command = pg_upgrade_command(dict(PLAN, method='link'))
    assert '--link' in command and '--check' not in command
    assert '--old-port=5432' not in command and '--socketdir=/d.upgrade' in command


def test_library_names():
    assert library_name('$libdir/pgcrypto') == 'pgcrypto'
    assert library_name(' "pg_stat_statements" ') == 'pg_stat_statements'
    assert split_setting_list('pg_stat_statements, "auto_explain" ,') == [
        'pg_stat_statements', 'auto_explain']
    assert split_setting_list('"pg_stat_statements,auto_explain"') == [
        'pg_stat_statements', 'auto_explain']
    assert split_setting_list('') == []


def test_missing_libraries_looks_in_the_new_library_directory(tmp_path):
    (tmp_path / 'pgcrypto.so').write_bytes(b'')
    (tmp_path / 'plugins').mkdir()
    (tmp_path / 'plugins' / 'groonga.so').write_bytes(b'')
    used = ['$libdir/pgcrypto', 'pgcrypto', 'groonga', '$libdir/pg_cron', '', 'timescaledb']
    assert missing_libraries(used, str(tmp_path)) == ['$libdir/pg_cron', 'timescaledb']
    assert missing_libraries([str(tmp_path / 'pgcrypto')], '/elsewhere') == []


def test_data_size_leaves_out_the_wal(tmp_path):
    (tmp_path / 'base').mkdir()
    (tmp_path / 'base' / '16384').write_bytes(b'x' * 1000)
    (tmp_path / 'pg_wal').mkdir()
    (tmp_path / 'pg_wal' / '000000010000000000000001').write_bytes(b'x' * 5000)
    (tmp_path / 'PG_VERSION').write_text('15\n')
    assert data_size(str(tmp_path)) == 1003


def test_the_state_file_is_written_whole_and_keeps_its_history(tmp_path):
    state = StateFile(str(tmp_path / 'state.json'))
    assert state.load() is None and state.state is None
    state.save('realised', method='copy', port=5432)
    state.save('checked')
    again = StateFile(state.path)
    record = again.load()
    assert again.state == 'checked' and record['method'] == 'copy'
    assert [step['state'] for step in record['history']] == ['realised', 'checked']
    assert os.listdir(str(tmp_path)) == ['state.json']
    again.archive()
    assert again.record is None and not os.path.exists(state.path)
    assert [name.startswith('state-') for name in os.listdir(str(tmp_path))] == [True]


def test_a_broken_or_unknown_state_is_an_error_not_a_fresh_start(tmp_path):
    path = tmp_path / 'state.json'
    path.write_text('{"state": "done"')
    with pytest.raises(UpgradeError, match='cannot be read'):
        StateFile(str(path)).load()
    path.write_text(json.dumps(dict(state='halfway')))
    with pytest.raises(UpgradeError, match='unknown upgrade state'):
        StateFile(str(path)).load()
    assert 'done' in STATES and 'rolled-back' in STATES


def test_a_rollback_with_a_pin_of_another_major_is_refused_changing_nothing(tmp_path):
    data = tmp_path / 'pgdata'
    data.mkdir()
    (data / 'PG_VERSION').write_text('17\n')
    state = StateFile(str(tmp_path / 'pgdata.upgrade' / 'state.json'))
    os.makedirs(os.path.dirname(state.path))
    state.save('done', method='copy', data_dir=str(data), kept_data_dir=str(data) + '.15',
               old=dict(major=15, version='15.18', bindir='/old/bin'),
               new=dict(major=17, version='17.11', bindir='/new/bin'))
    before = open(state.path).read()
    upgrade = Upgrade(str(data), '')
    with pytest.raises(UpgradeError, match='cannot roll back while PostgreSQL 17 is pinned.*pin the old build'):
        upgrade.rollback(pinned_major=17)
    assert open(state.path).read() == before and sorted(os.listdir(str(tmp_path))) == ['pgdata', 'pgdata.upgrade']
    # with the old major pinned, a dry run says what it would do
    assert Upgrade(str(data), '').rollback(check_mode=True, pinned_major=15)


def test_one_upgrade_at_a_time(tmp_path):
    lock = str(tmp_path / 'lock')
    with UpgradeLock(lock):
        with pytest.raises(UpgradeError, match='another upgrade'):
            with UpgradeLock(lock, timeout=0):
                pass
    with UpgradeLock(lock, timeout=0):
        pass


def test_controldata_and_versions(tmp_path):
    fields = parse_controldata('pg_control version number:            1300\n'
                               'Data page checksum version:           1\n'
                               'Bytes per WAL segment:                16777216\n')
    assert fields['Data page checksum version'] == '1'
    assert fields['Bytes per WAL segment'] == '16777216'
    assert major_of('17.11') == 17 and major_of('9.6.24') == 9
    with pytest.raises(ClusterError):
        major_of('devel')
    (tmp_path / 'PG_VERSION').write_text('15\n')
    assert data_version(str(tmp_path)) == 15
    with pytest.raises(ClusterError, match='no PG_VERSION'):
        data_version(str(tmp_path / 'absent'))


def test_start_options_leave_out_the_data_directory(tmp_path):
    (tmp_path / 'postmaster.opts').write_text(
        '/usr/lib/postgresql/bin/postgres "-D" "/var/lib/postgresql/data" "-c" '
        '"listen_addresses=" "-k" "/tmp"\n')
    program, options = start_options(str(tmp_path))
    assert program == '/usr/lib/postgresql/bin/postgres'
    assert options == ['-c', 'listen_addresses=', '-k', '/tmp']
    assert quote_options(options) == "-c listen_addresses= -k /tmp"
    assert start_options(str(tmp_path / 'absent')) == (None, [])


def test_a_stale_postmaster_pid_is_no_server(tmp_path):
    assert running_server(str(tmp_path)) is None
    (tmp_path / 'postmaster.pid').write_text('%d\n%s\n0\n5433\n/tmp\n' % (os.getpid(), tmp_path))
    assert running_server(str(tmp_path)) is None   # this process is no postgres
    (tmp_path / 'postmaster.pid').write_text('not a pid\n')
    assert running_server(str(tmp_path)) is None
