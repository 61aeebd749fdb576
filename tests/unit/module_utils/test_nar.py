# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NAR writing, hashing and safe unpacking, judged against real Nix."""

import hashlib
import io
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils import nar
from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidNar, StoreError)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# Tests marked ``nix`` compare with real Nix and are skipped where it is missing; the rest
# (unpacking, safety, hand-built NARs) need nothing but Python.


# --- real Nix -------------------------------------------------------------------------

def nix_dump(path):
    return subprocess.run(['nix-store', '--dump', os.fsencode(path)], check=True,
                          stdout=subprocess.PIPE).stdout


def nix_hash_base16(path):
    """``nix-hash --type sha256 --base32 PATH``, converted to hex by nix-hash itself."""
    base32 = subprocess.run(['nix-hash', '--type', 'sha256', '--base32', os.fsencode(path)],
                            check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    return subprocess.run(['nix-hash', '--type', 'sha256', '--to-base16', base32], check=True,
                          stdout=subprocess.PIPE).stdout.decode().strip()


BUILD_SCRIPT = textwrap.dedent(r'''
    set -e
    mkdir -p $out/bin $out/share/empty $out/lib/a/b/c
    printf '#!/bin/sh\necho hello\n' > $out/bin/hello
    chmod 0755 $out/bin/hello
    : > $out/empty-file
    : > $out/bin/empty-executable
    chmod 0755 $out/bin/empty-executable
    ln -s hello $out/bin/hi
    ln -s ../../bin/hello $out/lib/a/relative
    ln -s /nix/store/00000000000000000000000000000000-missing $out/dangling
    ln -s /bin/sh $out/absolute
    head -c 100000 /dev/zero | tr '\0' 'x' > $out/lib/a/b/c/hundred-thousand
    printf 'seven77' > $out/lib/seven
    printf 'eight888' > $out/lib/eight
    printf 'odd' > "$out/share/name with spaces"
    printf 'caf' > "$out/share/caf$(printf '\303\251')"
    printf 'B' > $out/share/B
    printf 'dot' > $out/share/.hidden
''')


@pytest.fixture(scope='session')
def built_path(tmp_path_factory):
    """A store path built by real Nix from a shell script (sandbox off)."""
    work = tmp_path_factory.mktemp('build')
    script = work / 'build.sh'
    script.write_text(BUILD_SCRIPT)
    expression = work / 'tree.nix'
    expression.write_text(textwrap.dedent('''
        builtins.derivation {
          name = "nar-test-tree";
          system = builtins.currentSystem;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = [ "-c" (builtins.readFile %s) ];
        }
    ''' % script))
    result = subprocess.run(['nix-build', '--no-out-link', str(expression)], check=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return result.stdout.decode().strip()


def make_sample_tree(root):
    """Every kind of node, odd names and sizes on both sides of the 8-byte padding."""
    root = os.fsencode(root)
    os.mkdir(root)

    def write(relative, data, mode=0o644):
        path = os.path.join(root, relative)
        with open(path, 'wb') as handle:
            handle.write(data)
        os.chmod(path, mode)

    for directory in (b'dir', b'dir/nested', b'dir/nested/deeper', b'empty-dir'):
        os.mkdir(os.path.join(root, directory))
    write(b'regular', b'hello\n')
    write(b'executable', b'#!/bin/sh\necho hi\n', 0o755)
    write(b'owner-only-executable', b'x', 0o700)
    write(b'group-executable-only', b'x', 0o654)
    write(b'empty', b'')
    write(b'eight888', b'12345678')
    write(b'dir/nested/deeper/leaf', b'leaf' * 1000)
    for name in (b'\xff\xfe not utf-8', b'caf\xc3\xa9', b'new\nline', b'back\\slash', b'B',
                 b'a', b'a.b', b'a-b', b'ab', b'.hidden', b'~nix~case~hack~1', b'x' * 255):
        write(os.path.join(b'dir', name), name)
    os.symlink(b'/etc/hostname', os.path.join(root, b'absolute-link'))
    os.symlink(b'../regular', os.path.join(root, b'dir/relative-link'))
    os.symlink(b'does/not/exist', os.path.join(root, b'dangling-link'))
    os.symlink(b'dir', os.path.join(root, b'link-to-dir'))
    os.symlink(b'\xff odd target', os.path.join(root, b'odd-target'))
    return root


@pytest.fixture
def sample_tree(tmp_path):
    return make_sample_tree(tmp_path / 'sample')


def dump_bytes(path):
    chunks = []
    nar.dump(path, chunks.append)
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    return b''.join(chunks)


def unpack_bytes(data, dest, **options):
    nar.unpack(io.BytesIO(data), dest, **options)


# --- hand-built NARs ------------------------------------------------------------------

def string(value):
    value = value.encode() if isinstance(value, str) else value
    return struct.pack('<Q', len(value)) + value + b'\0' * (-len(value) % 8)


def encode(tokens):
    return b''.join(token if isinstance(token, Raw) else string(token) for token in tokens)


class Raw(bytes):
    """Bytes put into a hand-built NAR as they are, not as a string."""


def regular(data, executable=False):
    return (['(', 'type', 'regular'] + (['executable', ''] if executable else [])
            + ['contents', data, ')'])


def symlink(target):
    return ['(', 'type', 'symlink', 'target', target, ')']


def directory(*entries):
    tokens = ['(', 'type', 'directory']
    for name, node in entries:
        tokens += ['entry', '(', 'name', name, 'node'] + node + [')']
    return tokens + [')']


def archive(node):
    return encode(['nix-archive-1'] + node)


class Trickle(object):
    """A stream that returns fewer bytes than asked, at random."""

    def __init__(self, data, seed=0, largest=97):
        self.data = memoryview(data)
        self.pos = 0
        self.random = random.Random(seed)
        self.largest = largest

    def read(self, size):
        size = min(size, self.random.randint(1, self.largest))
        chunk = bytes(self.data[self.pos:self.pos + size])
        self.pos += len(chunk)
        return chunk


# --- dump and hash against real Nix ---------------------------------------------------

@pytest.mark.nix
def test_hand_built_nar_matches_nix(tmp_path):
    tree = tmp_path / 'tree'
    tree.mkdir()
    (tree / 'b').write_bytes(b'hi')
    (tree / 'a').symlink_to('b')
    expected = archive(directory(('a', symlink('b')), ('b', regular(b'hi'))))
    assert nix_dump(tree) == expected


@pytest.mark.nix
def test_dump_matches_nix_store_dump(sample_tree):
    assert dump_bytes(sample_tree) == nix_dump(sample_tree)


@pytest.mark.nix
def test_dump_matches_nix_for_a_built_store_path(built_path):
    assert dump_bytes(built_path) == nix_dump(built_path)


@pytest.mark.nix
@pytest.mark.parametrize('kind', ['file', 'executable', 'empty', 'symlink', 'empty-dir'])
def test_dump_matches_nix_for_a_single_node(tmp_path, kind):
    path = tmp_path / 'node'
    if kind == 'symlink':
        path.symlink_to('/nowhere')
    elif kind == 'empty-dir':
        path.mkdir()
    else:
        path.write_bytes(b'' if kind == 'empty' else b'contents')
        if kind == 'executable':
            path.chmod(0o755)
    assert dump_bytes(path) == nix_dump(path)


def test_dump_refuses_a_fifo(tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    with pytest.raises(StoreError, match='fifo'):
        dump_bytes(tmp_path)


@pytest.mark.nix
def test_nar_hash_agrees_with_nix_hash(sample_tree):
    digest, size = nar.nar_hash(sample_tree)
    assert digest.hex() == nix_hash_base16(sample_tree)
    assert size == len(nix_dump(sample_tree))


@pytest.mark.nix
def test_nar_hash_agrees_with_the_nix_database(built_path):
    digest, size = nar.nar_hash(built_path)
    stored = subprocess.run(['nix-store', '--query', '--hash', built_path], check=True,
                            stdout=subprocess.PIPE).stdout.decode().strip()
    assert stored == 'sha256:' + subprocess.run(
        ['nix-hash', '--type', 'sha256', '--to-base32', digest.hex()], check=True,
        stdout=subprocess.PIPE).stdout.decode().strip()
    stored_size = subprocess.run(['nix-store', '--query', '--size', built_path], check=True,
                                 stdout=subprocess.PIPE).stdout.decode().strip()
    assert size == int(stored_size)


# --- unpacking real NARs --------------------------------------------------------------

def assert_store_metadata(root):
    """Files 0444/0555, directories 0555, mtime 1 everywhere, as Nix leaves a store path."""
    for top, dirs, files in os.walk(root):
        for name in [''] + dirs + files:
            path = os.path.join(top, name) if name else top
            info = os.lstat(path)
            assert info.st_mtime == 1, path
            if stat.S_ISDIR(info.st_mode):
                assert stat.S_IMODE(info.st_mode) == 0o555, path
            elif stat.S_ISREG(info.st_mode):
                assert stat.S_IMODE(info.st_mode) in (0o444, 0o555), path


@pytest.mark.nix
def test_unpack_then_dump_gives_nix_bytes_back(sample_tree, tmp_path):
    original = nix_dump(sample_tree)
    dest = tmp_path / 'out'
    unpack_bytes(original, dest)
    assert nix_dump(dest) == original
    assert dump_bytes(dest) == original
    assert nix_hash_base16(dest) == nix_hash_base16(sample_tree)
    assert_store_metadata(dest)


@pytest.mark.nix
def test_unpack_of_a_built_store_path(built_path, tmp_path):
    original = nix_dump(built_path)
    dest = tmp_path / 'out'
    unpack_bytes(original, dest)
    assert nix_dump(dest) == original
    assert_store_metadata(dest)
    assert os.readlink(dest / 'dangling').endswith('-missing')
    assert subprocess.run([str(dest / 'bin' / 'hello')], stdout=subprocess.PIPE,
                          check=True).stdout == b'hello\n'


def test_unpack_modes_and_links(sample_tree, tmp_path):
    dest = tmp_path / 'out'
    unpack_bytes(dump_bytes(sample_tree), dest)

    def mode(name):
        return stat.S_IMODE(os.lstat(os.path.join(os.fsencode(dest), name)).st_mode)

    assert mode(b'regular') == 0o444
    assert mode(b'executable') == 0o555
    assert mode(b'owner-only-executable') == 0o555
    assert mode(b'group-executable-only') == 0o444
    assert mode(b'empty-dir') == 0o555
    assert (dest / 'empty').read_bytes() == b''
    assert os.listdir(dest / 'empty-dir') == []
    assert os.readlink(dest / 'absolute-link') == '/etc/hostname'
    assert os.readlink(dest / 'dir' / 'relative-link') == '../regular'
    assert os.readlink(dest / 'dangling-link') == 'does/not/exist'
    assert os.readlink(os.path.join(os.fsencode(dest), b'odd-target')) == b'\xff odd target'
    assert (dest / 'dir' / 'relative-link').read_bytes() == b'hello\n'
    for name in (b'\xff\xfe not utf-8', b'new\nline', b'x' * 255):
        with open(os.path.join(os.fsencode(dest), b'dir', name), 'rb') as handle:
            assert handle.read() == name


@pytest.mark.parametrize('kind', ['file', 'executable', 'symlink'])
def test_unpack_a_single_node(tmp_path, kind):
    node = {'file': regular(b'data'), 'executable': regular(b'#!', True),
            'symlink': symlink('/nix/store/x')}[kind]
    data = archive(node)
    dest = tmp_path / 'out'
    unpack_bytes(data, dest)
    assert dump_bytes(dest) == data
    assert os.lstat(dest).st_mtime == 1


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_unpack_from_a_stream_that_returns_short_reads(sample_tree, tmp_path, seed):
    original = dump_bytes(sample_tree)
    dest = tmp_path / 'out'
    nar.unpack(Trickle(original, seed), dest)
    assert dump_bytes(dest) == original


def test_unpack_reads_the_stream_to_its_end(tmp_path):
    class Recording(io.BytesIO):
        saw_end = False

        def read(self, size=-1):
            data = super(Recording, self).read(size)
            self.saw_end = self.saw_end or not data
            return data

    stream = Recording(archive(regular(b'x')))
    nar.unpack(stream, tmp_path / 'out')
    assert stream.saw_end


def test_deep_nesting_needs_no_recursion(tmp_path):
    depth = 1500                 # beyond Python's recursion limit
    node = regular(b'bottom')
    for _level in range(depth):
        node = directory(('d', node))
    data = archive(node)
    dest = tmp_path / 'out'
    unpack_bytes(data, dest)
    try:
        assert dump_bytes(dest) == data
    finally:
        nar.remove_tree(dest)    # pytest's own clean-up recurses


def test_paths_longer_than_path_max_are_refused(tmp_path):
    node = regular(b'bottom')
    for _level in range(20):
        node = directory(('n' * 250, node))
    dest = tmp_path / 'out'
    with pytest.raises(InvalidNar, match='path longer than'):
        unpack_bytes(archive(node), dest)
    assert_left_nothing(tmp_path, dest)


def test_remove_tree_handles_read_only_and_deep_trees(tmp_path):
    node = directory(('file', regular(b'x')), ('link', symlink('/')))
    for _level in range(1200):
        node = directory(('d', node), ('e', regular(b'y')))
    dest = tmp_path / 'out'
    unpack_bytes(archive(node), dest)
    nar.remove_tree(dest)
    assert_left_nothing(tmp_path, dest)
    nar.remove_tree(dest)        # already gone: nothing to do
    (tmp_path / 'file').write_text('x')
    nar.remove_tree(tmp_path / 'file')
    assert_left_nothing(tmp_path, dest)


def test_large_file_streams_in_flat_memory(tmp_path):
    size = 64 << 20
    source = tmp_path / 'source'
    source.mkdir()
    block = os.urandom(1 << 20)
    with open(source / 'big', 'wb') as handle:
        for index in range(size >> 20):
            handle.write(bytes([index]) + block[1:])
    (source / 'small').write_bytes(b'after the big one')
    nar_file = tmp_path / 'big.nar'
    with open(nar_file, 'wb') as handle:
        nar.dump(str(source), handle.write)
    dest = tmp_path / 'out'

    tracemalloc.start()
    try:
        with open(nar_file, 'rb') as stream:
            nar.unpack(stream, dest)
        unpack_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tracemalloc.start()
        digest, nar_size = nar.nar_hash(dest)
        hash_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert unpack_peak < 8 << 20
    assert hash_peak < 8 << 20
    assert nar_size == os.path.getsize(nar_file)
    with open(nar_file, 'rb') as handle:
        assert digest == hashlib.sha256(handle.read()).digest()


# --- unsafe and malformed input -------------------------------------------------------

GOOD = archive(directory(('a', regular(b'x')), ('b', directory(('c', regular(b'y'))))))

MALFORMED = {
    'bad magic': (encode(['nix-archive-2'] + regular(b'x')), 'magic'),
    'not a NAR at all': (b'this is not a nix archive, it is text\n', 'magic'),
    'empty stream': (b'', 'truncated'),
    'unknown token instead of type': (
        encode(['nix-archive-1', '(', 'kind', 'regular', 'contents', 'x', ')']), 'kind'),
    'unknown node type': (archive(['(', 'type', 'fifo', ')']), 'fifo'),
    'unknown field in a file': (archive(['(', 'type', 'regular', 'size', '1', ')']), 'size'),
    'executable marker with a value': (
        archive(['(', 'type', 'regular', 'executable', 'yes', 'contents', 'x', ')']), 'executable'),
    'file without contents': (archive(['(', 'type', 'regular', ')']), 'expected'),
    'two contents': (archive(['(', 'type', 'regular', 'contents', 'x', 'contents', 'y', ')']),
                     'contents'),
    'unknown token in a directory': (
        archive(['(', 'type', 'directory', 'entri', '(', ')', ')']), 'entri'),
    'entry without a name': (
        archive(['(', 'type', 'directory', 'entry', '(', 'node'] + regular(b'x') + [')', ')']),
        'expected "name", found \'node\''),
    'entry without an opening parenthesis': (
        archive(['(', 'type', 'directory', 'entry', 'name', 'a', 'node'] + regular(b'x') + [')']),
        'expected "\\(", found \'name\''),
    'node without a type': (
        archive(directory(('a', ['(', 'contents', 'x', ')']))), 'expected "type"'),
    'entry with two nodes': (
        archive(['(', 'type', 'directory', 'entry', '(', 'name', 'a', 'node'] + regular(b'x')
                + ['node'] + regular(b'y') + [')', ')']), 'closing an entry'),
    'symlink with an unknown field': (
        archive(['(', 'type', 'symlink', 'target', '/x', 'mode', '7', ')']), 'closing a symlink'),
    'empty name': (archive(directory(('', regular(b'x')))), 'forbidden entry name'),
    'dot name': (archive(directory(('.', regular(b'x')))), 'forbidden entry name'),
    'dot-dot name': (archive(directory(('..', directory(('etc', regular(b'x')))))),
                     'forbidden entry name'),
    'name with a slash': (archive(directory(('a/b', regular(b'x')))), 'forbidden entry name'),
    'name that is a slash': (archive(directory(('/', regular(b'x')))), 'forbidden entry name'),
    'name with a NUL': (archive(directory(('a\0b', regular(b'x')))), 'forbidden entry name'),
    'name too long': (archive(directory(('x' * 256, regular(b'x')))), 'limit'),
    'unsorted entries': (archive(directory(('b', regular(b'x')), ('a', regular(b'y')))),
                         'sorted'),
    'unsorted by bytes': (archive(directory(('a', regular(b'x')), ('B', regular(b'y')))),
                          'sorted'),
    'duplicate entries': (archive(directory(('a', regular(b'x')), ('a', regular(b'y')))),
                          'duplicate'),
    'duplicate directories': (archive(directory(('a', directory()), ('a', directory()))),
                              'duplicate'),
    'empty symlink target': (archive(symlink('')), 'symlink target'),
    'symlink target with a NUL': (archive(symlink('/etc\0/passwd')), 'symlink target'),
    'symlink target too long': (archive(symlink('/' + 'x' * 4095)), 'limit'),
    'absurd name length': (
        archive(['(', 'type', 'directory', 'entry', '(', 'name'])
        + struct.pack('<Q', 1 << 63) + b'x' * 64, 'limit'),
    'absurd file length': (
        archive(['(', 'type', 'regular', 'contents']) + struct.pack('<Q', (1 << 64) - 1)
        + b'x' * 64, 'limit'),
    'absurd token length': (struct.pack('<Q', 1 << 40) + b'nix-archive-1', 'magic'),
    'file longer than the stream': (
        archive(['(', 'type', 'regular', 'contents']) + struct.pack('<Q', 1000) + b'x' * 16,
        'truncated'),
    'name longer than the stream': (
        archive(['(', 'type', 'directory', 'entry', '(', 'name'])
        + struct.pack('<Q', 100) + b'x' * 16, 'truncated'),
    'missing padding at the end': (archive(regular(b'abc'))[:-16 - 5] + b'', 'truncated'),
    'unclosed directory': (archive(directory(('a', regular(b'x'))))[:-16], 'truncated'),
    'non-zero padding in a token': (
        GOOD[:8] + b'nix-archive-1\0\0\1' + GOOD[24:], 'magic'),
    'non-zero padding in contents': (
        encode(['nix-archive-1', '(', 'type', 'regular', 'contents'])
        + struct.pack('<Q', 3) + b'abc\0\0\0\0\1' + string(')'), 'padding'),
    'non-zero padding in a name': (
        encode(['nix-archive-1', '(', 'type', 'directory', 'entry', '(', 'name'])
        + struct.pack('<Q', 1) + b'a\0\0\0\0\0\0x' + encode(['node'] + regular(b'x') + [')', ')']),
        'padding'),
    'non-zero padding in a target': (
        encode(['nix-archive-1', '(', 'type', 'symlink', 'target'])
        + struct.pack('<Q', 2) + b'/x\0\0\0\0\0\xff' + string(')'), 'padding'),
    'one trailing byte': (GOOD + b'\0', 'trailing data'),
    'a trailing string': (GOOD + string('x'), 'trailing data'),
    'a second NAR': (GOOD + GOOD, 'trailing data'),
    'failure after finished read-only directories': (
        archive(directory(('a', directory(('b', directory(('c', regular(b'x', True)))))),
                          ('b', symlink('a')), ('c', regular(b'z')),
                          ('d', ['(', 'type', 'socket', ')']))), 'socket'),
}


def assert_left_nothing(tmp_path, dest):
    assert not os.path.lexists(dest)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('case', sorted(MALFORMED))
def test_unpack_rejects_malformed_nar_and_leaves_nothing(tmp_path, case):
    data, message = MALFORMED[case]
    dest = tmp_path / 'out'
    with pytest.raises(InvalidNar, match=message) as raised:
        unpack_bytes(data, dest)
    assert raised.value.message.startswith('invalid NAR: ')
    assert_left_nothing(tmp_path, dest)


def test_error_names_the_entry_and_offset(tmp_path):
    data = archive(directory(('dir', directory(('ok', regular(b'x')), ('..', regular(b'y'))))))
    with pytest.raises(InvalidNar) as raised:
        unpack_bytes(data, tmp_path / 'out')
    assert 'at /dir/.. (byte ' in str(raised.value)


def test_every_truncation_is_rejected(sample_tree, tmp_path):
    original = dump_bytes(sample_tree)
    work = tmp_path / 'work'
    work.mkdir()
    dest = work / 'out'
    for cut in list(range(0, 600)) + list(range(600, len(original), 37)):
        with pytest.raises(InvalidNar):
            unpack_bytes(original[:cut], dest)
        assert_left_nothing(work, dest)


def test_a_later_entry_is_never_written_through_a_symlink(tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    work = tmp_path / 'work'
    work.mkdir()
    attempts = [
        directory(('a', symlink(str(outside))), ('a', directory(('evil', regular(b'x'))))),
        directory(('a', symlink(str(outside))), ('a/evil', regular(b'x'))),
        directory(('a', symlink(str(outside / 'evil'))), ('a', regular(b'x'))),
        directory(('a', symlink('../outside')), ('b', directory(('..', regular(b'x'))))),
    ]
    for node in attempts:
        with pytest.raises(InvalidNar):
            unpack_bytes(archive(node), work / 'out')
        assert os.listdir(outside) == []
        assert_left_nothing(work, work / 'out')


def test_existing_destination_is_refused_and_kept(tmp_path):
    dest = tmp_path / 'out'
    dest.mkdir()
    (dest / 'keep').write_text('mine')
    with pytest.raises(StoreError, match='already exists'):
        unpack_bytes(GOOD, dest)
    assert (dest / 'keep').read_text() == 'mine'
    link = tmp_path / 'link'
    link.symlink_to(tmp_path / 'elsewhere')
    with pytest.raises(StoreError, match='already exists'):
        unpack_bytes(archive(regular(b'x')), link)
    assert not (tmp_path / 'elsewhere').exists()


def test_stream_error_passes_through_and_leaves_nothing(tmp_path):
    class Broken(object):
        def __init__(self):
            self.data = io.BytesIO(GOOD[:200])

        def read(self, size):
            data = self.data.read(min(size, 64))
            if not data:
                raise ConnectionResetError('peer went away')
            return data

    dest = tmp_path / 'out'
    with pytest.raises(ConnectionResetError, match='peer went away'):
        nar.unpack(Broken(), dest)
    assert_left_nothing(tmp_path, dest)


def test_max_size_refuses_a_file_beyond_the_declared_size(tmp_path):
    data = archive(directory(('big', regular(b'x' * 1000))))
    dest = tmp_path / 'out'
    with pytest.raises(InvalidNar, match='beyond the NAR size'):
        unpack_bytes(data, dest, max_size=500)
    assert_left_nothing(tmp_path, dest)
    unpack_bytes(data, dest, max_size=len(data))
    assert (dest / 'big').read_bytes() == b'x' * 1000


def test_cleanup_of_read_only_directories_as_an_unprivileged_user(tmp_path):
    """Root ignores permissions, so the cleanup is also checked as nobody."""
    data = MALFORMED['failure after finished read-only directories'][0]
    if os.geteuid() != 0:
        with pytest.raises(InvalidNar):
            unpack_bytes(data, tmp_path / 'out')
        assert_left_nothing(tmp_path, tmp_path / 'out')
        return
    python = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable
    shared = tempfile.mkdtemp(prefix='nar-nobody-')
    try:
        os.chmod(shared, 0o755)
        collections = os.path.join(shared, 'collections', 'ansible_collections', 'nixcache')
        os.makedirs(collections)
        os.symlink(REPO, os.path.join(collections, 'closure'))
        work = os.path.join(shared, 'work')
        os.mkdir(work)
        shutil.chown(work, 'nobody')
        with open(os.path.join(shared, 'case.nar'), 'wb') as handle:
            handle.write(data)
        program = textwrap.dedent('''
            import os, sys
            sys.path.insert(0, %r)
            from ansible_collections.nixcache.closure.plugins.module_utils import nar
            from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidNar
            try:
                with open(%r, 'rb') as stream:
                    nar.unpack(stream, %r)
            except InvalidNar:
                print('rejected', os.listdir(%r))
        ''' % (os.path.join(shared, 'collections'), os.path.join(shared, 'case.nar'),
               os.path.join(work, 'out'), work))
        result = subprocess.run([python, '-c', program], user='nobody', check=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert result.stdout.decode().strip() == 'rejected []', result.stderr
    finally:
        for top, _dirs, _files in os.walk(shared):
            os.chmod(top, 0o755)
        shutil.rmtree(shared)


# --- descriptors and races ----------------------------------------------------------

def open_descriptors():
    return len(os.listdir('/proc/self/fd'))


class CountingDescriptors(object):
    """A stream that notes the most descriptors this process held while it was read."""

    def __init__(self, data):
        self.stream = Trickle(data, largest=4096)
        self.most = open_descriptors()

    def read(self, size):
        self.most = max(self.most, open_descriptors())
        return self.stream.read(size)


def test_unpack_holds_descriptors_by_depth_not_by_directory_count(tmp_path):
    """3100 directories two levels deep: a handful of descriptors, all released after."""
    node = directory(*[('d%04d' % outer, directory(*[
        ('e%02d' % inner, directory(('f', regular(b'x')))) for inner in range(30)]))
        for outer in range(100)])
    data = archive(node)
    before = open_descriptors()
    stream = CountingDescriptors(data)
    nar.unpack(stream, tmp_path / 'out')
    assert open_descriptors() == before
    assert stream.most - before <= 3 + 2      # the open directories, a file, the listing
    assert sum(len(dirs) for _top, dirs, _files in os.walk(tmp_path / 'out')) == 100 + 100 * 30
    assert dump_bytes(tmp_path / 'out') == data


def test_remove_tree_never_follows_a_symlink_swapped_in_mid_removal(tmp_path, monkeypatch):
    """A directory swapped for a symlink to a precious tree after it was listed: the
    link goes, what it points to stays untouched."""
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'precious').write_text('keep me')
    outside.chmod(0o755)
    stale = tmp_path / 'stale'
    (stale / 'sub').mkdir(parents=True)
    (stale / 'sub' / 'file').write_text('x')
    (stale / 'z').write_text('y')
    stale.chmod(0o555)
    real_scandir = os.scandir
    swapped = []

    class Listing(object):
        def __init__(self, entries):
            self.entries = entries

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc_info):
            return False

        def __iter__(self):
            return iter(self.entries)

    def swapping_scandir(target):
        with real_scandir(target) as entries:
            listed = list(entries)
        if not swapped and any(entry.name == 'sub' for entry in listed):
            os.chmod(stale, 0o755)
            os.rename(stale / 'sub', tmp_path / 'moved-away')
            os.symlink(outside, stale / 'sub')
            swapped.append(True)
        return Listing(listed)

    monkeypatch.setattr(nar.os, 'scandir', swapping_scandir)
    nar.remove_tree(stale)
    monkeypatch.undo()
    assert swapped
    assert not os.path.lexists(stale)
    assert (outside / 'precious').read_text() == 'keep me'
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755


def test_remove_tree_names_the_path_it_cannot_remove(tmp_path):
    stale = tmp_path / 'stale'
    (stale / 'sub').mkdir(parents=True)
    (stale / 'sub' / 'stuck').write_text('x')
    subprocess.run(['chattr', '+i', str(stale / 'sub' / 'stuck')], check=True)
    try:
        with pytest.raises(OSError) as raised:
            nar.remove_tree(stale)
        assert str(stale) in str(raised.value) and 'stuck' in str(raised.value)
    finally:
        subprocess.run(['chattr', '-i', str(stale / 'sub' / 'stuck')], check=True)
