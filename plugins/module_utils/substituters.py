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
import netrc
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

from ansible.module_utils.six.moves.http_client import HTTPException
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError

# HTTP statuses that mean "this cache does not have that file".  S3 answers 403 to
# anonymous readers of a missing key, and Nix treats both the same way.
MISSING_STATUSES = (403, 404)
DEFAULT_PRIORITY = 50


class CacheOptions(object):
    """How to talk to caches: time-outs, retries and HTTP client settings."""

    def __init__(self, timeout=30, retries=3, validate_certs=True, backoff=0.5, http=None, aws=None):
        self.timeout = timeout
        self.retries = retries
        self.validate_certs = validate_certs
        self.backoff = backoff
        # HTTP client settings: url_username, url_password, bearer_token, netrc_file,
        # client_cert, client_key, ca_path, use_proxy, headers
        self.http = dict(http or {})
        # S3 settings: profile, region, endpoint_url, access_key, secret_key, session_token
        self.aws = dict(aws or {})


class Substituter(object):
    """A binary cache.  Subclasses implement ``_read`` and ``_open``."""

    def __init__(self, url, options=None, store_dir=STORE_DIR):
        self.url = url.rstrip('/')
        self.options = options or CacheOptions()
        self.store_dir = store_dir
        self._info = None
        # why the cache stopped answering in this run; later look-ups skip it
        self.unavailable = None

    def __repr__(self):
        return '<%s %s>' % (type(self).__name__, self.url)

    def narinfo(self, store_path):
        """The verified-format NarInfo for a StorePath, or None if the cache lacks it."""
        text = self._read_text('%s.narinfo' % store_path.hash_part, store_path)
        if text is None:
            return None
        return NarInfo.parse(text, store_dir=self.store_dir, source=self.url)

    def open_nar(self, relative_url, store_path=None):
        """A readable stream of the file a narinfo's URL names (still compressed).

        A connection that breaks off mid-file is reopened where it stopped (see
        ResumingStream), up to ``retries`` times.
        """
        return ResumingStream(self, relative_url, store_path)

    def open_at(self, relative_url, offset):
        """(stream, position): the file from ``offset`` when the cache can, else from 0."""
        return self._open(relative_url), 0

    def cache_info(self):
        """The parsed ``nix-cache-info`` (``{}`` when the cache has none), fetched once."""
        if self._info is None:
            text = self._read_text('nix-cache-info', None)
            self._info = parse_cache_info(text or '')
        return self._info

    def read_text(self, relative_url):
        """Any text file of the cache (``relative_url`` below its URL), or None if missing."""
        return self._read_text(relative_url, None)

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
                    reason = _describe(error)
                    if _is_transient(error):
                        self.unavailable = reason
                    raise CacheUnavailable(
                        'cache did not answer for %s after %d attempt(s): %s'
                        % (relative_url, attempt + 1, reason),
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

    def open_at(self, relative_url, offset):
        stream = self._open(relative_url)
        stream.seek(offset)
        return stream, offset

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

    Credentials, in this order: ``url_username``/``url_password`` (basic auth), a bearer
    token, the cache host's entry in ``netrc_file``.  The TLS context (CA bundle, client
    certificate) is built once per cache: building it per request reloads every CA
    certificate, which costs more than a small narinfo.
    """

    def __init__(self, url, options=None, store_dir=STORE_DIR):
        super(HttpSubstituter, self).__init__(url, options, store_dir)
        self._context = None
        self._request_args, self.credentials = self._authentication()

    def _authentication(self):
        """(keyword arguments for Request.open, a description of the credentials: no secrets)."""
        http = dict(self.options.http)
        netrc_file = http.pop('netrc_file', None)
        token = http.pop('bearer_token', None)
        for tls_option in ('ca_path', 'client_cert', 'client_key'):  # in the TLS context
            http.pop(tls_option, None)
        if http.get('url_username'):
            http['force_basic_auth'] = True
            return http, 'basic auth as user %s' % http['url_username']
        if token:
            http['headers'] = dict(http.get('headers') or {}, Authorization='Bearer %s' % token)
            return http, 'a bearer token'
        host = urlparse(self.url).hostname
        if netrc_file and host and os.path.exists(netrc_file):
            try:
                entry = netrc.netrc(netrc_file).authenticators(host)
            except (netrc.NetrcParseError, IOError, OSError) as error:
                raise CacheUnavailable('cannot read netrc file %s: %s' % (netrc_file, error),
                                       cache=self.url)
            if entry:
                http.update(url_username=entry[0], url_password=entry[2], force_basic_auth=True)
                return http, 'basic auth as user %s from %s' % (entry[0], netrc_file)
        http['use_netrc'] = False  # never pick up ~/.netrc behind the user's back
        return http, 'no credentials'

    def _tls_context(self):
        if self._context is None and make_context is not None:
            http = self.options.http
            self._context = make_context(cafile=http.get('ca_path'),
                                         validate_certs=self.options.validate_certs,
                                         client_cert=http.get('client_cert'),
                                         client_key=http.get('client_key'))
        return self._context

    def _request(self, relative_url, headers=None):
        args = dict(self._request_args)
        if headers:
            args['headers'] = dict(args.get('headers') or {}, **headers)
        try:
            return Request().open('GET', '%s/%s' % (self.url, relative_url),
                                  timeout=self.options.timeout,
                                  validate_certs=self.options.validate_certs,
                                  context=self._tls_context(), **args)
        except HTTPError as error:
            if error.code in (401, 407):
                raise CacheUnavailable('the cache refused the credentials (HTTP %d %s); tried: %s'
                                       % (error.code, error.reason, self.credentials),
                                       cache=self.url)
            raise

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

    def _open(self, relative_url, headers=None):
        try:
            return self._request(relative_url, headers)
        except HTTPError as error:
            if error.code in MISSING_STATUSES:
                raise CacheUnavailable('the cache lists %s but answers HTTP %d for it'
                                       % (relative_url, error.code), cache=self.url)
            raise

    def open_at(self, relative_url, offset):
        if not offset:
            return self._open(relative_url), 0
        response = self._open(relative_url, {'Range': 'bytes=%d-' % offset})
        status = getattr(response, 'status', None) or response.getcode()
        content_range = response.headers.get('Content-Range') or ''
        if status == 206 and content_range.startswith('bytes %d-' % offset):
            return response, offset
        return response, 0  # the server ignored the range: the whole file again


class ResumingStream(object):
    """A cache file read to its end even if the connection breaks off.

    On a transient failure, or a body shorter than its Content-Length, the file is
    reopened at the byte where it stopped (an HTTP Range request); a server without
    range support sends it all again and the part already read is skipped.
    """

    SKIP_CHUNK = 1 << 18

    def __init__(self, substituter, relative_url, store_path=None):
        self._cache = substituter
        self._url = relative_url
        self._store_path = store_path
        self._offset = 0
        self._resumed = 0
        self._stream = substituter._with_retries(lambda: substituter.open_at(relative_url, 0)[0],
                                                 relative_url, store_path)
        self._length = _content_length(self._stream)

    def read(self, size=-1):
        while True:
            try:
                data = self._stream.read(size)
            except NixCacheError:
                raise
            except Exception as error:  # broken connections come in many types
                if not _is_transient(error):
                    raise
                self._resume(_describe(error))
                continue
            if not data and self._length is not None and self._offset < self._length:
                self._resume('the body ended after %d of %d bytes' % (self._offset, self._length))
                continue
            self._offset += len(data)
            return data

    def _resume(self, reason):
        options = self._cache.options
        if self._resumed >= options.retries:
            raise CacheUnavailable('download of %s broke off after %d bytes, %d time(s): %s'
                                   % (self._url, self._offset, self._resumed + 1, reason),
                                   path=_path_str(self._store_path), cache=self._cache.url)
        self._resumed += 1
        self.close()
        time.sleep(options.backoff * (2 ** (self._resumed - 1)) * random.uniform(0.5, 1.5))
        stream, position = self._cache._with_retries(
            lambda: self._cache.open_at(self._url, self._offset), self._url, self._store_path)
        while position < self._offset:  # no range support: skip what was read already
            skipped = stream.read(min(self.SKIP_CHUNK, self._offset - position))
            if not skipped:
                stream.close()
                raise CacheUnavailable('%s became shorter while it was downloaded' % self._url,
                                       path=_path_str(self._store_path), cache=self._cache.url)
            position += len(skipped)
        self._stream = stream

    def close(self):
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                pass


def _content_length(stream):
    headers = getattr(stream, 'headers', None)
    if headers is None or headers.get('Content-Encoding'):
        return None
    try:
        return int(headers.get('Content-Length'))
    except (TypeError, ValueError):
        return None


SCHEMES = {
    'file': FileSubstituter,
    'http': HttpSubstituter,
    'https': HttpSubstituter,
}


def make_substituter(url, options=None, store_dir=STORE_DIR):
    """The Substituter for a cache URL; an unknown scheme is a clear error."""
    scheme = urlparse(url).scheme
    if scheme == 's3':  # imported on demand: it is the only reader that needs boto3
        from ansible_collections.nixcache.closure.plugins.module_utils.s3 import S3Substituter
        return S3Substituter(url, options, store_dir)
    if scheme not in SCHEMES:
        raise CacheUnavailable('unsupported cache URL scheme %r (supported: %s)'
                               % (scheme, ', '.join(sorted(SCHEMES) + ['s3'])), cache=url)
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
        return error.code >= 500 or error.code in (408, 429)
    if isinstance(error, URLError):
        return True  # refused, reset, name resolution, time-out inside urllib
    # a body cut short (IncompleteRead), a reset or a time-out while reading
    return isinstance(error, (HTTPException, socket.timeout, ConnectionError, OSError))


def _describe(error):
    if isinstance(error, HTTPError):
        return 'HTTP %d %s' % (error.code, error.reason)
    if isinstance(error, URLError):
        return str(error.reason)
    return '%s: %s' % (type(error).__name__, error)


def _path_str(store_path):
    return None if store_path is None else str(store_path)
