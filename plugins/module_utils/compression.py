# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decompressing readers for the compression methods of Nix binary caches.

``open_decompressed(method, raw)`` wraps anything with ``read(n)`` (an HTTP response, a
file) in a reader that decompresses as it is read, in bounded memory.  xz, bzip2 and
gzip come from the standard library; zstd from the ``zstandard`` package, Python 3.14's
``compression.zstd``, the system's ``libzstd`` (see ``libzstd``) or else the ``zstd``
program; br from the ``brotli`` package.
Corrupt input raises ``InvalidNar`` with a message starting ``corrupt <method> stream:``.
Closing the reader releases the decompressor; ``raw`` stays the caller's to close.
"""

import bz2
import lzma
import shutil
import subprocess
import threading
import zlib
from typing import Any, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils import libzstd
from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidNar, UnsupportedCompression)

try:
    import zstandard as _zstandard
except ImportError:
    _zstandard = None

try:
    from compression import zstd as _stdlib_zstd    # Python 3.14+
except ImportError:
    _stdlib_zstd = None

try:
    import brotli as _brotli
except ImportError:
    try:
        import brotlicffi as _brotli
    except ImportError:
        _brotli = None

READ_SIZE = 1 << 18          # compressed bytes asked of ``raw`` at a time
DEFAULT_OUTPUT = 1 << 18     # what ``read()`` without a size returns at most
BROTLI_INPUT = 1 << 14       # brotli input per call (older releases cannot bound output)
ZSTD_PROGRAM = 'zstd'
ZSTD_LIBRARIES = libzstd.LIBRARY_NAMES
_THREAD_JOIN_TIMEOUT = 10

METHODS = ('none', 'xz', 'bzip2', 'gzip', 'zstd', 'br')


def _corrupt(method, detail):
    return InvalidNar('corrupt %s stream: %s' % (method, detail))


class _Passthrough(object):
    """The 'none' method: reads go straight to ``raw``."""

    def __init__(self, raw):
        self._raw = raw

    def read(self, size=-1):
        if self._raw is None:
            return b''
        return self._raw.read(DEFAULT_OUTPUT if size is None or size < 0 else size)

    def close(self):
        self._raw = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _IncrementalReader(object):
    """Drives a decompressor with the ``lzma`` interface: ``decompress(data, max_length)``,
    ``needs_input``, ``eof``, ``unused_data``.  Concatenated streams are read in turn,
    as the command line tools do."""

    def __init__(self, method, raw, factory, errors):
        self._method = method
        self._raw = raw
        self._factory = factory
        self._errors = errors
        self._decompressor = factory()
        self._done = False

    def read(self, size=-1):
        if size is None or size < 0:
            size = DEFAULT_OUTPUT
        if self._done or size == 0:
            return b''
        while True:
            decompressor = self._decompressor
            if decompressor.eof:
                leftover = decompressor.unused_data
                if not leftover:
                    leftover = self._raw.read(READ_SIZE)
                    if not leftover:
                        self._done = True
                        return b''
                self._decompressor = decompressor = self._factory()
                data = leftover
            elif decompressor.needs_input:
                data = self._raw.read(READ_SIZE)
                if not data:
                    # a decoder may still hold output for input it has taken in
                    output = self._decompress(decompressor, b'', size)
                    if output:
                        return output
                    if decompressor.eof:
                        continue
                    raise _corrupt(self._method, 'truncated: the compressed data ends early')
            else:
                data = b''
            output = self._decompress(decompressor, data, size)
            if output:
                return output

    def _decompress(self, decompressor, data, size):
        try:
            return decompressor.decompress(data, size)
        except self._errors as error:
            raise _corrupt(self._method, error) from error

    def close(self):
        self._done = True
        self._decompressor = None
        self._raw = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _GzipDecompressor(object):
    """zlib's gzip decoder behind the ``lzma`` interface."""

    def __init__(self):
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b''      # input zlib held back because of max_length

    @property
    def eof(self):
        return self._zlib.eof

    @property
    def needs_input(self):
        return not self._pending and not self._zlib.eof

    @property
    def unused_data(self):
        return self._zlib.unused_data

    def decompress(self, data, max_length):
        data = self._pending + data if self._pending else data
        output = self._zlib.decompress(data, max_length)
        self._pending = self._zlib.unconsumed_tail
        return output


