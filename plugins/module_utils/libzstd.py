# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""zstd decompression through the system's ``libzstd`` library and ``ctypes``.

Debian and Ubuntu systems carry ``libzstd.so.1`` even without the ``zstd`` program (apt
and dpkg link it), so the standard library reaches a zstd decoder in C: no process and
no feeding thread per NAR, and the GIL released while it works.  ``load()`` returns None
when there is no usable library, or when it fails a known-answer test.
"""

import ctypes
import ctypes.util
import threading
from typing import Optional

from ansible_collections.nixcache.closure.plugins.module_utils.clibrary import bind

LIBRARY_NAMES = ('libzstd.so.1', 'libzstd.so')
ZSTD_D_WINDOW_LOG_MAX = 100     # ZSTD_d_windowLogMax
WINDOW_LOG_MAX = 27             # 128 MiB, the library's and the zstd program's default bound
OUTPUT_SIZE = 1 << 18
IDLE_CONTEXTS = 8               # contexts kept for later frames

# b'hello\n' as `zstd -q -c` writes it (with a content checksum).
_TEST_FRAME = bytes.fromhex('28b52ffd045831000068656c6c6f0a5388bd91')
_TEST_OUTPUT = b'hello\n'


class ZstdError(Exception):
    pass


# ZSTD_inBuffer and ZSTD_outBuffer: a pointer, a size and a position.  No ctypes.cast:
# its result refers to itself, so every buffer it touched would wait for the cyclic GC.
class _InBuffer(ctypes.Structure):
    _fields_ = [('data', ctypes.c_char_p), ('size', ctypes.c_size_t), ('pos', ctypes.c_size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [('data', ctypes.c_void_p), ('size', ctypes.c_size_t), ('pos', ctypes.c_size_t)]


class Libzstd(object):
    def __init__(self, library: ctypes.CDLL) -> None:
        pointer, size = ctypes.c_void_p, ctypes.c_size_t
        self._create = bind(library, 'ZSTD_createDCtx', pointer)
        self.free = bind(library, 'ZSTD_freeDCtx', size, pointer)
        self.decompress_stream = bind(library, 'ZSTD_decompressStream', size, pointer,
                                      ctypes.POINTER(_OutBuffer), ctypes.POINTER(_InBuffer))
        self.is_error = bind(library, 'ZSTD_isError', ctypes.c_uint, size)
        self.error_name = bind(library, 'ZSTD_getErrorName', ctypes.c_char_p, size)
        self._init = bind(library, 'ZSTD_initDStream', size, pointer)
        try:   # libzstd 1.4 and later; older ones keep their default bound, the same 27
            self._set_parameter = bind(library, 'ZSTD_DCtx_setParameter', size,
                                       pointer, ctypes.c_int, ctypes.c_int)
        except AttributeError:
            self._set_parameter = None
        self._lock = threading.Lock()
        self._idle = []

    def acquire(self) -> int:
        """A decompression context ready for a new frame, from the idle ones if any.

        Contexts are kept for the next frame: making and freeing one per NAR leaves the
        allocator with megabytes of window buffers it does not give back."""
        with self._lock:
            context = self._idle.pop() if self._idle else None
        if context is None:
            context = self._create()
            if not context:
                raise MemoryError('libzstd could not make a decompression context')
            if self._set_parameter is not None:
                self.check(self._set_parameter(context, ZSTD_D_WINDOW_LOG_MAX, WINDOW_LOG_MAX))
        self.check(self._init(context))
        return context

    def release(self, context: int) -> None:
        with self._lock:
            if len(self._idle) < IDLE_CONTEXTS:
                self._idle.append(context)
                return
        self.free(context)

    def check(self, code: int) -> int:
        if self.is_error(code):
            raise ZstdError((self.error_name(code) or b'unknown error').decode('ascii', 'replace'))
        return code

    def works(self) -> bool:
        decompressor = Decompressor(self)
        try:
            return decompressor.decompress(_TEST_FRAME, 64) == _TEST_OUTPUT and decompressor.eof
        finally:
            decompressor.close()


class Decompressor(object):
    """One zstd frame behind the ``lzma`` decompressor interface:
    ``decompress(data, max_length)``, ``eof``, ``needs_input``, ``unused_data``."""

    def __init__(self, library: Libzstd) -> None:
        self._library = library
        self._context = library.acquire()
        self._input = b''            # the input the decoder points into
        self._input_buffer = _InBuffer(None, 0, 0)
        self._output = ctypes.create_string_buffer(OUTPUT_SIZE)
        self._output_full = False    # the last call filled its output: more may be pending
        self.eof = False

    @property
    def needs_input(self) -> bool:
        return (not self.eof and not self._output_full
                and self._input_buffer.pos >= self._input_buffer.size)

    @property
    def unused_data(self) -> bytes:
        return self._input[self._input_buffer.pos:] if self.eof else b''

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self.eof:
            raise EOFError('data after the end of the zstd frame')
        if not self._context:
            raise ValueError('the decompressor is closed')
        if data:
            rest = self._input[self._input_buffer.pos:]
            self._input = rest + data if rest else bytes(data)
            self._input_buffer = _InBuffer(self._input, len(self._input), 0)
        if len(self._output) < max_length:
            self._output = ctypes.create_string_buffer(max_length)
        output = _OutBuffer(ctypes.addressof(self._output), max_length, 0)
        hint = self._library.check(self._library.decompress_stream(
            self._context, ctypes.byref(output), ctypes.byref(self._input_buffer)))
        self._output_full = output.pos == output.size
        if hint == 0:      # the frame is decoded and flushed
            self.eof = True
            self.close()
        return ctypes.string_at(self._output, output.pos)

    def close(self) -> None:
        """Hand the context back (done at the end of the frame)."""
        context, self._context = self._context, None
        if context:
            self._library.release(context)

    def __del__(self):
        self.close()


_loaded = {}
_load_lock = threading.Lock()


def load(names=LIBRARY_NAMES) -> Optional[Libzstd]:
    """The system's Libzstd, or None when there is no usable one (looked for once)."""
    names = tuple(names)
    with _load_lock:
        if names not in _loaded:
            _loaded[names] = _find(names)
        return _loaded[names]


def _find(names):
    for name in names:
        library = _try(name)
        if library is not None:
            return library
    found = ctypes.util.find_library('zstd') if names == LIBRARY_NAMES else None
    return _try(found) if found else None


def _try(name):
    try:
        library = Libzstd(ctypes.CDLL(name))
        return library if library.works() else None
    except (OSError, AttributeError, ZstdError, MemoryError):
        return None
