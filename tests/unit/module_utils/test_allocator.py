"""The C allocator set up for streaming (``allocator.py``): buffers of a few hundred KiB,
freed a moment after they were made, come back from the heap instead of as fresh pages."""
import os
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import allocator

COLLECTIONS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(allocator.__file__)))))))

# What a NAR's bytes go through, in the sizes they have: a socket read, a decompressed
# chunk made from it, the tail the unpacker holds over to the next chunk.
STREAM = textwrap.dedent('''
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from ansible_collections.nixcache.closure.plugins.module_utils import allocator
    if sys.argv[2] == 'tuned':
        assert allocator.reuse_freed_buffers()
        assert allocator.reuse_freed_buffers()   # once a process: the second call is free
    kept = b''
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(400):                          # 100 MiB through 256 KiB buffers
        data = b'x' * (256 << 10)
        out = data[i % 7:] + kept[:i % 5]
        kept = out[-(100 << 10):]
        del data, out
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
''')


def page_faults(mode):
    output = subprocess.check_output([sys.executable, '-c', STREAM, COLLECTIONS, mode])
    return int(output)


@pytest.mark.skipif(not os.path.exists('/proc/self/maps') or not hasattr(os, 'confstr')
                    or 'glibc' not in (os.confstr('CS_GNU_LIBC_VERSION') or ''),
                    reason='the thresholds are glibc mallopt settings')
def test_streamed_buffers_reuse_the_heap_instead_of_faulting_in_new_pages():
    default, tuned = page_faults('default'), page_faults('tuned')
    # the defaults fault in about one page for each 4 KiB streamed (25,600 for 100 MiB)
    assert default > 10000, 'the stream does not show the defaults\' cost: %d faults' % default
    assert tuned < default // 10, (default, tuned)


def test_a_c_library_without_mallopt_keeps_its_defaults(monkeypatch):
    class NoMallopt(object):
        def __init__(self, name):
            pass
    monkeypatch.setattr(allocator.ctypes, 'CDLL', NoMallopt)
    assert allocator._set_thresholds() is False
