"""Worker processes (``workers.py``): jobs run in forked children, answers and errors come
back, a worker that dies is an error and not a hang, and no child outlives its parent."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import errors
from ansible_collections.nixcache.closure.plugins.module_utils.workers import REPORT_EVERY, Workers


def alive(pid):
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (IOError, OSError):
        return False


def gone_within(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.02)
    return False


class Unpicklable(Exception):
    def __init__(self, first, second):   # pickle calls cls(*args) with one of them only
        super(Unpicklable, self).__init__('%s and %s' % (first, second))


def run(job, report):
    kind, value = job
    if kind == 'pid':
        return os.getpid()
    if kind == 'report':
        for _chunk in range(value):
            report(REPORT_EVERY // 4)
        return value
    if kind == 'print':
        print('a worker must not write on the module\'s output')
        sys.stdout.flush()
        return 'printed'
    if kind == 'sleep':
        time.sleep(value)
        return 'slept'
    if kind == 'hash mismatch':
        raise errors.HashMismatch('NAR hash differs', path='/nix/store/x', cache='mem://one',
                                  expected='sha256:a', found='sha256:b')
    if kind == 'unpicklable':
        raise Unpicklable('one', 'two')
    if kind == 'die':
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError(kind)


@pytest.fixture
def workers():
    pool = Workers(3, run)
    yield pool
    pool.close(kill=True)


def test_jobs_run_in_other_processes_several_at_once(workers):
    with concurrent.futures.ThreadPoolExecutor(6) as threads:
        pids = list(threads.map(lambda number: workers.call(('pid', number)), range(30)))
    assert os.getpid() not in pids
    assert 1 <= len(set(pids)) <= 3
    with concurrent.futures.ThreadPoolExecutor(3) as threads:   # three sleepers, three workers
        started = time.monotonic()
        assert list(threads.map(lambda _n: workers.call(('sleep', 0.5)), range(3))) == ['slept'] * 3
        assert time.monotonic() - started < 1.4


def test_reports_reach_the_caller_summed(workers):
    heard = []
    assert workers.call(('report', 10), heard.append) == 10
    assert sum(heard) == 10 * (REPORT_EVERY // 4)
    assert all(count >= REPORT_EVERY for count in heard[:-1])


def test_an_error_keeps_its_class_and_fields(workers):
    with pytest.raises(errors.HashMismatch) as raised:
        workers.call(('hash mismatch', None))
    assert raised.value.details() == dict(path='/nix/store/x', cache='mem://one',
                                          expected='sha256:a', found='sha256:b')
    assert workers.call(('pid', 0)) != os.getpid()   # the worker still serves


def test_an_error_that_cannot_travel_becomes_a_store_error_naming_it(workers):
    with pytest.raises(errors.StoreError, match='Unpicklable: one and two'):
        workers.call(('unpicklable', None))


def test_a_worker_that_dies_is_an_error_and_the_others_go_on(workers):
    with pytest.raises(errors.StoreError, match='killed by signal 9'):
        workers.call(('die', None))
    assert workers.count == 3
    assert workers.call(('pid', 0)) != os.getpid()


def test_when_every_worker_died_a_call_fails_at_once():
    pool = Workers(2, run)
    for _worker in range(2):
        with pytest.raises(errors.StoreError, match='killed by signal 9'):
            pool.call(('die', None))
    with pytest.raises(errors.StoreError, match='have ended'):
        pool.call(('pid', 0))
    pool.close()


def test_a_worker_writes_nothing_on_standard_output(capfd, workers):
    assert workers.call(('print', None)) == 'printed'
    assert capfd.readouterr().out == ''


def test_close_waits_for_every_worker_and_kill_stops_a_busy_one():
    pool = Workers(2, run)
    pids = set()
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        pids.update(threads.map(lambda _n: pool.call(('pid', 0)), range(8)))
        busy = threads.submit(pool.call, ('sleep', 30))
        time.sleep(0.3)
        started = time.monotonic()
        pool.close(kill=True)
        with pytest.raises(errors.StoreError, match='killed by signal 9'):
            busy.result(timeout=10)
        assert time.monotonic() - started < 5
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(errors.StoreError, match='have ended'):
        pool.call(('pid', 0))


def test_workers_die_with_their_parent(tmp_path):
    """kill -9 of the process that forked them: its workers go too, at once."""
    script = (
        'import os, signal, sys\n'
        'sys.path[:0] = %r\n'
        'from ansible_collections.nixcache.closure.plugins.module_utils.workers import Workers\n'
        'def run(job, report):\n'
        '    return os.getpid()\n'
        'pool = Workers(3, run)\n'
        'print(" ".join(str(pool.call(n)) for n in range(9)), flush=True)\n'
        'print(" ".join(str(w.pid) for w in pool._workers), flush=True)\n'
        'os.kill(os.getpid(), signal.SIGKILL)\n' % (sys.path,))
    done = subprocess.run([sys.executable, '-c', script], stdout=subprocess.PIPE, timeout=60,
                          check=False,
                          universal_newlines=True)
    assert done.returncode == -signal.SIGKILL
    answered, started = [set(int(pid) for pid in line.split()) for line in done.stdout.splitlines()]
    assert answered <= started and len(started) == 3
    assert gone_within(started, 5)


def test_no_thread_is_left_behind():
    before = threading.active_count()
    pool = Workers(2, run)
    pool.call(('pid', 0))
    pool.close()
    assert threading.active_count() == before
