# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The C allocator set up for streaming NARs.

A NAR streams through buffers of a few hundred KiB (socket reads, decompressed chunks,
the unpacker's joins), each freed a moment later.  glibc's defaults serve a buffer that
large with a fresh ``mmap`` and hand it back at once, or trim the heap as soon as 128 KiB
at its top are free: every buffer then comes back as new zero-filled pages, one page
fault for each 4 KiB streamed (64,000 faults and about a fifth of the fetch's system time
on a closure of 324 MiB).  Raising both thresholds up front (glibc raises them itself
only after a large buffer is freed, and trims too soon for a stream) keeps the same few
MiB in use instead.  Memory stays bounded: the heap keeps at most ``TRIM_THRESHOLD``
free bytes (a process's peak grows by less than 1 MiB on that closure).
"""

import ctypes
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20   # buffers smaller than this come from the heap
TRIM_THRESHOLD = 4 << 20   # free bytes the heap keeps at its top for the next buffers

_done = []
_lock = threading.Lock()


def reuse_freed_buffers() -> bool:
    """Set the thresholds once a process (a forked child inherits them); False where the
    C library has no ``mallopt`` (musl) or refuses: the defaults then stay."""
    with _lock:
        if not _done:
            _done.append(_set_thresholds())
        return _done[0]


def _set_thresholds():
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    mallopt.restype = ctypes.c_int
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
