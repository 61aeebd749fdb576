# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a realisation, written to a small JSON file for the controller to read.

A module runs on the managed host and can say nothing until it ends; the collection's
action plugin reads this file while the module works and prints progress in the
``ansible-playbook`` output.  The file is rewritten atomically (a temporary file renamed
over it) at most a few times a second, and removed when the module ends.
"""

import json
import os
import threading
import time
from typing import Any, Dict, Optional

WRITE_INTERVAL = 0.5    # seconds between two rewrites of the file


class Progress(object):
    """Counts paths and bytes as they are fetched; ``path`` None counts without writing."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._state = dict(paths_done=0, paths_total=0, bytes_done=0, bytes_total=0,
                           started=time.time(), done=[])
        self._written = 0.0

    def start(self, paths_total: int, bytes_total: int) -> None:
        with self._lock:
            self._state.update(paths_total=paths_total, bytes_total=bytes_total)
        self._write(force=True)

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self._state['bytes_done'] += count
        self._write()

    def path_done(self, store_path: str, download_bytes: int) -> None:
        with self._lock:
            self._state['paths_done'] += 1
            self._state['done'].append(dict(path=store_path, download_bytes=download_bytes))
        self._write()   # not at every path: the list grows, and paths can come by hundreds

    def remove(self) -> None:
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def _write(self, force=False):
        if not self.path:
            return
        now = time.time()
        with self._lock:
            if not force and now - self._written < WRITE_INTERVAL:
                return
            self._written = now
            data = json.dumps(dict(self._state, now=now)).encode('utf-8')
        directory = os.path.dirname(self.path)
        temporary = '%s.%d-%d.tmp' % (self.path, os.getpid(), threading.current_thread().ident)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.rename(temporary, self.path)
        except OSError:
            pass    # progress is a courtesy: never fail a realisation over it


def describe(state: Dict[str, Any], previous: Optional[Dict[str, Any]] = None) -> str:
    """One line of progress from a state the file held; with ``previous`` (an earlier
    state), the rate since then."""
    mib = 1024.0 * 1024.0
    elapsed = max(state['now'] - state['started'], 0.001)
    rate = state['bytes_done'] / elapsed
    if previous is not None and state['now'] > previous['now']:
        rate = (state['bytes_done'] - previous['bytes_done']) / (state['now'] - previous['now'])
    return '%d/%d paths, %.1f/%.1f MiB, %.1f MiB/s' % (
        state['paths_done'], state['paths_total'], state['bytes_done'] / mib,
        state['bytes_total'] / mib, rate / mib)
