# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Binary caches ("substituters") behind one small interface.

A cache is addressed by URL as in nix.conf: ``file:///dir`` or ``http(s)://host/prefix``.
Every cache answers three questions: the ``.narinfo`` of a hash part (or None when it
does not have the path), a stream of the (compressed) NAR at a narinfo's URL, and its
``nix-cache-info``.  Transient failures (refused or reset connections, time-outs, 5xx)
are retried with exponential back-off and jitter.
"""

import errno
import os
import random
import socket
import time

from ansible.module_utils.six.moves.urllib.parse import urlparse, unquote
from ansible.module_utils.urls import Request

try:  # ansible-core 2.14 and later: one TLS context for every request to a cache
    from ansible.module_utils.urls import make_context
except ImportError:  # pragma: no cover - older ansible-core builds a context per request
    make_context = None

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    CacheUnavailable,
    NixCacheError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR

try:  # the exception types open_url raises; names differ little across ansible-core versions
    from urllib.error import HTTPError, URLError
except ImportError:  # pragma: no cover - Python 2 is not supported on managed hosts
    raise

# HTTP statuses that mean "this cache does not have that file".  S3 answers 403 to
# anonymous readers of a missing key, and Nix treats both the same way.
MISSING_STATUSES = (403, 404)
DEFAULT_PRIORITY = 50


class CacheOptions(object):
    """How to talk to caches: time-outs, retries and HTTP client settings."""

    def __init__(self, timeout=30, retries=3, validate_certs=True, backoff=0.5, http=None):
        self.timeout = timeout
        self.retries = retries
        self.validate_certs = validate_certs
        self.backoff = backoff
        # extra keyword arguments for open_url (headers, credentials, proxies, CA)
        self.http = dict(http or {})


class Substituter(object):
    """A binary cache.  Subclasses implement ``_read`` and ``_open``."""

    def __init__(self, url, options=None, store_dir=STORE_DIR):
        self.url = url.rstrip('/')
        self.options = options or CacheOptions()
        self.store_dir = store_dir
        self._info = None

    def __repr__(self):
        return '<%s %s>' % (type(self).__name__, self.url)

    def narinfo(self, store_path):
        """The verified-format NarInfo for a StorePath, or None if the cache lacks it."""
        text = self._read_text('%s.narinfo' % store_path.hash_part, store_path)
        if text is None:
            return None
        return NarInfo.parse(text, store_dir=self.store_dir, source=self.url)

    def open_nar(self, relative_url, store_path=None):
        """A readable stream of the file a narinfo's URL names (still compressed)."""
        return self._with_retries(lambda: self._open(relative_url), relative_url, store_path)

    def cache_info(self):
        """The parsed ``nix-cache-info`` (``{}`` when the cache has none), fetched once."""
        if self._info is None:
            text = self._read_text('nix-cache-info', None)
            self._info = parse_cache_info(text or '')
        return self._info

    def priority(self):
        try:
            return int(self.cache_info().get('Priority', DEFAULT_PRIORITY))
        except ValueError:
            return DEFAULT_PRIORITY

    def _read_text(self, relative_url, store_path):
        data = self._with_retries(lambda: self._read(relative_url), relative_url, store_path)
        if data is None:
            return None
        try:
            return data.decode('utf-8')
        except UnicodeDecodeError:
            raise CacheUnavailable('%s is not UTF-8 text' % relative_url,
                                   path=_path_str(store_path), cache=self.url)

    def _with_retries(self, action, relative_url, store_path):
        attempt = 0
        while True:
            try:
                return action()
            except NixCacheError:
                raise
            except Exception as error:  # network errors come in many types
                if not _is_transient(error) or attempt >= self.options.retries:
                    raise CacheUnavailable(
                        'cache did not answer for %s after %d attempt(s): %s'
                        % (relative_url, attempt + 1, _describe(error)),
                        path=_path_str(store_path), cache=self.url)
                time.sleep(self.options.backoff * (2 ** attempt) * random.uniform(0.5, 1.5))
                attempt += 1

    def _read(self, relative_url):
        raise NotImplementedError

    def _open(self, relative_url):
        raise NotImplementedError


