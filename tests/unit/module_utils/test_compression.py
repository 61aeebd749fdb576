# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decompressing readers, judged against the real tools and caches written by real Nix."""

import glob
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import compression, nar
from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidNar, UnsupportedCompression)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COLLECTIONS = os.path.join(REPO, 'build', 'collections')

TOOLS = {
    'xz': ['xz', '-c', '-T1'],
    'bzip2': ['bzip2', '-c'],
    'gzip': ['gzip', '-c'],
    'zstd': ['zstd', '-q', '-c'],
}

try:
    import brotli
except ImportError:
    brotli = None


def needs(program):
    return pytest.mark.skipif(shutil.which(program) is None, reason='needs %s' % program)


def compress(method, data, extra=()):
    """Compress with the real command line tool (brotli with its Python package)."""
    if method == 'br':
        if brotli is None:
            pytest.skip('needs the brotli package')
        return brotli.compress(data)
    if shutil.which(TOOLS[method][0]) is None:
        pytest.skip('needs the %s program' % TOOLS[method][0])
    return subprocess.run(TOOLS[method] + list(extra), input=data, stdout=subprocess.PIPE,
                          check=True).stdout


def read_all(reader, size=1 << 20):
    chunks = []
    while True:
        chunk = reader.read(size)
        if not chunk:
            return b''.join(chunks)
        assert len(chunk) <= size
        chunks.append(chunk)


class Trickle(object):
    """A raw stream that returns fewer bytes than asked, at random."""

    def __init__(self, data, seed=0, largest=4096):
        self.data = io.BytesIO(data)
        self.random = random.Random(seed)
        self.largest = largest

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.largest
        return self.data.read(min(size, self.random.randint(1, self.largest)))


@pytest.fixture(scope='module')
def payload(tmp_path_factory):
    """A NAR of a few MiB that mixes text, random and repetitive data."""
    root = tmp_path_factory.mktemp('payload') / 'tree'
    root.mkdir()
    generator = random.Random(7)
    (root / 'random').write_bytes(bytes(generator.getrandbits(8) for _byte in range(300000)))
    (root / 'zeros').write_bytes(b'\0' * (2 << 20))
    (root / 'text').write_text('\n'.join('line %d of some text' % n for n in range(50000)))
    (root / 'link').symlink_to('text')
    chunks = []
    nar.dump(root, chunks.append)
    return b''.join(chunks)


def without_zstd_packages(monkeypatch, library=True):
    """No zstandard package, no compression.zstd, and with ``library=False`` no libzstd:
    what is left is the next zstd backend in line."""
    monkeypatch.setattr(compression, '_zstandard', None)
    monkeypatch.setattr(compression, '_stdlib_zstd', None)
    if not library:
        monkeypatch.setattr(compression, 'ZSTD_LIBRARIES', ())


def select_method(name, monkeypatch):
    """Turn a test case name into a method, forcing the zstd backend it names."""
    if name == 'zstd-program':
        if shutil.which('zstd') is None:
            pytest.skip('needs the zstd program')
        without_zstd_packages(monkeypatch, library=False)
        return 'zstd'
    if name == 'zstd-library':    # always there where apt is: never skipped
        without_zstd_packages(monkeypatch)
        return 'zstd'
    if name == 'zstd-bundled':
        if compression._zstandard is None and compression._stdlib_zstd is None:
            pytest.skip('needs the zstandard package')
        return 'zstd'
    if name == 'br' and brotli is None:
        pytest.skip('needs the brotli package')
    return name


COMPRESSED_CASES = ['xz', 'bzip2', 'gzip', 'br', 'zstd-bundled', 'zstd-library', 'zstd-program']


@pytest.fixture(params=COMPRESSED_CASES)
def method(request, monkeypatch):
    return select_method(request.param, monkeypatch)


# --- round trips ----------------------------------------------------------------------

def test_decompresses_what_the_real_tool_wrote(method, payload):
    compressed = compress(method, payload)
    with compression.open_decompressed(method, io.BytesIO(compressed)) as reader:
        assert read_all(reader) == payload


@pytest.mark.parametrize('seed', [1, 2])
def test_short_reads_from_raw_and_small_reads_from_the_reader(method, payload, seed):
    compressed = compress(method, payload)
    reader = compression.open_decompressed(method, Trickle(compressed, seed))
    try:
        assert read_all(reader, size=random.Random(seed).randint(1, 5000)) == payload
    finally:
        reader.close()


