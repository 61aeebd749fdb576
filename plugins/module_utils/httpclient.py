# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP(S) GET requests over kept-alive connections, with the standard library only.

A closure of a few hundred paths costs a few hundred ``.narinfo`` and NAR requests.  A
new TCP connection (and TLS handshake) for each, as ``urllib`` makes, costs more than a
small narinfo, so idle connections are kept per origin and reused, as Nix's curl does.

Also handled: one TLS context per client (CA bundle, client certificate), proxies named
by ``http_proxy``/``https_proxy``/``no_proxy`` (HTTPS through a CONNECT tunnel), and
redirects (at most MAX_REDIRECTS; credentials go only to the origin they were given for).

``http.client``, ``ssl`` and ``urllib.request`` are imported with the first request: a
run that finds everything in place does not pay for them.
"""

import base64
import os
import sys
import threading
import weakref
from typing import Any, Dict, Optional, Tuple
from urllib.parse import unquote, urljoin, urlsplit

MAX_REDIRECTS = 10
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
IDLE_PER_ORIGIN = 16
USER_AGENT = 'nixcache.closure'


def _stale_connection_errors():
    """Errors of a kept-alive connection the server closed while it was idle: the request
    is sent again once on a new connection."""
    import http.client
    return (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
            http.client.BadStatusLine)


class HttpStatusError(Exception):
    """The server answered with an error status (4xx, 5xx) or a redirect we do not follow."""

    def __init__(self, url: str, code: int, reason: str, headers: Any = None) -> None:
        super(HttpStatusError, self).__init__('HTTP %d %s' % (code, reason))
        self.url = url
        self.code = code
        self.reason = reason
        self.headers = headers


def basic_auth(user: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP basic authentication."""
    token = base64.b64encode(('%s:%s' % (user, password)).encode('utf-8')).decode('ascii')
    return 'Basic %s' % token


def origin_of(url: str) -> Tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == 'https' else 80)
    return scheme, (parts.hostname or '').lower(), port


class Response(object):
    """The answer to a GET: ``status``, ``headers``, ``read``/``read1``, ``close``.

    Closing it after the whole body was read hands its connection back for the next
    request to the same origin; closing it earlier closes the connection.
    """

    def __init__(self, client: 'HttpClient', key: Tuple, connection: Any, response: Any, url: str) -> None:
        self._client = client
        self._key = key
        self._connection = connection
        self._response = response
        self.url = url
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers

    @property
    def socket(self) -> Any:
        """The connection's socket, for time-outs of single reads (None once closed)."""
        return getattr(self._connection, 'sock', None)

    def getcode(self) -> int:
        return self.status

    def read(self, size: int = -1) -> bytes:
        return self._response.read(None if size is None or size < 0 else size)

    def read1(self, size: int = -1) -> bytes:
        return self._response.read1(size)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # read1 leaves a response of known length open after its last byte
        complete = not self._response.will_close and (
            self._response.isclosed() or self._response.length == 0)
        self._response.close()
        if complete:
            self._client._release(self._key, connection)
        else:
            connection.close()