class _ZstdFrames(object):
    """Follows the frame and block headers of a zstd stream to tell whether it ended
    where a frame ends (``zstandard``'s stream reader is silent about truncation)."""

    _MAGIC = b'\x28\xb5\x2f\xfd'
    _DICTIONARY_ID_SIZES = (0, 1, 2, 4)
    _CONTENT_SIZE_SIZES = (0, 2, 4, 8)

    def __init__(self):
        self.frames = 0
        self._state = 'magic'
        self._wanted = 4         # header bytes the state needs
        self._header = b''
        self._skip = 0           # block (or skippable frame) bytes to pass over
        self._checksum = False

    @property
    def complete(self):
        return (self.frames > 0 and self._state == 'magic' and not self._header
                and not self._skip)

    def feed(self, data):
        position, end = 0, len(data)
        while position < end:
            if self._skip:
                taken = min(self._skip, end - position)
                self._skip -= taken
                position += taken
                continue
            taken = min(self._wanted - len(self._header), end - position)
            self._header += data[position:position + taken]
            position += taken
            if len(self._header) == self._wanted:
                header, self._header = self._header, b''
                self._advance(header)

    def _advance(self, header):
        state = self._state
        if state == 'magic':
            if header == self._MAGIC:
                self._state, self._wanted = 'descriptor', 1
            elif header[1:] == b'\x2a\x4d\x18' and header[0] & 0xf0 == 0x50:
                self._state, self._wanted = 'skippable', 4
            else:
                self._state = 'unknown'    # the decoder reports it
                self._wanted = 1 << 62
        elif state == 'descriptor':
            descriptor = header[0]
            single_segment = descriptor & 0x20
            content_size = self._CONTENT_SIZE_SIZES[descriptor >> 6]
            if single_segment and not content_size:
                content_size = 1
            self._checksum = bool(descriptor & 0x04)
            rest = ((0 if single_segment else 1) + content_size
                    + self._DICTIONARY_ID_SIZES[descriptor & 0x03])
            if rest:
                self._state, self._wanted = 'frame header', rest
            else:
                self._state, self._wanted = 'block', 3
        elif state == 'frame header':
            self._state, self._wanted = 'block', 3
        elif state == 'block':
            value = header[0] | header[1] << 8 | header[2] << 16
            block_type = (value >> 1) & 3
            self._skip = 1 if block_type == 1 else value >> 3
            if value & 1:
                if self._checksum:
                    self._state, self._wanted = 'checksum', 4
                else:
                    self._end_frame()
        elif state == 'checksum':
            self._end_frame()
        elif state == 'skippable':
            self._skip = header[0] | header[1] << 8 | header[2] << 16 | header[3] << 24
            self._end_frame()

    def _end_frame(self):
        self.frames += 1
        self._state, self._wanted = 'magic', 4


class _TrackedSource(object):
    """Passes reads through to ``raw`` while ``_ZstdFrames`` follows them."""

    def __init__(self, raw, frames):
        self._raw = raw
        self._frames = frames

    def read(self, size=-1):
        data = self._raw.read(size)
        if data:
            self._frames.feed(data)
        return data


class _ZstandardReader(object):
    """zstd through the ``zstandard`` package (bounded output per read)."""

    def __init__(self, raw):
        self._frames = _ZstdFrames()
        decompressor = _zstandard.ZstdDecompressor()
        self._reader = decompressor.stream_reader(
            _TrackedSource(raw, self._frames), read_size=READ_SIZE,
            read_across_frames=True, closefd=False)

    def read(self, size=-1):
        if size is None or size < 0:
            size = DEFAULT_OUTPUT
        if self._reader is None or size == 0:
            return b''
        try:
            data = self._reader.read(size)
        except _zstandard.ZstdError as error:
            raise _corrupt('zstd', error) from error
        if not data:
            self.close()
            if not self._frames.complete:
                raise _corrupt('zstd', 'truncated: the compressed data ends early')
        return data

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _FeedState(object):
    """What the feeder thread shares with its reader (not the reader itself, so that a
    dropped reader is collected and stops the thread)."""

    def __init__(self):
        self.closing = False
        self.error = None


def _feed(raw, stdin, state):
    """Copy ``raw`` to the zstd program until it ends, fails or the reader closes."""
    try:
        while not state.closing:
            data = raw.read(READ_SIZE)
            if not data or state.closing:
                break
            stdin.write(data)
    except (BrokenPipeError, ValueError):
        pass                     # zstd exited or the reader closed: read() says why
    except Exception as error:   # the source failed: read() raises it
        state.error = error
    finally:
        try:
            stdin.close()
        except (OSError, ValueError):
            pass


