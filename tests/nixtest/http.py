"""A small threaded HTTP server on 127.0.0.1 that serves a directory, for http:// caches.

    with CacheServer(directory) as server:
        server.url                                  # http://127.0.0.1:PORT
        server.fault('*.narinfo', status=500, times=1)
        server.fault('/nar/*', truncate_after=100)
        ...
        server.fetched('/nar/*')                     # GET requests that matched

GET and HEAD, single byte ranges (``Range: bytes=a-b``, ``a-``, ``-n`` -> 206, or 416),
HTTP/1.1 keep-alive, and a request log.  Faults are chosen per request by a glob
pattern on the URL path (the first matching fault wins) and can:

* answer with another ``status`` (e.g. 404, 403, 429, 500, 503) and an empty body, with
  extra ``headers`` (e.g. ``{'Retry-After': '2'}``; a callable value is called for each
  answer, e.g. to send an HTTP date a few seconds ahead),
* ``delay`` the answer by some seconds,
* send the right headers but only ``truncate_after`` bytes of the body, then close,
* ``reset`` the connection (TCP RST) without answering,
* ``corrupt`` the body (flip one byte at that offset), keeping its length,
* ``drip`` the answer, headers and body: one byte every ``drip`` seconds,
* ``hold`` the connection silent for that many seconds after ``truncate_after`` bytes
  (a server that stalls mid-body) before closing it,
* ``redirect`` to another URL (302 with that Location; a ``{path}`` in it is replaced
  by the request's path),
* ``close`` the connection after a complete answer that promised to keep it open (as a
  server does with an idle keep-alive connection),
* apply only ``times`` times (then the request is served normally).

``connections`` counts the TCP connections accepted.

``require_basic_auth(user, password)`` / ``require_bearer(token)`` answer 401 to requests
without those credentials; ``ranges_ignored = True`` serves whole files to Range requests.
"""
import fnmatch
import os
import posixpath
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackServer

CONTENT_TYPES = {
    '.narinfo': 'text/x-nix-narinfo',
    '.nar': 'application/x-nix-nar',
    '.xz': 'application/x-xz',
    '.zst': 'application/zstd',
    '.bz2': 'application/x-bzip2',
    '.ls': 'application/json',
}
CHUNK = 64 * 1024


class Fault:
    """One injected fault; see the module docstring."""

    def __init__(self, pattern, status=None, delay=0.0, truncate_after=None, reset=False,
                 corrupt=None, times=None, methods=('GET', 'HEAD'), drip=None, hold=None,
                 redirect=None, close=False, headers=None):
        self.pattern = pattern
        self.headers = dict(headers or {})
        self.redirect = redirect
        self.close = close
        self.drip = drip
        self.hold = hold
        self.status = status
        self.delay = delay
        self.truncate_after = truncate_after
        self.reset = reset
        self.corrupt = corrupt
        self.times = times
        self.methods = tuple(methods)
        self.hits = 0

    def matches(self, method, path):
        if method not in self.methods:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        return fnmatch.fnmatchcase(path, self.pattern)

    def __repr__(self):
        return 'Fault(%r, status=%r, delay=%r, truncate_after=%r, reset=%r, corrupt=%r, ' \
               'times=%r, drip=%r, hold=%r, redirect=%r, close=%r, hits=%r)' % (
                   self.pattern, self.status, self.delay, self.truncate_after, self.reset,
                   self.corrupt, self.times, self.drip, self.hold, self.redirect, self.close,
                   self.hits)


