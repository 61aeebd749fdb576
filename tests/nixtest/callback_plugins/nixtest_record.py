"""Record every task result of a playbook run as JSON lines, for the tests to read."""
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = '''
name: nixtest_record
type: aggregate
short_description: write every task result to the file named by NIXTEST_RESULTS_FILE
description:
  - One JSON object a line, for each task result and host, and the final stats.
requirements:
  - the NIXTEST_RESULTS_FILE environment variable
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'nixtest_record'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get('NIXTEST_RESULTS_FILE')
        self._play = None

    def _write(self, record):
        if not self._path:
            return
        with open(self._path, 'a') as f:
            f.write(json.dumps(record, default=repr, sort_keys=True) + '\n')

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()

    def _record(self, status, result):
        # ansible-core 2.19 made the task, host and result public; older releases have
        # them only as _task, _host and _result.
        task = getattr(result, 'task', None) or result._task
        host = getattr(result, 'host', None) or result._host
        values = getattr(result, 'result', None)
        if not isinstance(values, dict):
            values = result._result
        register = task.register
        if isinstance(register, dict):   # ansible-core 2.21: {name: projection}
            register = next(iter(register), None)
        self._write({
            'kind': 'task',
            'play': self._play,
            'host': host.get_name(),
            'task': result.task_name,
            'action': task.action,
            'register': register,
            'status': status,
            'changed': bool(values.get('changed', False)),
            'result': values,
        })

    def v2_runner_on_ok(self, result):
        self._record('ok', result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record('ignored' if ignore_errors else 'failed', result)

    def v2_runner_on_skipped(self, result):
        self._record('skipped', result)

    def v2_runner_on_unreachable(self, result):
        self._record('unreachable', result)

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        self._write({'kind': 'stats',
                     'stats': {h: stats.summarize(h) for h in hosts}})
