# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a stream ahead in a helper thread, a few chunks at most.

A large NAR goes through one chain of readers: the download, decompression and hashing
(C code that lets other threads run) and the unpacker (Python code and file writes).
``ReadAhead`` runs the first part in its own thread, so that on a machine with two
cores decompression and unpacking overlap instead of taking turns.  Memory stays
bounded: at most ``depth`` chunks wait between the two threads.
"""

import queue
import threading
from typing import Any

# Bytes the helper asks of the stream at a time: what the unpacker asks, so that chunks
# are handed over whole.
CHUNK = 1 << 18
DEPTH = 4                    # chunks that may wait for the reader
_POLL = 0.1                  # seconds between two checks of close() by a waiting helper


class ReadAhead(object):
    """``read(n)`` and ``close()`` over ``stream``, which a helper thread reads.

    What the stream raises is raised by the ``read`` that reaches it.  ``close()``
    stops the helper and waits for it: after it returns, nothing touches ``stream``
    any more, so the caller may close it.  A helper blocked in ``stream.read`` is
    waited for until that read returns (network reads end at their deadline).
    """

    def __init__(self, stream: Any, chunk: int = CHUNK, depth: int = DEPTH) -> None:
        self._stream = stream
        self._chunk = chunk
        self._queue = queue.Queue(depth)
        self._closing = threading.Event()
        self._pending = memoryview(b'')
        self._finished = False
        self._thread = threading.Thread(target=self._fill, name='nixcache-read-ahead')
        self._thread.daemon = True
        self._thread.start()

    def _fill(self):
        try:
            while not self._closing.is_set():
                data = self._stream.read(self._chunk)
                if not self._put(data) or not data:   # b'' tells the reader the end
                    return
        except BaseException as error:   # handed to the reader
            self._put(error)

    def _put(self, item):
        """Queue ``item``; False when the reader closed meanwhile."""
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b''
        if not self._pending:
            if self._finished:
                return b''
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            if not item:
                self._finished = True
                return b''
            self._pending = memoryview(item)
        if size is None or size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, memoryview(b'')
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data.tobytes() if len(data) != len(data.obj) else data.obj

    def close(self) -> None:
        self._closing.set()
        self._finished = True
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
