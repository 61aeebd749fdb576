"""A reverse proxy on 127.0.0.1 in front of an S3 server (moto) that throttles as S3 does.

    with ThrottlingS3Proxy('127.0.0.1:5000') as proxy:
        proxy.endpoint                       # 127.0.0.1:PORT, for s3://bucket?endpoint=...
        proxy.throttle('*.narinfo', times=5) # the next 5 matching GETs: 503 SlowDown
        proxy.throttled                      # [(method, path)] answered with SlowDown
        proxy.forwarded                      # [(method, path, status)] relayed from upstream

moto cannot throttle by itself.  A throttled request gets what S3 answers when a prefix
gets too many requests: ``503 Slow Down`` with an XML ``<Error>`` whose ``Code`` is
``SlowDown`` (and, with ``retry_after``, a ``Retry-After`` header, which S3 itself does
not send but S3-compatible servers and CDNs in front of them may).  Every other request
is relayed to the upstream server unchanged (its signature stays valid: the Host header
is passed on as the client sent it).
"""
import fnmatch
import http.client
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackServer

SLOW_DOWN = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             '<Message>Please reduce your request rate.</Message>'
             '<RequestId>%s</RequestId><HostId>%s</HostId></Error>')
HOP_BY_HOP = ('connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade',
              'proxy-authorization', 'proxy-authenticate')
CHUNK = 1 << 16


class _Rule:
    def __init__(self, pattern, times, retry_after):
        self.pattern = pattern
        self.left = times
        self.retry_after = retry_after


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def _handle(self):
        owner = self.server.owner
        path = urllib.parse.urlsplit(self.path).path
        rule = owner._take(self.command, path)
        if rule is not None:
            self._slow_down(rule)
            return
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*owner.upstream, timeout=30)
        try:
            headers = dict((k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP)
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            with owner.lock:
                owner.forwarded.append((self.command, path, answer.status))
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.end_headers()
            if self.command != 'HEAD':
                while True:
                    chunk = answer.read(CHUNK)
                    if not chunk:
                        break
                    self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            upstream.close()

    def _slow_down(self, rule):
        body = (SLOW_DOWN % (uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex)).encode()
        self.send_response(503, 'Slow Down')
        self.send_header('Content-Type', 'application/xml')
        self.send_header('Content-Length', str(len(body)))
        if rule.retry_after is not None:
            self.send_header('Retry-After', str(rule.retry_after))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)


class ThrottlingS3Proxy(LoopbackServer):
    """Relay to ``upstream`` (``host:port``), answering SlowDown where told to."""

    handler = _Handler
    thread_name = 'nixtest-s3-throttle'

    def __init__(self, upstream):
        super().__init__()
        host, _sep, port = upstream.rpartition(':')
        self.upstream = (host, int(port))
        self.lock = threading.Lock()
        self.rules = []
        self.throttled = []
        self.forwarded = []

    @property
    def endpoint(self):
        return '127.0.0.1:%d' % self.port

    def throttle(self, pattern, times, retry_after=None):
        """Answer the next ``times`` GET/HEAD requests whose key path matches the glob
        ``pattern`` with 503 SlowDown (bounded: ``times`` must be a number)."""
        with self.lock:
            self.rules.append(_Rule(pattern, int(times), retry_after))

    def reset(self):
        with self.lock:
            self.rules, self.throttled, self.forwarded = [], [], []

    def _take(self, method, path):
        if method not in ('GET', 'HEAD'):
            return None
        with self.lock:
            for rule in self.rules:
                if rule.left > 0 and fnmatch.fnmatchcase(path, rule.pattern):
                    rule.left -= 1
                    self.throttled.append((method, path))
                    return rule
        return None