class _ZstdProgramReader(object):
    """zstd through the ``zstd`` program; a thread copies ``raw`` to its input."""

    def __init__(self, raw, program):
        self._process = None
        self._finished = False
        self._state = _FeedState()
        self._process = subprocess.Popen(
            [program, '-d', '-c', '-q'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, close_fds=True)
        self._feeder = threading.Thread(target=_feed, name='zstd-feeder',
                                        args=(raw, self._process.stdin, self._state))
        self._feeder.daemon = True
        self._feeder.start()

    def read(self, size=-1):
        if size is None or size < 0:
            size = DEFAULT_OUTPUT
        if self._finished or size == 0:
            return b''
        data = self._process.stdout.read1(size)
        if data:
            return data
        self._finished = True
        self._process.wait()
        self._feeder.join(_THREAD_JOIN_TIMEOUT)
        if self._state.error is not None:
            raise self._state.error
        if self._process.returncode != 0:
            detail = self._process.stderr.read().decode('utf-8', 'replace').strip()
            raise _corrupt('zstd', detail or 'zstd exited with status %d'
                           % self._process.returncode)
        return b''

    def close(self):
        if self._process is None:
            return
        self._state.closing = True
        process, self._process = self._process, None
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        self._feeder.join(_THREAD_JOIN_TIMEOUT)
        process.wait()
        process.stderr.close()
        self._finished = True

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _BrotliDecompressor(object):
    """The ``brotli`` package behind the ``lzma`` interface.  Newer releases bound the
    output of one call; older ones get their input in small pieces."""

    def __init__(self):
        self._brotli = _brotli.Decompressor()
        self._bounded = hasattr(self._brotli, 'can_accept_more_data')
        self._pending = b''      # input not yet given to the decoder
        self._output = b''       # output not yet returned

    def _idle(self):
        return (not self._output and not self._pending
                and (not self._bounded or self._brotli.can_accept_more_data()))

    @property
    def eof(self):
        return self._idle() and self._brotli.is_finished()

    @property
    def needs_input(self):
        return self._idle() and not self._brotli.is_finished()

    @property
    def unused_data(self):
        return b''

    def decompress(self, data, max_length):
        if data:
            self._pending += data
        if not self._output:
            self._output = self._next_output(max_length)
        output, self._output = self._output[:max_length], self._output[max_length:]
        return output

    def _next_output(self, max_length):
        decoder = self._brotli
        if self._pending and (not self._bounded or decoder.can_accept_more_data()):
            if decoder.is_finished():
                raise ValueError('data after the end of the stream')
            piece, self._pending = self._pending[:BROTLI_INPUT], self._pending[BROTLI_INPUT:]
        else:
            piece = b''          # drain what the decoder holds
        if self._bounded:
            return decoder.process(piece, output_buffer_limit=max_length)
        return decoder.process(piece) if piece else b''


def _zstd_program():
    return shutil.which(ZSTD_PROGRAM)


def _zstd_library():
    return libzstd.load(ZSTD_LIBRARIES) if ZSTD_LIBRARIES else None


def available_methods() -> List[str]:
    """The compression methods this host can decompress, in the order of ``METHODS``."""
    methods = ['none', 'xz', 'bzip2', 'gzip']
    if _zstandard is not None or _stdlib_zstd is not None or _zstd_library() or _zstd_program():
        methods.append('zstd')
    if _brotli is not None:
        methods.append('br')
    return methods


def open_decompressed(method: Optional[str], raw: Any) -> Any:
    """A reader with ``read(n)`` and ``close()`` that decompresses ``raw`` as it goes."""
    if method in ('none', '', None):
        return _Passthrough(raw)
    if method == 'xz':
        return _IncrementalReader(method, raw, lzma.LZMADecompressor, (lzma.LZMAError, EOFError))
    if method == 'bzip2':
        return _IncrementalReader(method, raw, bz2.BZ2Decompressor, (OSError, ValueError, EOFError))
    if method == 'gzip':
        return _IncrementalReader(method, raw, _GzipDecompressor, (zlib.error, EOFError))
    if method == 'zstd':
        if _zstandard is not None:
            return _ZstandardReader(raw)
        if _stdlib_zstd is not None:
            return _IncrementalReader(method, raw, _stdlib_zstd.ZstdDecompressor,
                                      (_stdlib_zstd.ZstdError, EOFError))
        library = _zstd_library()
        if library is not None:
            return _IncrementalReader(method, raw, lambda: libzstd.Decompressor(library),
                                      (libzstd.ZstdError, EOFError))
        program = _zstd_program()
        if program:
            return _ZstdProgramReader(raw, program)
        raise UnsupportedCompression(
            'cannot decompress zstd: install the zstd library of the distribution (Debian\'s '
            'and Ubuntu\'s libzstd1), its zstd program (the zstd package) or the zstandard '
            'package for the Python that runs the module ("pip install zstandard")',
            expected='zstd')
    if method == 'br':
        if _brotli is not None:
            return _IncrementalReader(method, raw, _BrotliDecompressor,
                                      (getattr(_brotli, 'error', Exception), ValueError))
        raise UnsupportedCompression(
            'cannot decompress br: install the brotli package for the Python that runs the '
            'module ("pip install brotli")', expected='br')
    raise UnsupportedCompression(
        'unknown compression method %r; supported: %s'
        % (method, ', '.join(METHODS)), found=method)
