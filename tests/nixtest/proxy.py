"""A forwarding HTTP proxy on 127.0.0.1, for the clients' proxy support.

    with Proxy() as proxy:
        proxy.url                  # http://127.0.0.1:PORT, for http_proxy / https_proxy
        proxy.requests             # [(method, target, Proxy-Authorization or None)]

``GET http://host/path`` is forwarded (the whole answer is relayed), ``CONNECT host:port``
opens a tunnel (for HTTPS).  ``require_auth(value)`` answers 407 without that
Proxy-Authorization header.
"""
import http.client
import select
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet
        pass

    def _admit(self):
        owner = self.server.owner
        authorization = self.headers.get('Proxy-Authorization')
        with owner.lock:
            owner.requests.append((self.command, self.path, authorization))
        if owner.required is not None and authorization != owner.required:
            self.send_response(407)
            self.send_header('Proxy-Authenticate', 'Basic realm="proxy"')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return False
        return True

    def do_GET(self):
        if not self._admit():
            return
        target = urllib.parse.urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        try:
            path = target.path + ('?' + target.query if target.query else '')
            headers = dict((k, v) for k, v in self.headers.items()
                           if k.lower() not in ('proxy-authorization', 'connection', 'host'))
            upstream.request('GET', path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in ('connection', 'transfer-encoding', 'content-length'):
                self.send_header(name, value)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self):
        if not self._admit():
            return
        host, _sep, port = self.path.rpartition(':')
        upstream = socket.create_connection((host, int(port)), timeout=30)
        self.send_response(200, 'Connection established')
        self.end_headers()
        self.wfile.flush()
        ends = [self.connection, upstream]
        try:
            while True:
                readable, _w, _x = select.select(ends, [], [], 30)
                if not readable:
                    break
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()
            self.close_connection = True


class Proxy(LoopbackServer):
    handler = _Handler
    thread_name = 'nixtest-proxy'

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.requests = []
        self.required = None

    def require_auth(self, value):
        self.required = value

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port
