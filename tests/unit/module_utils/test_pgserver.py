"""A running PostgreSQL server seen from its data directory, and its health check."""
import os
import sys

from ansible_collections.nixcache.closure.plugins.module_utils import pgserver

PID_FILE_15 = '%d\n/var/lib/postgresql/15/main\n1733212345\n5432\n/var/run/postgresql\n' \
              '127.0.0.2\n  5432001    32768\nready   \n'


def write_pid_file(directory, text):
    directory.mkdir(exist_ok=True)
    (directory / 'postmaster.pid').write_text(text)
    return str(directory)


def test_pid_file_fields(tmp_path):
    data = write_pid_file(tmp_path / 'data', PID_FILE_15 % 4242)
    assert pgserver.read_pid_file(data) == dict(
        pid=4242, port=5432, socket_directory='/var/run/postgresql', listen_address='127.0.0.2',
        status='ready')


def test_pid_file_missing_or_garbled(tmp_path):
    assert pgserver.read_pid_file(str(tmp_path)) is None
    assert pgserver.read_pid_file(write_pid_file(tmp_path / 'bad', 'not a pid\n')) is None
    # a server still starting has written only the first lines
    short = pgserver.read_pid_file(write_pid_file(tmp_path / 'short', '77\n/data\n'))
    assert short == dict(pid=77, port=None, socket_directory='', listen_address='', status='')


def test_the_program_a_process_runs():
    assert pgserver.program_of(os.getpid()) == os.path.realpath(sys.executable)
    assert pgserver.program_of(2 ** 22 + 1) is None  # above pid_max: no such process


def fake_proc(tmp_path, pid, program):
    proc = tmp_path / 'proc'
    (proc / str(pid)).mkdir(parents=True)
    os.symlink(program, str(proc / str(pid) / 'exe'))
    return str(proc)


def test_server_state_tells_which_build_runs(tmp_path):
    build = tmp_path / 'store' / 'pg-15.18' / 'bin'
    build.mkdir(parents=True)
    (build / 'postgres').write_text('')
    other = tmp_path / 'store' / 'pg-15.19' / 'bin'
    other.mkdir(parents=True)
    (other / 'postgres').write_text('')
    profile_bin = tmp_path / 'profile-bin'
    os.symlink(str(build), str(profile_bin))
    data = write_pid_file(tmp_path / 'data', PID_FILE_15 % 31)
    proc = fake_proc(tmp_path, 31, str(build / 'postgres') + ' (deleted)')

    state = pgserver.server_state(data, str(profile_bin / 'postgres'), proc=proc)
    assert state['running'] and state['pid'] == 31 and state['port'] == 5432
    assert state['program'] == str(build / 'postgres') and state['current']
    assert state['status'] == 'ready'
    assert not pgserver.server_state(data, str(other / 'postgres'), proc=proc)['current']
    assert not pgserver.server_state(data, None, proc=proc)['current']


def test_a_stale_pid_file_or_another_program_is_no_server(tmp_path):
    data = write_pid_file(tmp_path / 'data', PID_FILE_15 % 31)
    gone = pgserver.server_state(data, None, proc=str(tmp_path / 'empty-proc'))
    assert not gone['running'] and gone['pid'] is None and gone['program'] is None
    # the PID was reused by something else
    proc = fake_proc(tmp_path, 31, '/usr/bin/sleep')
    assert not pgserver.server_state(data, None, proc=proc)['running']


def test_the_serving_generation_is_the_newest_that_holds_the_build(tmp_path):
    store = tmp_path / 'nix' / 'store'
    for name in ('aaa-pg-good', 'bbb-pg-bad', 'ccc-env'):
        (store / name / 'bin').mkdir(parents=True)
    (store / 'aaa-pg-good' / 'bin' / 'postgres').write_text('')
    (store / 'bbb-pg-bad' / 'bin' / 'postgres').write_text('')
    # an environment of several packages links to the build's program
    os.symlink(str(store / 'aaa-pg-good' / 'bin' / 'postgres'), str(store / 'ccc-env' / 'bin' / 'postgres'))
    program = str(store / 'aaa-pg-good' / 'bin' / 'postgres')
    generations = {1: '/nix/store/aaa-pg-good', 2: '/nix/store/bbb-pg-bad',
                   3: '/nix/store/ccc-env', 4: '/nix/store/bbb-pg-bad', 5: '/nix/store/gone'}
    assert pgserver.serving_generation(generations, program, str(tmp_path)) == \
        dict(number=3, path='/nix/store/ccc-env')
    assert pgserver.serving_generation({2: '/nix/store/bbb-pg-bad'}, program, str(tmp_path)) is None
    assert pgserver.serving_generation(generations, None, str(tmp_path)) is None


