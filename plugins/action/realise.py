# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run ``realise`` and print its progress while it works.

The module runs as usual, in a thread of this worker; meanwhile this plugin reads the
small progress file the module rewrites on the managed host (a plain ``cat`` over the same
connection, without become) and prints a line at least every few seconds: paths and MiB
done of the total, and the rate.  With ``-v`` it also prints a line per fetched path.  The
result is the module's own, so nothing changes for idempotence or registered values.

With ``fetch_on: controller`` the controller fetches the closure and sends the host what
it lacks before the module runs on it (push mode, see ``plugin_utils/push.py``).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import concurrent.futures
import json
import posixpath
import shlex
import uuid

from ansible import constants as C
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash

display = Display()

PROGRESS_DIR = '/nix/var/nixcache/progress'
INTERVAL = 5.0    # seconds between two progress lines


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        wrap_async = self._task.async_val and not self._connection.has_native_async
        check_mode = self._task.check_mode or self._play_context.check_mode
        if self._task.args.get('fetch_on') == 'controller' and not wrap_async:
            result = merge_hash(result, self._push(task_vars, check_mode))
        elif wrap_async or check_mode:
            result = merge_hash(result, self._execute_module(task_vars=task_vars,
                                                             wrap_async=wrap_async))
        else:
            result = merge_hash(result, self._run_with_progress(task_vars))
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _push(self, task_vars, check_mode):
        """Push mode (fetch_on: controller): see plugin_utils.push."""
        # Imported here, not above: every task of every host loads this plugin afresh in
        # its worker, and only push mode needs the fetching code on the controller.
        from ansible_collections.nixcache.closure.plugins.module_utils.common import failure
        from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError
        from ansible_collections.nixcache.closure.plugins.plugin_utils.push import Transport, push
        host = task_vars.get('inventory_hostname', '?') if task_vars else '?'
        transport = Transport(
            execute=lambda args: self._as_asked(self._execute_module(module_args=args,
                                                                     task_vars=task_vars)),
            execute_with_progress=lambda args: self._run_with_progress(task_vars, args),
            remote_dir=self._remote_dir,
            send=self._send,
            say=lambda text: display.display('realise [%s]: %s' % (host, text)))
        try:
            return push(dict(self._task.args), transport, check_mode, C.DEFAULT_LOCAL_TMP)
        except (NixCacheError, OSError) as error:
            return dict(failed=True, **failure(error))

    def _remote_dir(self, name):
        if self._connection._shell.tmpdir is None:
            self._make_tmp_path()
        path = self._connection._shell.join_path(self._connection._shell.tmpdir, name)
        made = self._low_level_execute_command('mkdir -p %s' % shlex.quote(path), sudoable=False)
        if made.get('rc'):
            raise OSError(made.get('rc'), 'cannot make %s on the host: %s'
                          % (path, made.get('stderr', '').strip()))
        return path

    def _send(self, local, remote):
        self._transfer_file(local, remote)
        self._fixup_perms2([posixpath.dirname(remote), remote], execute=False)

    def _run_with_progress(self, task_vars, args=None):
        args = dict(self._task.args if args is None else args)
        root = args.get('root') or '/'
        progress_file = posixpath.join(root, PROGRESS_DIR.lstrip('/'), '%s.json' % uuid.uuid4().hex)
        args['progress_file'] = progress_file
        host = task_vars.get('inventory_hostname', '?') if task_vars else '?'
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(self._execute_module, module_args=args, task_vars=task_vars)
            previous, printed = None, 0
            while True:
                try:
                    return self._as_asked(running.result(timeout=INTERVAL))
                except concurrent.futures.TimeoutError:
                    pass
                state = self._read_progress(progress_file)
                if state is None:
                    continue
                from ansible_collections.nixcache.closure.plugins.module_utils.progress import describe
                if display.verbosity >= 1:
                    for entry in state['done'][printed:]:
                        display.display('realise [%s]: fetched %s (%.2f MiB)' % (
                            host, entry['path'], entry['download_bytes'] / 1048576.0))
                    printed = len(state['done'])
                display.display('realise [%s]: %s' % (host, describe(state, previous)))
                previous = state

    @staticmethod
    def _as_asked(result):
        """The result as the task asked for it: the progress file we added is not shown."""
        invocation = result.get('invocation')
        if isinstance(invocation, dict) and isinstance(invocation.get('module_args'), dict):
            invocation['module_args']['progress_file'] = None
            invocation['module_args']['pushed'] = None
        return result

    def _read_progress(self, path):
        """The progress file's contents, or None when it is not (yet, or any more) there."""
        try:
            out = self._low_level_execute_command("cat '%s' 2>/dev/null" % path, sudoable=False)
            return json.loads(out.get('stdout') or 'null')
        except Exception:   # pylint: disable=broad-except
            return None     # progress is a courtesy: the module's result is what counts