def test_concatenated_streams_are_read_in_turn(method, payload):
    if method == 'br':
        pytest.skip('brotli has no concatenated streams')
    compressed = compress(method, payload[:12345]) + compress(method, payload[12345:])
    reader = compression.open_decompressed(method, io.BytesIO(compressed))
    assert read_all(reader) == payload
    reader.close()


@pytest.mark.parametrize('method_name', ['none', ''])
def test_none_passes_data_through(method_name, payload):
    reader = compression.open_decompressed(method_name, Trickle(payload))
    assert read_all(reader) == payload
    reader.close()
    assert reader.read(10) == b''


def test_reading_after_the_end_and_after_close_gives_nothing(method, payload):
    reader = compression.open_decompressed(method, io.BytesIO(compress(method, b'abc')))
    assert read_all(reader) == b'abc'
    assert reader.read(10) == b''
    reader.close()
    reader.close()
    assert reader.read(10) == b''


# --- corrupt input --------------------------------------------------------------------

def test_corrupt_data_is_invalid_nar(method, payload):
    compressed = bytearray(compress(method, payload))
    middle = len(compressed) // 2
    compressed[middle:middle + 16] = bytes(byte ^ 0x5a for byte in compressed[middle:middle + 16])
    reader = compression.open_decompressed(method, io.BytesIO(bytes(compressed)))
    try:
        output = read_all(reader)
    except InvalidNar as error:
        assert error.message.startswith('corrupt %s stream: ' % method)
    else:
        # brotli has no checksum: garbled data can decode; the NarHash check catches it
        assert method == 'br' and output != payload
    finally:
        reader.close()


@pytest.mark.parametrize('keep', [0.0, 0.3, 0.99])
def test_truncated_data_is_invalid_nar(method, payload, keep):
    compressed = compress(method, payload)
    cut = compressed[:int(len(compressed) * keep)]
    reader = compression.open_decompressed(method, io.BytesIO(cut))
    with pytest.raises(InvalidNar, match='^corrupt %s stream: ' % method):
        read_all(reader)
    reader.close()


def test_every_truncation_of_a_small_stream_is_noticed(method):
    data = b'small but not tiny ' * 40 + os.urandom(100)
    compressed = compress(method, data)
    for cut in range(len(compressed)):
        reader = compression.open_decompressed(method, io.BytesIO(compressed[:cut]))
        with pytest.raises(InvalidNar, match='^corrupt %s stream: ' % method):
            read_all(reader)
        reader.close()


def test_trailing_garbage_is_invalid_nar(method, payload):
    compressed = compress(method, payload) + b'garbage after the end of the stream'
    reader = compression.open_decompressed(method, io.BytesIO(compressed))
    with pytest.raises(InvalidNar, match='^corrupt %s stream: ' % method):
        read_all(reader)
    reader.close()