class FileSubstituter(Substituter):
    """A cache in a local directory (``file:///var/cache/nix``)."""

    def __init__(self, url, options=None, store_dir=STORE_DIR):
        super(FileSubstituter, self).__init__(url, options, store_dir)
        self.directory = unquote(urlparse(self.url).path) or '/'

    def _local_path(self, relative_url):
        # narinfo URLs are checked to be relative and free of '..' when parsed
        return os.path.join(self.directory, *relative_url.split('/'))

    def _read(self, relative_url):
        try:
            with open(self._local_path(relative_url), 'rb') as handle:
                return handle.read()
        except (IOError, OSError) as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def _open(self, relative_url):
        try:
            return open(self._local_path(relative_url), 'rb')
        except (IOError, OSError) as error:
            if error.errno == errno.ENOENT:
                raise CacheUnavailable('the cache lists %s but does not hold it' % relative_url,
                                       cache=self.url)
            raise


class HttpSubstituter(Substituter):
    """A cache served over HTTP(S), read through ansible-core's URL handling.

    The TLS context (CA bundle, client certificate) is built once per cache: building it
    per request reloads every CA certificate, which costs more than a small narinfo.
    """

    def __init__(self, url, options=None, store_dir=STORE_DIR):
        super(HttpSubstituter, self).__init__(url, options, store_dir)
        self._context = None

    def _tls_context(self):
        if self._context is None and make_context is not None:
            http = self.options.http
            self._context = make_context(cafile=http.get('ca_path'),
                                         validate_certs=self.options.validate_certs,
                                         client_cert=http.get('client_cert'),
                                         client_key=http.get('client_key'))
        return self._context

    def _request(self, relative_url, headers=None):
        http = dict(self.options.http)
        if headers:
            http['headers'] = dict(http.get('headers') or {}, **headers)
        return Request().open('GET', '%s/%s' % (self.url, relative_url),
                              timeout=self.options.timeout,
                              validate_certs=self.options.validate_certs,
                              context=self._tls_context(), **http)

    def _read(self, relative_url):
        try:
            response = self._request(relative_url)
        except HTTPError as error:
            if error.code in MISSING_STATUSES:
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()

    def _open(self, relative_url):
        try:
            return self._request(relative_url)
        except HTTPError as error:
            if error.code in MISSING_STATUSES:
                raise CacheUnavailable('the cache lists %s but answers HTTP %d for it'
                                       % (relative_url, error.code), cache=self.url)
            raise


SCHEMES = {
    'file': FileSubstituter,
    'http': HttpSubstituter,
    'https': HttpSubstituter,
}


def make_substituter(url, options=None, store_dir=STORE_DIR):
    """The Substituter for a cache URL; an unknown scheme is a clear error."""
    scheme = urlparse(url).scheme
    if scheme not in SCHEMES:
        raise CacheUnavailable('unsupported cache URL scheme %r (supported: %s)'
                               % (scheme, ', '.join(sorted(SCHEMES))), cache=url)
    return SCHEMES[scheme](url, options, store_dir)


def parse_cache_info(text):
    """``Key: value`` lines of a nix-cache-info file as a dict."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep:
            info[key.strip()] = value.strip()
    return info


def _is_transient(error):
    if isinstance(error, HTTPError):
        return error.code >= 500 or error.code == 429
    if isinstance(error, URLError):
        return True  # refused, reset, name resolution, time-out inside urllib
    return isinstance(error, (socket.timeout, ConnectionError, OSError))


def _describe(error):
    if isinstance(error, HTTPError):
        return 'HTTP %d %s' % (error.code, error.reason)
    if isinstance(error, URLError):
        return str(error.reason)
    return '%s: %s' % (type(error).__name__, error)


def _path_str(store_path):
    return None if store_path is None else str(store_path)