class Request:
    """One logged request."""

    def __init__(self, method, path, headers):
        self.method = method
        self.path = path
        self.headers = headers
        self.range = headers.get('Range')
        self.time = time.monotonic()    # when it came
        self.status = None          # None when the connection was reset
        self.bytes_sent = 0
        self.truncated = False
        self.fault = None

    def __repr__(self):
        return '<%s %s -> %s, %d bytes%s%s%s>' % (
            self.method, self.path, self.status or 'reset', self.bytes_sent,
            ', range ' + self.range if self.range else '',
            ', truncated' if self.truncated else '',
            ', fault %s' % self.fault.pattern if self.fault else '')


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'nixtest-cache/1'
    # TCP_NODELAY, as production servers (nginx, S3, CDNs) send: with Nagle's algorithm the
    # body waits for the client's delayed ACK of the headers, 40 ms a keep-alive request
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        with self.server.owner._lock:
            self.server.owner.connections += 1

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def _serve(self, body):
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        entry = Request(self.command, path, dict(self.headers.items()))
        fault = owner._take_fault(self.command, path)
        entry.fault = fault
        owner._log(entry)

        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.reset:
            self._reset()
            return
        if fault is not None and fault.status is not None:
            self._send_empty(entry, fault.status,
                             dict((name, value() if callable(value) else value)
                                  for name, value in fault.headers.items()))
            return
        if fault is not None and fault.redirect:
            self._send_empty(entry, 302, {'Location': fault.redirect.replace('{path}', path)})
            return
        required = owner.required_authorization
        if required is not None and self.headers.get('Authorization') not in required:
            self._send_empty(entry, 401, {'WWW-Authenticate': 'Basic realm="cache"'})
            return
        if owner.ranges_ignored:
            del self.headers['Range']

        filename = owner._resolve(path)
        if filename is None:
            self._send_empty(entry, 404)
            return
        size = os.path.getsize(filename)
        start, end = 0, size - 1
        status = 200
        if 'Range' in self.headers:
            parsed = _parse_range(self.headers['Range'], size)
            if parsed is None:
                self._send_empty(entry, 416, {'Content-Range': 'bytes */%d' % size})
                return
            start, end = parsed
            status = 206
        length = max(0, end - start + 1)

        entry.status = status
        self.send_response(status)
        self.send_header('Content-Type', _content_type(filename))
        self.send_header('Content-Length', str(length))
        self.send_header('Accept-Ranges', 'bytes')
        if status == 206:
            self.send_header('Content-Range', 'bytes %d-%d/%d' % (start, end, size))
        if fault is not None and fault.drip:
            if not self._drip_headers(fault.drip):
                return
        else:
            self.end_headers()
        if not body:
            return

        if fault is None and owner.tls is None:   # as production servers send files
            with open(filename, 'rb') as f:
                self.wfile.flush()
                try:
                    entry.bytes_sent = self.connection.sendfile(f, start, length)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            return
        limit = length
        if fault is not None and fault.truncate_after is not None:
            limit = min(length, fault.truncate_after)
        chunk_size = 1 if fault is not None and fault.drip else CHUNK
        with open(filename, 'rb') as f:
            f.seek(start)
            sent = 0
            while sent < limit:
                if chunk_size == 1:
                    if owner._stopping.wait(fault.drip):
                        break
                    self.wfile.flush()
                chunk = f.read(min(chunk_size, limit - sent))
                if not chunk:
                    break
                if fault is not None and fault.corrupt is not None \
                        and sent <= fault.corrupt < sent + len(chunk):
                    i = fault.corrupt - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xff]) + chunk[i + 1:]
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(chunk)
                entry.bytes_sent = sent
        if limit < length:
            entry.truncated = True
            self.wfile.flush()
            if fault is not None and fault.hold:
                owner._stopping.wait(fault.hold)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif fault is not None and fault.close:
            self.wfile.flush()
            self.close_connection = True

    def _drip_headers(self, interval):
        """Send the status line and headers one byte at a time; False if the client left."""
        self._headers_buffer.append(b'\r\n')
        data = b''.join(self._headers_buffer)
        self._headers_buffer = []
        for index in range(len(data)):
            if self.server.owner._stopping.wait(interval):
                return False
            try:
                self.wfile.write(data[index:index + 1])
            except (BrokenPipeError, ConnectionResetError):
                return False
        return True

    def _send_empty(self, entry, status, headers=None):
        entry.status = status
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def _reset(self):
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack('ii', 1, 0))
            self.connection.close()
        except OSError:
            pass


def _parse_range(header, size):
    """``bytes=a-b`` -> (start, end) inclusive, clipped to the file; None if unsatisfiable."""
    unit, dummy, spec = header.partition('=')
    if unit.strip() != 'bytes' or ',' in spec:
        return None
    first, dummy, last = spec.strip().partition('-')
    try:
        if first == '':
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _content_type(filename):
    for suffix, kind in CONTENT_TYPES.items():
        if filename.endswith(suffix):
            return kind
    if os.path.basename(filename) == 'nix-cache-info':
        return 'text/x-nix-cache-info'
    return 'application/octet-stream'