def test_errors_of_raw_pass_through(method, payload):
    compressed = compress(method, payload)

    class Failing(object):
        def __init__(self):
            self.data = io.BytesIO(compressed[:len(compressed) // 2])

        def read(self, size=-1):
            data = self.data.read(min(size, 1000))
            if not data:
                raise ConnectionResetError('peer went away')
            return data

    reader = compression.open_decompressed(method, Failing())
    with pytest.raises(ConnectionResetError):
        read_all(reader)
    reader.close()


# --- bounded memory -------------------------------------------------------------------

def test_memory_stays_bounded_on_highly_compressible_data(method):
    size = 96 << 20
    if method == 'br':
        compressed = brotli.compress(b'\0' * size, quality=1)
    else:
        compressed = subprocess.run(TOOLS[method] + ['-1'], input=b'\0' * size,
                                    stdout=subprocess.PIPE, check=True).stdout
    tracemalloc.start()
    try:
        reader = compression.open_decompressed(method, io.BytesIO(compressed))
        total = 0
        while True:
            chunk = reader.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        reader.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < (16 << 20) + len(compressed)


# --- caches written by real Nix -------------------------------------------------------

@pytest.fixture(scope='module')
def nix_store_path(tmp_path_factory):
    work = tmp_path_factory.mktemp('nixcache')
    expression = work / 'payload.nix'
    expression.write_text(textwrap.dedent('''
        builtins.derivation {
          name = "compression-test";
          system = builtins.currentSystem;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = [ "-c" "mkdir -p $out/bin $out/share; seq 1 200000 > $out/share/numbers;
                         head -c 500000 /dev/urandom > $out/share/random;
                         cp /bin/sh $out/bin/sh; ln -s sh $out/bin/dash" ];
        }
    '''))
    return subprocess.run(['nix-build', '--no-out-link', str(expression)], check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode().strip()


def nix_cache(tmp_path_factory, path, method):
    cache = tmp_path_factory.mktemp('cache-' + method)
    environment = dict(os.environ, NIX_CONFIG='experimental-features = nix-command')
    subprocess.run(['nix', 'copy', '--to', 'file://%s?compression=%s' % (cache, method), path],
                   check=True, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    narinfo = glob.glob(str(cache / '*.narinfo'))[0]
    fields = dict(line.split(': ', 1) for line in open(narinfo).read().splitlines() if line)
    return cache, fields


@pytest.mark.nix
@pytest.mark.parametrize('case', COMPRESSED_CASES + ['none'])
def test_nars_in_a_cache_written_by_nix(tmp_path_factory, tmp_path, nix_store_path, case,
                                        monkeypatch):
    nix_method = select_method(case, monkeypatch)
    cache, fields = nix_cache(tmp_path_factory, nix_store_path, nix_method)
    assert fields['Compression'] == nix_method
    expected = subprocess.run(['nix-store', '--dump', nix_store_path], check=True,
                              stdout=subprocess.PIPE).stdout
    with open(cache / fields['URL'], 'rb') as raw:
        reader = compression.open_decompressed(fields['Compression'], raw)
        try:
            assert read_all(reader) == expected
        finally:
            reader.close()
    # decompress and unpack in one stream; real nix-hash must agree with the NarHash
    dest = tmp_path / 'out'
    with open(cache / fields['URL'], 'rb') as raw:
        reader = compression.open_decompressed(fields['Compression'], raw)
        try:
            nar.unpack(reader, dest, max_size=int(fields['NarSize']))
        finally:
            reader.close()
    nix_hash = subprocess.run(['nix-hash', '--type', 'sha256', '--base32', str(dest)],
                              check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    assert fields['NarHash'] == 'sha256:' + nix_hash


# --- the zstd program -----------------------------------------------------------------

@needs('zstd')
def test_zstd_program_is_used_without_the_package(monkeypatch):
    without_zstd_packages(monkeypatch, library=False)
    reader = compression.open_decompressed('zstd', io.BytesIO(compress('zstd', b'hi')))
    assert isinstance(reader, compression._ZstdProgramReader)
    assert read_all(reader) == b'hi'
    reader.close()
    assert 'zstd' in compression.available_methods()


def endless_zstd_frames():
    """A raw stream of zstd frames that never ends (frames may be concatenated)."""
    frame = compress('zstd', os.urandom(1 << 16) * 4)

    class Endless(object):
        reads = 0

        def read(self, size=-1):
            self.reads += 1
            return frame

    return Endless()


def assert_cleaned_up(process, feeder):
    assert process.returncode is not None      # reaped: no zombie
    feeder.join(5)
    assert not feeder.is_alive()


@needs('zstd')
def test_zstd_program_stops_when_the_consumer_stops_early(monkeypatch):
    without_zstd_packages(monkeypatch, library=False)
    threads_before = threading.active_count()
    reader = compression.open_decompressed('zstd', endless_zstd_frames())
    assert len(reader.read(1 << 16)) > 0
    process, feeder = reader._process, reader._feeder
    started = time.monotonic()
    reader.close()
    assert time.monotonic() - started < 5
    assert_cleaned_up(process, feeder)
    assert threading.active_count() == threads_before


@needs('zstd')
def test_zstd_program_cleans_up_after_corrupt_input(monkeypatch):
    without_zstd_packages(monkeypatch, library=False)
    reader = compression.open_decompressed('zstd', io.BytesIO(b'not zstd at all' * 1000))
    process, feeder = reader._process, reader._feeder
    with pytest.raises(InvalidNar, match='^corrupt zstd stream: '):
        read_all(reader)
    assert_cleaned_up(process, feeder)
    reader.close()


@needs('zstd')
def test_zstd_program_is_stopped_when_the_reader_is_dropped(monkeypatch):
    without_zstd_packages(monkeypatch, library=False)
    reader = compression.open_decompressed('zstd', endless_zstd_frames())
    reader.read(100)
    process, feeder = reader._process, reader._feeder
    del reader
    assert_cleaned_up(process, feeder)


def test_bare_python_decompresses_zstd_with_the_system_library(tmp_path, payload):
    """The host's own Python with its standard library only (``-S``: no site packages,
    so no zstandard whatever the machine has installed), as on a fresh machine: the
    system's libzstd, in process."""
    python = '/usr/bin/python3'
    if not os.path.exists(python):
        pytest.skip('needs /usr/bin/python3')
    compressed = tmp_path / 'payload.zst'
    compressed.write_bytes(compress('zstd', payload))
    program = textwrap.dedent('''
        import hashlib, sys
        sys.path.insert(0, %r)
        from ansible_collections.nixcache.closure.plugins.module_utils import compression
        reader = compression.open_decompressed('zstd', open(%r, 'rb'))
        kind = type(reader._decompressor).__module__.rsplit('.', 1)[-1]
        digest = hashlib.sha256()
        while True:
            chunk = reader.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
        reader.close()
        print(kind, digest.hexdigest(), compression.available_methods())
    ''' % (COLLECTIONS, str(compressed)))
    output = subprocess.run([python, '-S', '-c', program], check=True, stdout=subprocess.PIPE)
    name, digest, methods = output.stdout.decode().split(' ', 2)
    assert name == 'libzstd'
    assert digest == hashlib.sha256(payload).hexdigest()
    assert "'zstd'" in methods


# --- what is missing ------------------------------------------------------------------

def test_zstd_without_package_library_or_program_says_what_to_install(monkeypatch):
    without_zstd_packages(monkeypatch, library=False)
    monkeypatch.setattr(compression, 'ZSTD_PROGRAM', 'no-such-zstd-program')
    with pytest.raises(UnsupportedCompression) as raised:
        compression.open_decompressed('zstd', io.BytesIO(b''))
    assert 'pip install zstandard' in raised.value.message
    assert 'libzstd1' in raised.value.message and 'zstd package' in raised.value.message
    assert 'zstd' not in compression.available_methods()


def test_br_without_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(compression, '_brotli', None)
    with pytest.raises(UnsupportedCompression, match='pip install brotli'):
        compression.open_decompressed('br', io.BytesIO(b''))
    assert 'br' not in compression.available_methods()


def test_unknown_method_names_it_and_the_supported_ones():
    with pytest.raises(UnsupportedCompression) as raised:
        compression.open_decompressed('lzip', io.BytesIO(b''))
    message = raised.value.message
    assert "'lzip'" in message
    for supported in ('xz', 'bzip2', 'gzip', 'zstd', 'br', 'none'):
        assert supported in message


def test_brotli_without_an_output_bound(monkeypatch, payload):
    """Older brotli releases have no output_buffer_limit: input goes in small pieces."""
    if brotli is None:
        pytest.skip('needs the brotli package')

    class OldDecompressor(object):
        def __init__(self):
            self._decoder = brotli.Decompressor()

        def process(self, data):
            return self._decoder.process(data)

        def is_finished(self):
            return self._decoder.is_finished()

    class OldBrotli(object):
        Decompressor = OldDecompressor
        error = brotli.error

    monkeypatch.setattr(compression, '_brotli', OldBrotli)
    compressed = brotli.compress(payload)
    reader = compression.open_decompressed('br', Trickle(compressed))
    assert read_all(reader, 3000) == payload
    reader = compression.open_decompressed('br', io.BytesIO(compressed[:-3]))
    with pytest.raises(InvalidNar, match='^corrupt br stream: '):
        read_all(reader)


def test_available_methods_always_has_the_standard_library_ones():
    methods = compression.available_methods()
    assert methods[:4] == ['none', 'xz', 'bzip2', 'gzip']
    if compression._zstandard is not None or shutil.which('zstd'):
        assert 'zstd' in methods
    assert ('br' in methods) == (compression._brotli is not None)


def test_decompressors_run_in_parallel_threads(payload):
    compressed = compress('xz', payload * 4)
    results = []

    def work():
        reader = compression.open_decompressed('xz', io.BytesIO(compressed))
        results.append(read_all(reader) == payload * 4)
        reader.close()

    threads = [threading.Thread(target=work) for _thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4


if __name__ == '__main__':
    sys.exit(pytest.main([__file__]))
