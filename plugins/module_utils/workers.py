# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Worker processes: jobs run in forked copies of this process, one job at a time each.

Decompressing, hashing and unpacking NARs is CPU work done in Python.  Threads share
one interpreter lock, so on a closure of many paths they mostly wait for each other
(and pay for handing the lock over at every system call); forked workers do not.

A worker is a copy of the parent made once the work is known, so it already holds
everything a job needs (the plan, the caches, the keys): a job names what to do, and
the answer is a small value, or the error the job raised.  A worker never returns into
the caller's code: it ends with ``os._exit``, so no ``finally``, ``atexit`` handler or
database connection of the parent is run or used twice.  It closes the pipes of the
other workers, points its standard input and output at ``/dev/null`` (the parent's
output is the module's JSON answer) and dies with its parent.
"""

import os
import pickle
import signal
import struct
import threading
import warnings
from typing import Any, Callable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError, StoreError

_LENGTH = struct.Struct('>I')
REPORT_EVERY = 1 << 20   # a worker passes progress on in steps of at least this many bytes
PR_SET_PDEATHSIG = 1


class Workers(object):
    """``count`` forked workers, each running ``run(job, report)`` for the jobs sent to it
    (after ``started(number)``, when given).

    ``call(job, on_report)`` (safe from several threads) gives the job to an idle worker,
    waits for its answer and returns it, or raises what the job raised; the numbers the
    job passes to ``report`` reach ``on_report``, summed in steps of REPORT_EVERY.
    ``close()`` ends the workers; ``close(kill=True)`` kills them where they are.
    """

    def __init__(self, count: int, run: Callable[[Any, Callable[[int], None]], Any],
                 started: Optional[Callable[[int], None]] = None) -> None:
        self._run = run
        self._started = started    # called in each new worker with its number (0, 1, ...)
        self._workers = []          # every _Worker started, dead or alive
        self._idle = []
        self._closed = False
        self._ready = threading.Condition()
        try:
            for _number in range(max(1, count)):
                self._workers.append(self._fork())
        except BaseException:
            self.close(kill=True)
            raise
        self._idle = list(self._workers)

    @property
    def count(self) -> int:
        return len(self._workers)

    def _fork(self):
        jobs_read, jobs_write = os.pipe()
        answers_read, answers_write = os.pipe()
        parent = os.getpid()
        with warnings.catch_warnings():   # Python 3.12 warns of fork() beside idle threads
            warnings.simplefilter('ignore', DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for worker in self._workers:    # the pipes of the workers before this one
                    worker.close_pipes()
                os.close(jobs_write)
                os.close(answers_read)
                _detach(parent)
                if self._started is not None:
                    self._started(len(self._workers))
                _serve(jobs_read, answers_write, self._run)
                code = 0
            except BaseException:   # a worker never returns into the caller's code
                pass
            finally:
                os._exit(code)
        os.close(jobs_read)
        os.close(answers_write)
        return _Worker(pid, jobs_write, answers_read)

    def call(self, job: Any, on_report: Optional[Callable[[int], None]] = None) -> Any:
        worker = self._take()
        answer = None
        try:
            answer = worker.ask(job, on_report)
        finally:
            with self._ready:   # only the thread that took a worker ends it while it works
                if answer is not None and not self._closed:
                    self._idle.append(worker)
                else:
                    worker.finish(kill=answer is None)
                self._ready.notify_all()
        kind, value = answer
        if kind == 'failed':
            raise value
        return value

    def _take(self):
        with self._ready:
            while not self._idle:
                if self._closed or not any(worker.pid for worker in self._workers):
                    raise StoreError('the worker processes have ended')
                self._ready.wait()
            return self._idle.pop()

    def close(self, kill: bool = False) -> None:
        """End the idle workers and wait for them; a busy one ends when its job does, or
        at once with ``kill`` (its caller then gets an error).  Idempotent."""
        with self._ready:
            self._closed = True
            for worker in self._workers:
                if worker in self._idle:
                    worker.finish(kill=kill)
                elif kill:
                    worker.kill()
            self._idle = []
            self._ready.notify_all()


class _Worker(object):
    def __init__(self, pid, jobs, answers):
        self.pid = pid
        self.jobs = jobs            # our end of the pipe the worker reads jobs from
        self.answers = answers      # our end of the pipe it writes answers to

    def ask(self, job, on_report):
        """The worker's answer to ``job``: ('done', value) or ('failed', error); None if
        the worker is gone (it has been waited for then)."""
        try:
            _send(self.jobs, job)
            while True:
                message = _receive(self.answers)
                if message is None:
                    break
                kind, value = message
                if kind != 'report':
                    return kind, value
                if on_report is not None:
                    on_report(value)
        except OSError:    # a broken pipe: the worker is gone
            pass
        raise StoreError('a worker process ended in the middle of its job (%s)' % self.finish())

    def kill(self):
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def finish(self, kill=False):
        """Close our pipes (a live worker then exits), wait for the worker; how it ended."""
        if kill:
            self.kill()
        pid, self.pid = self.pid, 0
        self.close_pipes()
        if not pid:
            return 'already ended'
        _pid, status = _wait(pid)
        if os.WIFSIGNALED(status):
            return 'killed by signal %d' % os.WTERMSIG(status)
        return 'exit status %d' % os.WEXITSTATUS(status)

    def close_pipes(self):
        for fd in (self.jobs, self.answers):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.jobs = self.answers = None


def _wait(pid):
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return pid, 0


def _detach(parent):
    """In a new worker: die with the parent, leave its standard input and output alone."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (ImportError, OSError, AttributeError):   # not Linux: a broken pipe ends it
        pass
    if os.getppid() != parent:   # the parent died before prctl took effect
        raise SystemExit(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def _serve(jobs, answers, run):
    """A worker's life: run each job that comes and answer, until the jobs end."""
    while True:
        job = _receive(jobs)
        if job is None:
            return
        reporter = _Reporter(answers)
        try:
            answer = ('done', run(job, reporter.add))
        except BaseException as error:   # handed to the parent, which raises it
            answer = ('failed', _portable(error))
        reporter.flush()
        _send(answers, answer)


class _Reporter(object):
    def __init__(self, answers):
        self._answers = answers
        self._pending = 0

    def add(self, count):
        self._pending += count
        if self._pending >= REPORT_EVERY:
            self.flush()

    def flush(self):
        if self._pending:
            _send(self._answers, ('report', self._pending))
            self._pending = 0


def _portable(error):
    """``error`` if it survives pickling, else a StoreError saying what it was."""
    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error):
            return error
    except Exception:
        pass
    message = '%s: %s' % (type(error).__name__, error)
    if isinstance(error, NixCacheError):
        return StoreError(message, **error.details())
    return StoreError('a worker process failed: %s' % message)


def _send(fd, message):
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = _LENGTH.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _receive(fd):
    """The next message on ``fd``; None at its end."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    data = _read_exactly(fd, _LENGTH.unpack(header)[0])
    if data is None:
        return None
    return pickle.loads(data)


def _read_exactly(fd, size):
    parts: List[bytes] = []
    while size:
        part = os.read(fd, size)
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b''.join(parts)
