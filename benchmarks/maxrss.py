"""A Python interpreter for the managed host that records the module's peak memory and time.

benchmarks/run.py writes a copy of this file, with PYTHON and LOG filled in and the
shebang line ``#!/usr/bin/python3 -IS`` added, and points
``ansible_python_interpreter`` at it.  Ansible runs it exactly as it would run PYTHON
(same argv, stdin, stdout, stderr and environment); it runs PYTHON as a child, waits for
it, appends one line to LOG: the child's peak RSS in KiB (``ru_maxrss``: the largest of
the child and of any process it waited for, e.g. the ``zstd`` program or one worker
process), its wall seconds, its CPU seconds (user and system, with those of the
processes it waited for), and the peak of the PSS the child and all its descendants
take together, in KiB (sampled every SAMPLE_EVERY seconds from ``/proc``; 0 where that
cannot be read): the memory of a module with worker processes, counting the pages they
share once; and exits with the child's status.  Started with ``-I -S`` it imports
nothing but ``os``, ``sys`` and ``time`` (built in), so it adds a few milliseconds per
module run (run.py prints how many), the same for the ping-only baseline as for the task.
"""
import os
import sys
import time

PYTHON = None  # the bare interpreter
LOG = None  # where each run's peak RSS, seconds, CPU seconds and peak PSS go
POLL_EVERY = 0.002   # how often the child's end is looked for
SAMPLE_EVERY = 0.02  # how often the PSS of its process tree is read


def descendants(pid):
    """``pid`` and every process below it (through /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir('/proc/%d/task' % current):
                with open('/proc/%d/task/%s/children' % (current, task)) as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):
            pass
    return found


def pss_kib(pid):
    try:
        with open('/proc/%d/smaps_rollup' % pid) as handle:
            for line in handle:
                if line.startswith('Pss:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def main():
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(PYTHON, [PYTHON] + sys.argv[1:])
        finally:
            os._exit(127)
    peak_pss, next_sample = 0, started
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if now >= next_sample:
            peak_pss = max(peak_pss, sum(pss_kib(process) for process in descendants(pid)))
            next_sample = now + SAMPLE_EVERY
        time.sleep(POLL_EVERY)
    seconds = time.monotonic() - started
    with open(LOG, 'a') as log:
        log.write('%d %.6f %.6f %d\n' % (usage.ru_maxrss, seconds, usage.ru_utime + usage.ru_stime,
                                         peak_pss))
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == '__main__':
    main()
