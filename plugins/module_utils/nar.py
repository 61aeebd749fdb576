# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nix archives (NAR): a safe streaming unpacker, a writer and the NAR hash.

A NAR is a sequence of strings, each an 8-byte little-endian length, the bytes and
zero padding to a multiple of 8:

    "nix-archive-1" node
    node  = "(" "type" ( "regular" ["executable" ""] "contents" DATA
                       | "symlink" "target" TARGET
                       | "directory" { "entry" "(" "name" NAME "node" node ")" } ) ")"

Directory entries are strictly increasing by the bytes of their names.  The unpacker
accepts exactly what Nix writes and nothing else, and writes files the way Nix leaves
them in the store: read-only, mtime 1.
"""

import errno
import hashlib
import os
import stat
import struct
from typing import Any, Callable, Optional, Tuple, Union

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidNar, StoreError

READ_SIZE = 1 << 18          # bytes asked of the stream at a time
NAME_MAX = 255               # longest file name Linux file systems accept
TARGET_MAX = 4095            # longest symlink target (PATH_MAX less the NUL)
PATH_MAX = 4095              # longest full path of an unpacked entry, as for Nix
TOKEN_MAX = 64               # longer than any keyword of the format
FILE_SIZE_MAX = 1 << 50      # a sanity bound on one file's length

_LENGTH = struct.Struct('<Q')
_ZERO_PADDING = tuple(b'\0' * size for size in range(8))

_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_STORE_TIME = (1, 1)


def _string(value):
    """The NAR encoding of one string."""
    return _LENGTH.pack(len(value)) + value + _ZERO_PADDING[-len(value) % 8]


MAGIC = _string(b'nix-archive-1')
_OPEN = _string(b'(')
_CLOSE = _string(b')')
_OPEN_TYPE = _OPEN + _string(b'type')
_REGULAR_CONTENTS = _string(b'regular') + _string(b'contents')
_EXECUTABLE_CONTENTS = (_string(b'regular') + _string(b'executable') + _string(b'')
                        + _string(b'contents'))
_SYMLINK_TARGET = _string(b'symlink') + _string(b'target')
_DIRECTORY = _string(b'directory')
_ENTRY_NAME = _string(b'entry') + _OPEN + _string(b'name')
_NODE = _string(b'node')
_NODE_OPEN_TYPE = _NODE + _OPEN_TYPE


def _show(name):
    return name.decode('utf-8', 'backslashreplace')


class _StreamFailed(Exception):
    """Wraps an exception raised by the input stream so it is not taken for a file system error."""

    def __init__(self, error):
        super(_StreamFailed, self).__init__(error)
        self.error = error


class _Reader(object):
    """A buffered view of the input stream; ``offset`` counts the bytes consumed."""

    def __init__(self, stream, max_size):
        self.stream = stream
        self.buf = b''
        self.pos = 0
        self.base = 0            # stream offset of buf[0]
        self.eof = False
        self.max_size = max_size
        self.received = 0        # bytes the stream has given
        self.names = []          # path of the node being read, for messages

    @property
    def offset(self):
        return self.base + self.pos

    @property
    def where(self):
        return '/' + '/'.join(_show(name) for name in self.names)

    def fail(self, message):
        raise InvalidNar('invalid NAR: %s at %s (byte %d)' % (message, self.where, self.offset))

    def _read_stream(self, size):
        if self.max_size is not None:   # never ask for more than one byte beyond the size
            size = max(1, min(size, self.max_size + 1 - self.received))
        try:
            data = self.stream.read(size)
        except Exception as error:
            raise _StreamFailed(error) from error
        if not data:
            self.eof = True
            return b''
        self.received += len(data)
        if self.max_size is not None and self.received > self.max_size:
            self.fail('the stream goes on beyond the NAR size of %d bytes' % self.max_size)
        return data if isinstance(data, bytes) else bytes(data)

    def ensure(self, size):
        """Make ``size`` bytes available from ``pos``; False when the stream ends first."""
        buf, pos = self.buf, self.pos
        have = len(buf) - pos
        if have >= size:
            return True
        parts = [buf[pos:]] if have else []
        self.base += pos
        while have < size and not self.eof:
            data = self._read_stream(max(READ_SIZE, size - have))
            parts.append(data)
            have += len(data)
        self.buf = parts[0] if len(parts) == 1 else b''.join(parts)
        self.pos = 0
        return have >= size

    def match(self, encoded):
        """Consume ``encoded`` if the stream continues with it."""
        if not self.buf.startswith(encoded, self.pos):
            if not (self.ensure(len(encoded)) and self.buf.startswith(encoded, self.pos)):
                return False
        self.pos += len(encoded)
        return True

    def expect(self, encoded, what, tokens=()):
        if not self.match(encoded):
            self.unexpected(what, tokens)

    def unexpected(self, what, tokens=()):
        """Fail with what was expected and, if it is a short string, what was found.

        For a sequence of ``tokens`` the first one that differs is reported.
        """
        for token in tokens:
            if not self.match(_string(token)):
                what = '"%s"' % _show(token)
                break
        if not self.ensure(8):
            self.fail('truncated NAR: expected %s' % what)
        length = _LENGTH.unpack_from(self.buf, self.pos)[0]
        if length <= TOKEN_MAX and self.ensure(8 + length):
            found = self.buf[self.pos + 8:self.pos + 8 + length]
            self.fail('expected %s, found %r' % (what, found.decode('latin-1')))
        if length > TOKEN_MAX:
            self.fail('expected %s, found a string of %d bytes' % (what, length))
        self.fail('truncated NAR: expected %s' % what)

    def read_length(self, limit, what):
        if self.pos + 8 > len(self.buf) and not self.ensure(8):
            self.fail('truncated NAR: expected the length of %s' % what)
        length = _LENGTH.unpack_from(self.buf, self.pos)[0]
        if length > limit:
            self.fail('%s is %d bytes long, more than the limit of %d' % (what, length, limit))
        if self.max_size is not None and self.offset + 8 + length > self.max_size:
            self.fail('%s of %d bytes goes beyond the NAR size of %d'
                      % (what, length, self.max_size))
        self.pos += 8
        return length

    def check_padding(self, start, end):
        if self.buf[start:end] != _ZERO_PADDING[end - start]:
            self.pos = start
            self.fail('non-zero padding')

    def read_string(self, limit, what):
        length = self.read_length(limit, what)
        padded = (length + 7) & ~7
        if self.pos + padded > len(self.buf) and not self.ensure(padded):
            self.fail('truncated NAR: %s ends early' % what)
        start = self.pos
        end = start + length
        value = self.buf[start:end]
        if padded != length:
            self.check_padding(end, start + padded)
        self.pos = start + padded
        return value

    def copy_to(self, fd, length):
        """Write the next ``length`` bytes of data to ``fd`` and skip their padding."""
        padded = (length + 7) & ~7
        buf, pos = self.buf, self.pos
        if len(buf) - pos >= padded:
            end = pos + length
            if length:
                _write_all(fd, memoryview(buf)[pos:end])
            if padded != length:
                self.check_padding(end, pos + padded)
            self.pos = pos + padded
            return
        remaining = length
        while remaining:
            have = len(self.buf) - self.pos
            if not have:
                data = self._read_stream(READ_SIZE)
                if not data:
                    self.fail('truncated NAR: file contents end %d bytes early' % remaining)
                self.base += len(self.buf)
                self.buf, self.pos, have = data, 0, len(data)
            take = have if have < remaining else remaining
            _write_all(fd, memoryview(self.buf)[self.pos:self.pos + take])
            self.pos += take
            remaining -= take
        if padded != length:
            if not self.ensure(padded - length):
                self.fail('truncated NAR: padding missing')
            self.check_padding(self.pos, self.pos + padded - length)
            self.pos += padded - length

    def at_end(self):
        """True if nothing follows: the stream is read until it returns no more data."""
        if self.pos < len(self.buf):
            return False
        while not self.eof:
            data = self._read_stream(READ_SIZE)
            if data:
                self.base += len(self.buf)
                self.buf, self.pos = data, 0
                return False
        return True


def _write_all(fd, view):
    written = os.write(fd, view)
    while written < len(view):
        view = view[written:]
        written = os.write(fd, view)


class _Unpacker(object):
    """Creates the nodes of one NAR below an open parent directory."""

    def __init__(self, reader, parent_fd, base_name, dest_length):
        self.reader = reader
        self.dest_length = dest_length
        self.parent_fd = parent_fd
        self.base_name = base_name
        self.names = reader.names    # entry names from the top to the node being read
        self.created = False         # the top node exists and must go on failure
        self.open_fds = []           # innermost last: the open directories, or one file

    def _close(self, fd):
        self.open_fds.remove(fd)
        os.close(fd)

    def close_all(self):
        while self.open_fds:
            os.close(self.open_fds.pop())

    def run(self):
        reader = self.reader
        reader.expect(MAGIC, 'the NAR magic "nix-archive-1"')
        reader.expect(_OPEN_TYPE, '"(" "type"', (b'(', b'type'))
        current = self._node(self.parent_fd, self.base_name)
        if current is not None:
            self._directories(current)
        if not reader.at_end():
            reader.fail('trailing data after the NAR')

    def _directories(self, top_fd):
        """Read entries until the top directory closes.

        Only the directories on the way from the top to the node being read are open:
        descriptors are bounded by the nesting depth, whatever the number of directories.
        """
        reader = self.reader
        match = reader.match
        read_string = reader.read_string
        names = self.names
        stack = self.open_fds       # stack[-1] is the directory being read
        current = top_fd
        previous = [None]        # last entry name seen in each open directory
        path_lengths = [self.dest_length]    # full path length of each open directory
        while True:
            if match(_ENTRY_NAME):
                name = read_string(NAME_MAX, 'an entry name')
                names.append(name)
                if (not name or name == b'.' or name == b'..' or b'/' in name
                        or b'\0' in name):
                    reader.fail('forbidden entry name %r' % _show(name))
                last = previous[-1]
                if last is not None and name <= last:
                    if name == last:
                        reader.fail('duplicate entry')
                    reader.fail('entry after %r: entries must be sorted' % _show(last))
                previous[-1] = name
                path_length = path_lengths[-1] + 1 + len(name)
                if path_length > PATH_MAX:
                    reader.fail('path longer than %d bytes once unpacked' % PATH_MAX)
                if not match(_NODE_OPEN_TYPE):
                    reader.unexpected('"node" "(" "type"', (b'node', b'(', b'type'))
                child = self._node(current, name)
                if child is not None:
                    current = child
                    previous.append(None)
                    path_lengths.append(path_length)
                    continue
                names.pop()
            elif match(_CLOSE):
                os.fchmod(current, 0o555)
                os.utime(current, _STORE_TIME)
                self._close(current)
                if not names:
                    return
                current = stack[-1]
                names.pop()
                previous.pop()
                path_lengths.pop()
            elif match(_string(b'entry')):
                reader.unexpected('"(" "name"', (b'(', b'name'))
            else:
                reader.unexpected('"entry" or ")"')
            if not match(_CLOSE):
                reader.unexpected('")" closing an entry')

    def _node(self, dir_fd, name):
        """Create the node that follows ``"(" "type"`` as ``name`` in ``dir_fd``.

        A file or symlink is read to its closing ")"; a directory is left open and its
        file descriptor returned.
        """
        reader = self.reader
        match = reader.match
        top = not self.names
        if match(_REGULAR_CONTENTS):
            executable = False
        elif match(_EXECUTABLE_CONTENTS):
            executable = True
        elif match(_SYMLINK_TARGET):
            target = reader.read_string(TARGET_MAX, 'a symlink target')
            if not target or b'\0' in target:
                reader.fail('forbidden symlink target %r' % _show(target))
            os.symlink(target, name, dir_fd=dir_fd)
            self.created = self.created or top
            os.utime(name, _STORE_TIME, dir_fd=dir_fd, follow_symlinks=False)
            if not match(_CLOSE):
                reader.unexpected('")" closing a symlink')
            return None
        elif match(_DIRECTORY):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            self.created = self.created or top
            fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
            self.open_fds.append(fd)
            return fd
        else:
            self._explain_bad_node()
        length = reader.read_length(FILE_SIZE_MAX, 'a file')
        fd = os.open(name, _CREATE_FILE, 0o600, dir_fd=dir_fd)
        self.open_fds.append(fd)
        self.created = self.created or top
        reader.copy_to(fd, length)
        os.fchmod(fd, 0o555 if executable else 0o444)
        os.utime(fd, _STORE_TIME)
        self._close(fd)
        if not match(_CLOSE):
            reader.unexpected('")" closing a file')
        return None

    def _explain_bad_node(self):
        """Fail with what is wrong with a node no fast path matched."""
        reader = self.reader
        node_type = reader.read_string(TOKEN_MAX, 'a node type')
        fields = {b'regular': (b'executable', b'contents'), b'symlink': (b'target',),
                  b'directory': ()}.get(node_type)
        if fields is None:
            reader.fail('unknown node type %r' % _show(node_type))
        field = reader.read_string(TOKEN_MAX, 'a field')
        if field == b'executable':
            if reader.read_string(TOKEN_MAX, 'the executable marker'):
                reader.fail('the executable marker has a value')
            field = reader.read_string(TOKEN_MAX, 'a field')
            fields = (b'contents',)
        reader.fail('unexpected field %r in a %s node, expected %s'
                    % (_show(field), _show(node_type), ' or '.join(_show(f) for f in fields)))


def remove_tree(path: Union[str, bytes]) -> None:
    """Remove ``path`` and everything below it, read-only directories included.

    Works relative to directory descriptors opened with ``O_NOFOLLOW``, never by path:
    an entry swapped for a symlink while we work is removed as a link, never followed.
    Iterative (no recursion limit); descriptors are bounded by the nesting depth.
    Raises OSError (with the path that failed) when the file system refuses.
    """
    path = os.fsencode(path)
    parent, name = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, _OPEN_DIR)
    try:
        _remove_entry(parent_fd, name, path)
    finally:
        os.close(parent_fd)


def _remove_entry(parent_fd, name, shown):
    """Remove ``name`` in the directory ``parent_fd``; ``shown`` names it in errors."""
    top = _open_subdirectory(parent_fd, name, shown)
    if top is None:
        return
    stack = [[top, name, None, 0]]    # [fd, name, names left to remove, listings]
    try:
        while stack:
            entry = stack[-1]
            fd, dir_name, pending, listings = entry
            if pending is None:
                entry[2], entry[3] = iter(_entry_names(fd, shown)), listings + 1
                continue
            child = next(pending, None)
            if child is not None:
                child_fd = _open_subdirectory(fd, child, shown)
                if child_fd is not None:
                    stack.append([child_fd, child, None, 0])
                continue
            outer = stack[-2][0] if len(stack) > 1 else parent_fd
            try:
                os.rmdir(dir_name, dir_fd=outer)
            except OSError as error:
                # someone adds entries while we remove them: list again, a few times
                if error.errno == errno.ENOTEMPTY and listings < 3:
                    entry[2] = None
                    continue
                if error.errno != errno.ENOENT:
                    raise _named(error, shown, dir_name) from error
            stack.pop()
            os.close(fd)
    finally:
        for entry in stack:
            os.close(entry[0])


def _open_subdirectory(dir_fd, name, shown):
    """Open ``name`` as a directory we may empty, or unlink it if it is anything else.

    Returns the descriptor, or None when ``name`` is gone or was not a directory.
    """
    while True:
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.ENOENT:
                return None
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise _named(error, shown, name) from error
            try:   # a file or a symlink (maybe just swapped in): remove the entry itself
                os.unlink(name, dir_fd=dir_fd)
                return None
            except OSError as unlink_error:
                if unlink_error.errno == errno.ENOENT:
                    return None
                if unlink_error.errno != errno.EISDIR:   # it became a directory: again
                    raise _named(unlink_error, shown, name) from unlink_error
            continue
        try:
            os.fchmod(fd, 0o700)
        except OSError as error:
            os.close(fd)
            raise _named(error, shown, name) from error
        return fd


def _entry_names(fd, shown):
    try:
        with os.scandir(fd) as entries:
            return [os.fsencode(entry.name) for entry in entries]
    except OSError as error:
        raise _named(error, shown, None) from error


def _named(error, shown, name):
    """The OSError ``error`` with a file name that says where below ``shown`` it happened."""
    where = _show(shown) if name is None or name == os.path.basename(shown) \
        else '%s/.../%s' % (_show(shown), _show(name))
    return OSError(error.errno, error.strerror, where)


def unpack(stream: Any, dest: Union[str, bytes], max_size: Optional[int] = None) -> None:
    """Read one NAR from ``stream`` and create it at ``dest``.

    ``dest`` must not exist; its parent must.  ``stream.read(n)`` may return fewer bytes
    than asked and is read until it returns ``b''``.  With ``max_size`` (the NarSize the
    cache declared) a length reaching beyond it is refused before anything is written.
    Raises ``InvalidNar`` for a malformed or unsafe NAR, ``StoreError`` when the file
    system refuses, and passes on whatever the stream raises; in every case nothing is
    left at ``dest`` unless it existed before.
    """
    dest = os.path.abspath(os.fsencode(dest))
    parent, base_name = os.path.split(dest)
    if not base_name:
        raise StoreError('cannot unpack a NAR at %s: no file name' % _show(dest))
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise StoreError('cannot unpack a NAR at %s: %s' % (_show(dest), error)) from error
    reader = _Reader(stream, max_size)
    unpacker = _Unpacker(reader, parent_fd, base_name, len(dest))
    try:
        try:
            unpacker.run()
        except BaseException:
            unpacker.close_all()
            if unpacker.created:
                _remove_quietly(dest)
            raise
    except _StreamFailed as failure:
        stream_error = failure.error
    except OSError as error:
        if error.errno == errno.EEXIST and not unpacker.created:
            raise StoreError('cannot unpack a NAR at %s: it already exists'
                             % _show(dest)) from error
        raise StoreError('cannot unpack a NAR at %s: %s at %s (byte %d)'
                         % (_show(dest), error.strerror or error, reader.where, reader.offset)
                         ) from error
    else:
        return
    finally:
        os.close(parent_fd)
    raise stream_error           # outside the handler, so its own context stays as it was


def _remove_quietly(path):
    """Best-effort clean-up: the error that caused it is the one to report."""
    try:
        remove_tree(path)
    except OSError:
        pass


class _Batcher(object):
    """Collects small writes into chunks of at least ``size`` bytes."""

    def __init__(self, write, size=1 << 18):
        self.write = write
        self.size = size
        self.pending = bytearray()

    def put(self, data):
        self.pending += data
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self):
        if self.pending:
            self.write(bytes(self.pending))
            self.pending = bytearray()


def _dump_file(path, size, out):
    fd = os.open(path, _READ_FILE)
    try:
        if size <= out.size:
            data = os.read(fd, size) if size else b''
            if len(data) != size:
                data += _read_exactly(fd, size - len(data), path)
            out.put(data)
        else:
            out.flush()
            remaining = size
            while remaining:
                data = os.read(fd, min(remaining, READ_SIZE))
                if not data:
                    raise StoreError('file %s shrank while it was being read' % _show(path))
                out.write(data)
                remaining -= len(data)
    finally:
        os.close(fd)
    out.put(_ZERO_PADDING[-size % 8])


def _read_exactly(fd, size, path):
    parts = []
    while size:
        data = os.read(fd, size)
        if not data:
            raise StoreError('file %s shrank while it was being read' % _show(path))
        parts.append(data)
        size -= len(data)
    return b''.join(parts)


def dump(path: Union[str, bytes], write: Callable[[bytes], Any]) -> None:
    """Serialise ``path`` as a NAR, passing it to ``write(bytes)`` in chunks."""
    out = _Batcher(write)
    out.put(MAGIC)
    directories = []             # (path, iterator over the sorted entry names)
    node = os.fsencode(path)
    while True:
        if node is not None:
            info = os.lstat(node)
            mode = info.st_mode
            if stat.S_ISDIR(mode):
                out.put(_OPEN_TYPE + _DIRECTORY)
                directories.append((node, iter(sorted(os.listdir(node)))))
                node = None
                continue
            if stat.S_ISREG(mode):
                out.put(_OPEN_TYPE + (_EXECUTABLE_CONTENTS if mode & stat.S_IXUSR
                                      else _REGULAR_CONTENTS) + _LENGTH.pack(info.st_size))
                _dump_file(node, info.st_size, out)
                out.put(_CLOSE)
            elif stat.S_ISLNK(mode):
                out.put(_OPEN_TYPE + _SYMLINK_TARGET + _string(os.readlink(node)) + _CLOSE)
            else:
                raise StoreError('cannot put %s in a NAR: it is neither a file, a directory '
                                 'nor a symlink' % _show(node))
            node = None
            if not directories:
                break
            out.put(_CLOSE)      # closes the entry
            continue
        directory, names = directories[-1]
        name = next(names, None)
        if name is not None:
            out.put(_ENTRY_NAME + _string(name) + _NODE)
            node = os.path.join(directory, name)
            continue
        directories.pop()
        out.put(_CLOSE)
        if not directories:
            break
        out.put(_CLOSE)          # closes the entry
    out.flush()


def dump_tree(node: Tuple[Any, ...], write: Callable[[bytes], Any]) -> None:
    """Serialise an in-memory tree as a NAR, passing it to ``write(bytes)``.

    A node is ``('directory', {name: node})``, ``('symlink', target)`` or
    ``('regular', data, executable)``; names and targets are ``str`` or ``bytes``.
    Entries are written sorted by the bytes of their names, as Nix writes them.
    """
    out = _Batcher(write)
    out.put(MAGIC)
    _dump_node(node, out)
    out.flush()


def _dump_node(node, out):
    kind = node[0]
    if kind == 'directory':
        out.put(_OPEN_TYPE + _DIRECTORY)
        entries = sorted((os.fsencode(name), child) for name, child in node[1].items())
        for name, child in entries:
            out.put(_ENTRY_NAME + _string(name) + _NODE)
            _dump_node(child, out)
            out.put(_CLOSE)
    elif kind == 'symlink':
        out.put(_OPEN_TYPE + _SYMLINK_TARGET + _string(os.fsencode(node[1])))
    elif kind == 'regular':
        data = node[1]
        out.put(_OPEN_TYPE + (_EXECUTABLE_CONTENTS if node[2] else _REGULAR_CONTENTS)
                + _string(data))
    else:
        raise StoreError('cannot put a %r node in a NAR' % (kind,))
    out.put(_CLOSE)


def nar_hash(path: Union[str, bytes]) -> Tuple[bytes, int]:
    """The sha256 digest and the size of the NAR serialisation of ``path``."""
    digest = hashlib.sha256()
    size = [0]

    def update(data):
        digest.update(data)
        size[0] += len(data)

    dump(path, update)
    return digest.digest(), size[0]