class CacheServer(LoopbackServer):
    """Serve ``directory`` on 127.0.0.1 (a free port) until stopped."""

    handler = _Handler
    thread_name = 'nixtest-http'

    def __init__(self, directory, tls=None):
        """``tls``: an ssl.SSLContext (server side) to serve HTTPS instead of HTTP."""
        super().__init__()
        self.directory = os.path.realpath(str(directory))
        self.tls = tls
        self._lock = threading.Lock()
        self._faults = []
        self._requests = []
        # Authorization header values accepted (None: no authentication asked for)
        self.required_authorization = None
        self.ranges_ignored = False  # answer Range requests with the whole file (200)
        self._stopping = threading.Event()   # ends dripping and holding answers
        self.connections = 0                 # TCP connections accepted

    def wrap_socket(self, sock):
        if self.tls is None:
            return sock
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def stop(self):
        self._stopping.set()
        super().stop()

    @property
    def url(self):
        return '%s://127.0.0.1:%d' % ('https' if self.tls is not None else 'http', self.port)

    def url_for(self, relative):
        """URL of a file or subdirectory of the served directory, e.g. ``url_for('xz')``."""
        return '%s/%s' % (self.url, relative.lstrip('/'))

    # faults
    def fault(self, pattern, **kwargs):
        """Add a fault for URL paths matching the glob ``pattern`` (e.g. ``'/xz/nar/*'``,
        ``'*.narinfo'``).  Keyword arguments as for Fault.  Returns the Fault."""
        fault = Fault(pattern, **kwargs)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self):
        with self._lock:
            self._faults = []

    def _take_fault(self, method, path):
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    # request log
    def _log(self, entry):
        with self._lock:
            self._requests.append(entry)

    @property
    def requests(self):
        """Every request so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_log(self):
        with self._lock:
            self._requests = []

    def require_basic_auth(self, user, password):
        """Answer 401 to requests without these credentials (None: open again)."""
        import base64
        if user is None:
            self.required_authorization = None
            return
        token = base64.b64encode(('%s:%s' % (user, password)).encode()).decode()
        self.required_authorization = ('Basic ' + token,)

    def require_bearer(self, token):
        self.required_authorization = ('Bearer ' + token,)

    def reset(self):
        """Forget faults, logged requests and authentication (between tests)."""
        with self._lock:
            self._faults = []
            self._requests = []
            self.connections = 0
        self.required_authorization = None
        self.ranges_ignored = False

    def requests_for(self, pattern='*', method=None):
        """Logged requests whose path matches the glob ``pattern``."""
        return [r for r in self.requests
                if fnmatch.fnmatchcase(r.path, pattern) and (method is None or r.method == method)]

    def fetched(self, pattern='*'):
        """Paths of GET requests matching ``pattern`` that were answered with a body."""
        return [r.path for r in self.requests_for(pattern, 'GET') if r.status in (200, 206)]

    # files
    def _resolve(self, path):
        parts = [p for p in posixpath.normpath(urllib.parse.unquote(path)).split('/')
                 if p not in ('', '.', '..')]
        filename = os.path.realpath(os.path.join(self.directory, *parts))
        if not (filename == self.directory or filename.startswith(self.directory + os.sep)):
            return None
        if not os.path.isfile(filename):
            return None
        return filename


def make_pki(directory):
    """A private CA (``ca.pem``), a server certificate for 127.0.0.1 (``server.pem``,
    ``server.key``) and a client certificate (``client.pem``, ``client.key``) in
    ``directory``, made with openssl."""
    d = str(directory)

    def openssl(*args):
        subprocess.run(['openssl'] + list(args), check=True, capture_output=True)

    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=test CA',
            '-keyout', os.path.join(d, 'ca.key'), '-out', os.path.join(d, 'ca.pem'))
    with open(os.path.join(d, 'server.ext'), 'w') as f:
        f.write('subjectAltName = IP:127.0.0.1\n')
    for name, extra in (('server', ['-extfile', os.path.join(d, 'server.ext')]), ('client', [])):
        openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=%s' % name,
                '-keyout', os.path.join(d, name + '.key'), '-out', os.path.join(d, name + '.csr'))
        openssl('x509', '-req', '-in', os.path.join(d, name + '.csr'),
                '-CA', os.path.join(d, 'ca.pem'), '-CAkey', os.path.join(d, 'ca.key'),
                '-CAcreateserial', '-days', '2', '-out', os.path.join(d, name + '.pem'), *extra)
    return directory


def tls_context(pki, client_certificates=True):
    """A server-side TLS context with the certificate of ``make_pki``; with
    ``client_certificates``, clients must show one of its CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(str(pki), 'server.pem'), os.path.join(str(pki), 'server.key'))
    if client_certificates:
        context.load_verify_locations(os.path.join(str(pki), 'ca.pem'))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
