"""One HTTP server on 127.0.0.1 (a free port), served from a thread until stopped: the
lifecycle that the test cache, the S3 throttling relay and the forwarding proxy share.

A subclass names its request handler class (``handler``); the handler reaches the server
object as ``self.server.owner``.
"""
import threading
from http.server import ThreadingHTTPServer


class LoopbackServer:
    handler = None              # a BaseHTTPRequestHandler subclass
    thread_name = 'nixtest-loopback'

    def __init__(self):
        self._httpd = None
        self._thread = None

    def wrap_socket(self, sock):
        """The listening socket to serve on (TLS servers wrap it)."""
        return sock

    def start(self):
        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), self.handler)
        self._httpd.socket = self.wrap_socket(self._httpd.socket)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._httpd.server_address[1]
