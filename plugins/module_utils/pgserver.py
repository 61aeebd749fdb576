# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A running PostgreSQL server, seen from its data directory, and its health check.

``postmaster.pid`` in the data directory tells whether a server runs (its PID, port,
socket directory, listen address and state); ``/proc/PID/exe`` tells which build it runs,
so that a server still on the build a profile has left is found even by a re-run after an
interrupted one.  ``wait_healthy`` asks the server one query through ``psql`` until it
answers or the time is up, and says why not; ``serving_generation`` finds the profile
generation that holds the build a server runs (where a rollback goes back to).
"""

import os
import subprocess
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils.pgcluster import Host

PID_FILE = 'postmaster.pid'
SERVER_PROGRAM = 'bin/postgres'
# Answers of a health query that count as a failure (a boolean query that says no).
FALSE_ANSWERS = ('f', 'false')
LOG_TAIL_BYTES = 64 * 1024


def read_pid_file(data_directory: str) -> Optional[Dict[str, Any]]:
    """The fields of ``postmaster.pid`` (None when there is none): ``pid``, ``port``,
    ``socket_directory`` (the first one, may be empty), ``listen_address`` (may be
    empty) and ``status`` ("ready", "starting", "stopping", or "" before PostgreSQL 10)."""
    try:
        with open(os.path.join(data_directory, PID_FILE)) as handle:
            lines = handle.read(4096).split('\n')
    except (IOError, OSError):
        return None

    def field(number):
        return lines[number].strip() if len(lines) > number else ''
    try:
        pid = int(field(0))
    except ValueError:
        return None
    port = field(3)
    return dict(pid=pid, port=int(port) if port.isdigit() else None,
                socket_directory=field(4), listen_address=field(5), status=field(7))


def program_of(pid: int, proc: str = '/proc') -> Optional[str]:
    """The real path of the program process ``pid`` runs, or None when it is gone."""
    try:
        target = os.readlink(os.path.join(proc, str(pid), 'exe'))
    except OSError:
        return None
    deleted = ' (deleted)'
    return target[:-len(deleted)] if target.endswith(deleted) else target


def server_state(data_directory: str, program: Optional[str] = None, proc: str = '/proc') -> Dict[str, Any]:
    """Whether a server runs on ``data_directory``, its PID file fields and ``program``
    (the build it runs); ``current`` tells whether that is ``program`` (a path, links
    followed: for example the profile's bin/postgres)."""
    info = read_pid_file(data_directory)
    running_program = program_of(info['pid'], proc) if info else None
    running = bool(running_program) and os.path.basename(running_program).startswith('postgres')
    state = dict(running=running, pid=info['pid'] if running else None,
                 program=running_program if running else None,
                 port=info['port'] if running else None,
                 socket_directory=info['socket_directory'] if running else None,
                 listen_address=info['listen_address'] if running else None,
                 status=info['status'] if running else None)
    wanted = os.path.realpath(program) if program else None
    state['current'] = bool(running and wanted and state['program'] == wanted)
    return state


def serving_generation(generations: Dict[int, str], program: Optional[str], store_root: str = '/') -> Optional[Dict[str, Any]]:
    """The newest of ``generations`` ({number: store path}) whose server program is
    ``program`` (a real path), as {number, path}; None when no generation has it."""
    if not program:
        return None
    for number in sorted(generations, reverse=True):
        candidate = os.path.join(store_root, generations[number].lstrip('/'), SERVER_PROGRAM)
        if os.path.exists(candidate) and os.path.realpath(candidate) == program:
            return dict(number=number, path=generations[number])
    return None


def psql_argv(bin_dir: str, state: Dict[str, Any], database: str, login_user: str, query: str) -> List[str]:
    """The psql command line that asks ``query`` of the server in ``state``: over its socket
    directory, else its first listen address (``*`` meaning this host)."""
    host = state.get('socket_directory') or ''
    if not host:
        address = (state.get('listen_address') or '').split(',')[0].strip()
        host = '127.0.0.1' if address in ('', '*', '0.0.0.0') else ('::1' if address == '::' else address)
    argv = [os.path.join(bin_dir, 'psql'), '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1',
            '-h', host, '-d', database, '-U', login_user, '-c', query]
    if state.get('port'):
        argv[-2:-2] = ['-p', str(state['port'])]
    return argv


def judge_answer(returncode: int, stdout: str, stderr: str) -> Optional[str]:
    """None when psql's answer is healthy; else why not (the query failed, or said false)."""
    if returncode != 0:
        return (stderr.strip() or stdout.strip() or 'psql exited with code %d' % returncode)
    if stdout.strip().lower() in FALSE_ANSWERS:
        return 'the health query answered false'
    return None


def log_tail(paths: Iterable[str], lines: int = 20) -> str:
    """The last ``lines`` lines of the first of ``paths`` that exists (read from its last
    64 KiB only), headed by its name; empty when none can be read."""
    for path in paths:
        try:
            with open(path, 'rb') as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - LOG_TAIL_BYTES))
                text = handle.read().decode('utf-8', 'replace')
        except (IOError, OSError):
            continue
        tail = text.splitlines()[-lines:] if lines > 0 else []
        return 'last lines of %s:\n%s' % (path, '\n'.join(tail))
    return ''


class Runner(object):
    """Runs psql as ``os_user`` (when given and we are root) with a time limit."""

    def __init__(self, os_user: Optional[str] = None, host: Optional[Host] = None) -> None:
        self.user = os_user if os_user and os.geteuid() == 0 else None
        self.host = host or Host()

    def __call__(self, argv: List[str], timeout: float) -> Any:
        limits = dict(PGCONNECT_TIMEOUT=str(max(2, int(timeout))),
                      PGOPTIONS='-c statement_timeout=%d' % max(1000, int(timeout * 1000)))
        try:
            return self.host.run(argv, user=self.user, env=limits, cwd='/', timeout=timeout)
        except subprocess.TimeoutExpired:
            return (None, '', 'psql did not answer within %d s' % int(timeout))
        except OSError as error:
            return (None, '', 'cannot run %s: %s' % (argv[0], error.strerror or error))


def wait_healthy(data_directory: str, bin_dir: str, query: str, database: str, login_user: str,
                 timeout: float, run: Callable[[List[str], float], Any], interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 state_of: Callable[[str], Dict[str, Any]] = server_state) -> Dict[str, Any]:
    """Ask ``query`` of the server on ``data_directory`` until it answers healthily or
    ``timeout`` seconds have passed.  Returns ``healthy``, ``answer``, ``attempts``,
    ``seconds``, ``problem`` (why not, the last reason seen) and the server ``state``."""
    started = clock()
    deadline = started + timeout
    attempts, problem, state = 0, None, None
    while True:
        state = state_of(data_directory)
        remaining = deadline - clock()
        if not state['running']:
            problem = 'no server runs on %s' % data_directory
        elif state['status'] not in ('ready', ''):
            problem = 'the server is %s, not ready' % state['status']
        else:
            attempts += 1
            returncode, stdout, stderr = run(
                psql_argv(bin_dir, state, database, login_user, query), max(remaining, 1.0))
            problem = judge_answer(1 if returncode is None else returncode, stdout, stderr)
            if problem is None:
                return dict(healthy=True, answer=stdout.strip(), attempts=attempts,
                            seconds=round(clock() - started, 3), problem=None, state=state)
        if clock() + interval >= deadline:
            return dict(healthy=False, answer=None, attempts=attempts,
                        seconds=round(clock() - started, 3), problem=problem, state=state)
        sleep(interval)