def test_psql_goes_to_the_socket_else_the_listen_address():
    state = dict(socket_directory='/tmp', listen_address='', port=5433)
    argv = pgserver.psql_argv('/usr/lib/postgresql/bin', state, 'shop', 'supabase_admin', 'select 1')
    assert argv == ['/usr/lib/postgresql/bin/psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
                    '-h', '/tmp', '-d', 'shop', '-U', 'supabase_admin', '-p', '5433', '-c', 'select 1']
    tcp = pgserver.psql_argv('/b', dict(socket_directory='', listen_address='10.0.0.5,10.0.0.6',
                                        port=None), 'postgres', 'postgres', 'select 1')
    assert tcp[tcp.index('-h') + 1] == '10.0.0.5' and '-p' not in tcp
    for address, host in (('*', '127.0.0.1'), ('', '127.0.0.1'), ('::', '::1')):
        argv = pgserver.psql_argv('/b', dict(socket_directory='', listen_address=address),
                                  'postgres', 'postgres', 'select 1')
        assert argv[argv.index('-h') + 1] == host


def test_an_answer_is_healthy_unless_it_failed_or_said_false():
    assert pgserver.judge_answer(0, '1\n', '') is None
    assert pgserver.judge_answer(0, '', '') is None           # a statement with no rows
    assert pgserver.judge_answer(0, 't\n', '') is None
    assert pgserver.judge_answer(0, 'f\n', '') == 'the health query answered false'
    assert 'hstore' in pgserver.judge_answer(3, '', 'ERROR:  could not access file "$libdir/hstore"\n')
    assert pgserver.judge_answer(2, '', '') == 'psql exited with code 2'


def test_log_tail_reads_the_end_of_the_first_log_there(tmp_path):
    log = tmp_path / 'server.log'
    log.write_text(''.join('line %d\n' % n for n in range(100000)))
    tail = pgserver.log_tail([str(tmp_path / 'missing.log'), str(log)], lines=3)
    assert tail == 'last lines of %s:\nline 99997\nline 99998\nline 99999' % log
    assert pgserver.log_tail([str(tmp_path / 'missing.log')]) == ''


class Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def states(*sequence):
    """A state_of that gives the states in order (the last one over and over)."""
    remaining = list(sequence)

    def state_of(data_directory):
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]
    return state_of


UP = dict(running=True, status='ready', socket_directory='/run', listen_address='', port=5432)
STARTING = dict(UP, status='starting')
DOWN = dict(running=False, status=None, socket_directory=None, listen_address=None, port=None)


def test_waits_for_a_starting_server_then_asks_it():
    clock, asked = Clock(), []

    def run(argv, timeout):
        asked.append((argv[-1], timeout))
        return (0, '1\n', '')
    result = pgserver.wait_healthy('/data', '/bin', 'select 1', 'postgres', 'postgres', 30, run,
                                   clock=clock, sleep=clock.sleep,
                                   state_of=states(DOWN, STARTING, UP))
    assert result['healthy'] and result['answer'] == '1' and result['attempts'] == 1
    assert result['seconds'] == 2.0 and asked == [('select 1', 28.0)]


def test_gives_up_after_the_timeout_saying_the_last_problem():
    clock = Clock()

    def run(argv, timeout):
        clock.now += 4  # each psql call takes its time too
        return (2, '', 'psql: error: connection refused')
    result = pgserver.wait_healthy('/data', '/bin', 'select 1', 'postgres', 'postgres', 10, run,
                                   clock=clock, sleep=clock.sleep, state_of=states(UP))
    assert not result['healthy'] and result['problem'] == 'psql: error: connection refused'
    assert result['attempts'] == 2 and result['seconds'] <= 11


def test_no_server_and_a_timed_out_query_are_failures():
    clock = Clock()
    down = pgserver.wait_healthy('/data', '/bin', 'select 1', 'postgres', 'postgres', 3,
                                 lambda argv, timeout: (0, '1', ''), clock=clock,
                                 sleep=clock.sleep, state_of=states(DOWN))
    assert not down['healthy'] and down['problem'] == 'no server runs on /data'
    assert down['attempts'] == 0
    hung = pgserver.wait_healthy('/data', '/bin', 'select 1', 'postgres', 'postgres', 1,
                                 lambda argv, timeout: (None, '', 'psql did not answer within 1 s'),
                                 clock=clock, sleep=clock.sleep, state_of=states(UP))
    assert not hung['healthy'] and 'did not answer' in hung['problem']


def test_runner_bounds_psql_and_reports_a_missing_program(tmp_path):
    runner = pgserver.Runner()
    returncode, stdout, stderr = runner([sys.executable, '-c', 'import time; time.sleep(5)'], 0.5)
    assert returncode is None and 'did not answer within' in stderr
    returncode, stdout, stderr = runner([str(tmp_path / 'psql')], 5)
    assert returncode is None and stderr.startswith('cannot run ')
    returncode, stdout, stderr = runner([sys.executable, '-c', 'import os; print(os.environ["PGOPTIONS"])'], 5)
    assert returncode == 0 and stdout.strip() == '-c statement_timeout=5000'