class HttpClient(object):
    """GET requests for one cache's settings; safe to use from several threads."""

    def __init__(self, validate_certs: bool = True, ca_path: Optional[str] = None,
                 client_cert: Optional[str] = None, client_key: Optional[str] = None,
                 use_proxy: bool = True) -> None:
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.client_cert = client_cert
        self.client_key = client_key
        self.use_proxy = use_proxy
        self._context = None
        self._idle = {}      # connection key -> [idle connections]
        self._inherited = {}  # in a forked child: the parent's idle connections (take_share)
        self._proxies = {}   # (scheme, host) -> proxy URL or None
        self._lock = threading.Lock()
        _CLIENTS.add(self)

    def _forget_connections(self):
        """In a forked child: the idle connections are the parent's; none is used unless
        ``take_share`` hands it over."""
        self._inherited, self._idle = self._idle, {}
        self._lock = threading.Lock()

    def take_share(self, share: int, shares: int) -> None:
        """In forked child number ``share`` of ``shares``: take over every ``shares``-th
        idle connection the parent had, counting from ``share``.  The parent must then
        ``close()`` its copies (the connections stay open in the children)."""
        inherited, self._inherited = self._inherited, {}
        with self._lock:
            for key, connections in inherited.items():
                mine = connections[share::shares]
                if mine:
                    self._idle[key] = mine

    def tls_context(self) -> Any:
        """The one TLS context of this client, made on first use (loading the CA
        certificates is costly)."""
        import ssl
        with self._lock:
            if self._context is None:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                if self.validate_certs:
                    if self.ca_path:
                        context.load_verify_locations(cafile=self.ca_path)
                    else:
                        context.load_default_certs()
                else:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                if self.client_cert:
                    context.load_cert_chain(self.client_cert, self.client_key)
                self._context = context
            return self._context

    def get(self, url: str, headers: Optional[Dict[str, str]] = None, timeout: float = 30,
            auth_headers: Optional[Dict[str, str]] = None) -> Response:
        """GET ``url``, following redirects; raises HttpStatusError for 4xx and 5xx.

        ``auth_headers`` are sent to ``url``'s origin only, never after a redirect to
        another origin."""
        auth_origin = origin_of(url)
        for _hop in range(MAX_REDIRECTS + 1):
            sent = dict(headers or {})
            if auth_headers and origin_of(url) == auth_origin:
                sent.update(auth_headers)
            response = self._get_once(url, sent, timeout)
            if response.status in REDIRECT_STATUSES and response.headers.get('Location'):
                location = urljoin(url, response.headers['Location'])
                response.close()
                if urlsplit(location).scheme.lower() not in ('http', 'https'):
                    raise HttpStatusError(url, response.status, 'redirect to a non-HTTP URL refused')
                url = location
                continue
            if response.status >= 400 or response.status in REDIRECT_STATUSES:
                error = HttpStatusError(url, response.status, response.reason, response.headers)
                response.close()
                raise error
            return response
        raise HttpStatusError(url, 310, 'more than %d redirects' % MAX_REDIRECTS)

    def _get_once(self, url, headers, timeout):
        key, target, proxy_headers = self._route(url)
        headers = dict(headers, **proxy_headers) if proxy_headers and key[0] == 'http' else headers
        headers.setdefault('User-Agent', USER_AGENT)
        connection, reused = self._acquire(key, timeout)
        while True:
            try:
                connection.request('GET', target, headers=headers)
                response = connection.getresponse()
            except _stale_connection_errors():
                connection.close()
                if not reused:
                    raise
                connection, reused = self._connect(key, timeout), False
                continue
            except BaseException:
                connection.close()
                raise
            return Response(self, key, connection, response, url)

    def _route(self, url):
        """(connection key, request target, proxy headers) for a URL: straight to its
        origin, or through the proxy the environment names for its scheme."""
        parts = urlsplit(url)
        scheme, host, port = origin_of(url)
        if scheme not in ('http', 'https') or not host:
            raise ValueError('not an http(s) URL: %s' % url)
        path = parts.path or '/'
        if parts.query:
            path += '?' + parts.query
        proxy = self._proxy_for(scheme, host)
        if proxy is None:
            return (scheme, host, port, None), path, {}
        proxy_parts = urlsplit(proxy if '://' in proxy else 'http://' + proxy)
        proxy_address = (proxy_parts.hostname, proxy_parts.port or 80)
        proxy_headers = {}
        if proxy_parts.username is not None:
            proxy_headers['Proxy-Authorization'] = basic_auth(
                unquote(proxy_parts.username), unquote(proxy_parts.password or ''))
        if scheme == 'http':   # the proxy gets the whole URL
            return ('http', proxy_address[0], proxy_address[1], None), url, proxy_headers
        return ('https', host, port, (proxy_address, tuple(sorted(proxy_headers.items())))), path, {}

    def _proxy_for(self, scheme, host):
        """The proxy URL for an origin, or None.  Looked up once per (scheme, host):
        ``urllib`` reads the whole environment at each call, which a few hundred
        requests to one cache would pay each time."""
        if not self.use_proxy:
            return None
        try:
            return self._proxies[scheme, host]
        except KeyError:
            pass
        from urllib.request import getproxies, proxy_bypass
        proxy = getproxies().get(scheme)
        if not proxy or proxy_bypass(host):
            proxy = None
        with self._lock:
            self._proxies[scheme, host] = proxy
        return proxy

    def _acquire(self, key, timeout):
        """(a connection for ``key``, whether it was used before)."""
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                connection = idle.pop()
                connection.timeout = timeout
                if connection.sock is not None:
                    connection.sock.settimeout(timeout)
                return connection, True
        return self._connect(key, timeout), False

    def _connect(self, key, timeout):
        import http.client
        scheme, host, port, tunnel = key
        if scheme == 'http':
            return http.client.HTTPConnection(host, port, timeout=timeout)
        if tunnel is None:
            return http.client.HTTPSConnection(host, port, timeout=timeout,
                                               context=self.tls_context())
        (proxy_host, proxy_port), proxy_headers = tunnel
        connection = http.client.HTTPSConnection(proxy_host, proxy_port, timeout=timeout,
                                                 context=self.tls_context())
        connection.set_tunnel(host, port, headers=dict(proxy_headers))
        return connection

    def _release(self, key, connection):
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < IDLE_PER_ORIGIN and connection.sock is not None:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            connections = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for connection in connections:
            connection.close()


_CLIENTS = weakref.WeakSet()


def _after_fork_in_child():
    for client in list(_CLIENTS):
        client._forget_connections()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def is_certificate_error(error: BaseException) -> bool:
    """Whether an error is a failed TLS certificate check (retrying it cannot help)."""
    ssl = sys.modules.get('ssl')     # a TLS error needs it loaded
    return ssl is not None and (isinstance(error, ssl.SSLCertVerificationError) or (
        isinstance(error, ssl.SSLError) and 'CERTIFICATE_VERIFY_FAILED' in str(error)))
