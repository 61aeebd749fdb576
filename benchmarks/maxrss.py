"""A Python interpreter for the managed host that records the module's peak memory and time.

benchmarks/run.py writes a copy of this file, with PYTHON and LOG filled in and the
shebang line ``#!/usr/bin/python3 -IS`` added, and points
``ansible_python_interpreter`` at it.  Ansible runs it exactly as it would run PYTHON
(same argv, stdin, stdout, stderr and environment); it runs PYTHON as a child, waits for
it with ``os.wait4``, appends one line to LOG: the child's peak RSS in KiB
(``ru_maxrss``: the largest of the child and of any process it waited for, e.g. the
``zstd`` program), its wall seconds and its CPU seconds (user and system, with those
of the processes it waited for); and exits with the child's status.  Started with
``-I -S`` it imports nothing but ``os``, ``sys`` and ``time`` (built in), so it adds a few milliseconds per module run (run.py prints how many),
the same for the ping-only baseline as for the task.
"""
import os
import sys
import time

PYTHON = None  # the bare interpreter
LOG = None  # where each run's peak RSS, seconds and CPU seconds go


def main():
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(PYTHON, [PYTHON] + sys.argv[1:])
        finally:
            os._exit(127)
    _pid, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - started
    with open(LOG, 'a') as log:
        log.write('%d %.6f %.6f\n' % (usage.ru_maxrss, seconds, usage.ru_utime + usage.ru_stime))
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == '__main__':
    main()
