"""ReadAhead: a stream read in a helper thread, a bounded number of chunks ahead."""
import io
import os
import threading
import time

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidNar
from ansible_collections.nixcache.closure.plugins.module_utils.readahead import ReadAhead


class Counted(object):
    """A stream that counts its reads, optionally failing at one of them."""

    def __init__(self, data, fail_at=None):
        self._data = io.BytesIO(data)
        self.reads = 0
        self.fail_at = fail_at
        self.thread = None

    def read(self, size):
        self.reads += 1
        self.thread = threading.current_thread()
        if self.fail_at is not None and self.reads == self.fail_at:
            raise InvalidNar('corrupt zstd stream: test')
        return self._data.read(size)


def read_all(stream, size):
    parts = []
    while True:
        data = stream.read(size)
        if not data:
            return b''.join(parts)
        assert isinstance(data, bytes) and len(data) <= size
        parts.append(data)


@pytest.mark.parametrize('size', [1000, 4096, 1 << 16, 1 << 20])
def test_every_byte_in_order_whatever_the_read_size(size):
    data = os.urandom(300000)
    source = Counted(data)
    with ReadAhead(source, chunk=4096, depth=3) as ahead:
        assert ahead.read(0) == b''
        assert read_all(ahead, size) == data
        assert ahead.read(10) == b''
    assert source.thread is not threading.current_thread()


def test_an_error_of_the_stream_is_raised_by_the_read_that_reaches_it():
    source = Counted(b'x' * 40000, fail_at=3)
    with ReadAhead(source, chunk=4096, depth=8) as ahead:
        assert ahead.read(4096) == b'x' * 4096
        assert ahead.read(4096) == b'x' * 4096
        with pytest.raises(InvalidNar, match='corrupt zstd stream'):
            ahead.read(4096)
        assert ahead.read(4096) == b''


def test_the_helper_stays_a_few_chunks_ahead_and_stops_at_close():
    source = Counted(b'y' * (1 << 20))
    ahead = ReadAhead(source, chunk=1024, depth=2)
    assert ahead.read(1024) == b'y' * 1024
    time.sleep(0.3)
    # the chunk read, 2 waiting in the queue, one in the helper's hands
    assert source.reads <= 4
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 2
    reads = source.reads
    time.sleep(0.2)
    assert source.reads == reads
    assert ahead.read(1024) == b''
