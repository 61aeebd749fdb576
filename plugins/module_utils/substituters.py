# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Binary caches ("substituters") behind one small interface.

A cache is addressed by URL as in nix.conf: ``file:///dir`` or ``http(s)://host/prefix``.
Every cache answers three questions: the ``.narinfo`` of a hash part (or None when it
does not have the path), a stream of the (compressed) NAR at a narinfo's URL, and its
``nix-cache-info``.  Transient failures (refused or reset connections, time-outs, 5xx)
are retried with exponential back-off and jitter.  A cache that throttles (HTTP 429, a
503 with ``Retry-After``, S3's ``SlowDown``) is asked again as often as it takes, after
the wait its ``Retry-After`` names or else a growing back-off, within
``throttle_timeout`` seconds a request (see Throttle).
"""

import email.utils
import errno
import netrc
import os
import queue
import random
import socket
import sys
import threading
import time
from typing import Any, Dict, Iterable, Optional, Set, Tuple
from urllib.parse import unquote, urlparse, urlunparse

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    CacheUnavailable,
    NixCacheError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.httpclient import (
    HttpClient,
    HttpStatusError,
    basic_auth,
    is_certificate_error,
)
from ansible_collections.nixcache.closure.plugins.module_utils.narinfo import NarInfo
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR


# HTTP statuses that mean "this cache does not have that file".  S3 answers 403 to
# anonymous readers of a missing key, and Nix treats both the same way.
MISSING_STATUSES = (403, 404)
DEFAULT_PRIORITY = 50
MASK = '********'   # stands for a password in every URL we show
# The longest .narinfo or nix-cache-info accepted: real ones are well under 4 KiB.
TEXT_LIMIT = 1 << 20


# A NAR download attempt may last ``timeout`` plus NarSize at this many bytes a second,
NAR_MIN_RATE = 256 * 1024
# and ends sooner if fewer than this many bytes a second arrive over ``timeout`` seconds.
LOW_SPEED = 1024

# How long one request may keep being throttled, by default,
THROTTLE_TIMEOUT = 120
# the longest single wait of the back-off when the cache names none (Retry-After),
THROTTLE_MAX_BACKOFF = 15.0
# and the shortest wait, even when it asks for none (``Retry-After: 0``).
THROTTLE_MIN_WAIT = 0.05


class CacheOptions(object):
    """How to talk to caches: time-outs, retries and HTTP client settings.

    ``timeout`` bounds one request attempt in total, from connecting to the last byte:
    a server that drips or stalls cannot hold it longer.  A NAR download attempt may go
    on for NarSize / ``NAR_MIN_RATE`` seconds more, as long as every ``timeout`` seconds
    bring ``LOW_SPEED`` bytes a second.
    """

    def __init__(self, timeout: float = 30, retries: int = 3, validate_certs: bool = True, backoff: float = 0.5, http: Optional[Dict[str, Any]] = None,
                 aws: Optional[Dict[str, Any]] = None, throttle_timeout: float = THROTTLE_TIMEOUT) -> None:
        self.timeout = timeout
        self.retries = retries
        # seconds a request may keep waiting while the cache throttles it (see Throttle)
        self.throttle_timeout = throttle_timeout
        self.validate_certs = validate_certs
        self.backoff = backoff
        # HTTP client settings: url_username, url_password, bearer_token, netrc_file,
        # client_cert, client_key, ca_path, use_proxy, headers
        self.http = dict(http or {})
        # S3 settings: profile, region, endpoint_url, access_key, secret_key, session_token
        self.aws = dict(aws or {})


class Substituter(object):
    """A binary cache.  Subclasses implement ``_read`` and ``_open``."""

    # whether NARs may be fetched in forked worker processes (see workers.py): false
    # where each process would have to build a costly client of its own
    fork_friendly = True

    def __init__(self, url: str, options: Optional[CacheOptions] = None, store_dir: str = STORE_DIR) -> None:
        # what results, receipts and messages show: never the password
        self.url = redact_url(url.rstrip('/'))
        self.options = options or CacheOptions()
        self.store_dir = store_dir
        self._info = None
        # why the cache stopped answering in this run; later look-ups skip it
        self.unavailable = None

    def __repr__(self):
        return '<%s %s>' % (type(self).__name__, self.url)

    def take_connections(self, share: int, shares: int) -> None:
        """In forked worker ``share`` of ``shares``: take over its share of the parent's
        open connections (the parent then calls ``let_go_of_connections``)."""

    def let_go_of_connections(self) -> None:
        """Close our copies of the connections handed over to worker processes."""

    def narinfo(self, store_path: Any) -> Optional[NarInfo]:
        """The verified-format NarInfo for a StorePath, or None if the cache lacks it."""
        text = self._read_text('%s.narinfo' % store_path.hash_part, store_path)
        if text is None:
            return None
        return NarInfo.parse(text, store_dir=self.store_dir, source=self.url)

    def open_nar(self, relative_url: str, store_path: Any = None, nar_size: Optional[int] = None) -> 'ResumingStream':
        """A readable stream of the file a narinfo's URL names (still compressed).

        A connection that breaks off mid-file, or an attempt that outlasts its deadline
        (``timeout`` plus ``nar_size`` at NAR_MIN_RATE), is reopened where it stopped
        (see ResumingStream), up to ``retries`` times.
        """
        return ResumingStream(self, relative_url, store_path, nar_size)

    def open_at(self, relative_url: str, offset: int, seconds: Optional[float] = None) -> Tuple[Any, int]:
        """(stream, position): the file from ``offset`` when the cache can, else from 0.

        ``seconds`` bounds the whole attempt, where the transport allows (HTTP)."""
        return self._open(relative_url), 0

    def cache_info(self) -> Dict[str, str]:
        """The parsed ``nix-cache-info`` (``{}`` when the cache has none), fetched once."""
        if self._info is None:
            text = self._read_text('nix-cache-info', None)
            self._info = parse_cache_info(text or '')
        return self._info

    def read_text(self, relative_url: str) -> Optional[str]:
        """Any text file of the cache (``relative_url`` below its URL), or None if missing."""
        return self._read_text(relative_url, None)

    def priority(self) -> int:
        try:
            return int(self.cache_info().get('Priority', DEFAULT_PRIORITY))
        except ValueError:
            return DEFAULT_PRIORITY

    def _read_text(self, relative_url, store_path):
        data = self._with_retries(lambda: self._read(relative_url, TEXT_LIMIT), relative_url,
                                  store_path)
        if data is None:
            return None
        if len(data) > TEXT_LIMIT:
            raise self._too_large(relative_url, store_path)
        try:
            return data.decode('utf-8')
        except UnicodeDecodeError:
            raise CacheUnavailable('%s is not UTF-8 text' % relative_url,
                                   path=_path_str(store_path), cache=self.url) from None

    def _with_retries(self, action, relative_url, store_path):
        attempt = 0
        throttle = None    # a Throttle from the first throttled answer on
        while True:
            try:
                return action()
            except NixCacheError as error:
                error.path = error.path or _path_str(store_path)
                error.cache = error.cache or self.url
                raise
            except Exception as error:  # network errors come in many types
                if is_throttled(error):
                    throttle = throttle or Throttle(self.options.throttle_timeout,
                                                    self.options.backoff)
                    wait = throttle.next_wait(error)
                    if wait is None:
                        self.unavailable = throttle.describe(relative_url)
                        raise CacheUnavailable(self.unavailable, path=_path_str(store_path),
                                               cache=self.url) from error
                    time.sleep(wait)
                    continue
                if (not _is_transient(error) or attempt >= self.options.retries
                        or is_certificate_error(error)):   # retrying cannot help
                    reason = _describe(error)
                    if _is_transient(error):
                        self.unavailable = reason
                    raise CacheUnavailable(
                        'cache did not answer for %s after %d attempt(s): %s'
                        % (relative_url, attempt + 1, reason),
                        path=_path_str(store_path), cache=self.url) from error
                time.sleep(self.options.backoff * (2 ** attempt) * random.uniform(0.5, 1.5))
                attempt += 1

    def _too_large(self, relative_url, store_path, size=None):
        return CacheUnavailable('the cache answered %s with more than %d bytes: refused'
                                % (relative_url, TEXT_LIMIT), path=_path_str(store_path),
                                cache=self.url, expected='at most %d bytes' % TEXT_LIMIT,
                                found='%d bytes' % size if size is not None else None)

    def _read(self, relative_url, limit):
        """The file's bytes, read up to ``limit + 1`` bytes at most; None if missing."""
        raise NotImplementedError

    def _open(self, relative_url):
        raise NotImplementedError


class FileSubstituter(Substituter):
    """A cache in a local directory (``file:///var/cache/nix``)."""

    def __init__(self, url: str, options: Optional[CacheOptions] = None, store_dir: str = STORE_DIR) -> None:
        super(FileSubstituter, self).__init__(url, options, store_dir)
        self.directory = unquote(urlparse(self.url).path) or '/'

    def _local_path(self, relative_url):
        # narinfo URLs are checked to be relative and free of '..' when parsed
        return os.path.join(self.directory, *relative_url.split('/'))

    def _read(self, relative_url, limit):
        try:
            with open(self._local_path(relative_url), 'rb') as handle:
                return read_at_most(handle, limit)
        except (IOError, OSError) as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def open_at(self, relative_url: str, offset: int, seconds: Optional[float] = None) -> Tuple[Any, int]:
        stream = self._open(relative_url)
        stream.seek(offset)
        return stream, offset

    def _open(self, relative_url):
        try:
            return open(self._local_path(relative_url), 'rb')
        except (IOError, OSError) as error:
            if error.errno == errno.ENOENT:
                raise CacheUnavailable('the cache lists %s but does not hold it' % relative_url,
                                       cache=self.url) from error
            raise


class HttpSubstituter(Substituter):
    """A cache served over HTTP(S), over kept-alive connections (see httpclient).

    Credentials, in this order: ``url_username``/``url_password`` (basic auth), a bearer
    token, the cache host's entry in ``netrc_file``.  They are sent to the cache's own
    origin only.
    """

    def __init__(self, url: str, options: Optional[CacheOptions] = None, store_dir: str = STORE_DIR) -> None:
        super(HttpSubstituter, self).__init__(url, options, store_dir)
        self._address, user, password = split_credentials(url.rstrip('/'))
        self._auth_headers, self.credentials = self._authentication(user, password)
        http = self.options.http
        self._client = HttpClient(validate_certs=self.options.validate_certs,
                                  ca_path=http.get('ca_path'), client_cert=http.get('client_cert'),
                                  client_key=http.get('client_key'),
                                  use_proxy=http.get('use_proxy', True))

    def take_connections(self, share: int, shares: int) -> None:
        self._client.take_share(share, shares)

    def let_go_of_connections(self) -> None:
        self._client.close()

    def _authentication(self, url_user=None, url_password=None):
        """(headers that authenticate us, a description of the credentials: no secrets).

        ``user:password@`` in the cache URL counts as url_username/url_password unless
        those options are set."""
        http = self.options.http
        user, password = http.get('url_username'), http.get('url_password')
        token = http.get('bearer_token')
        if url_user is not None and not user and not token:
            user, password = url_user, url_password
        headers = dict(http.get('headers') or {})
        if user:
            headers['Authorization'] = basic_auth(user, password or '')
            return headers, 'basic auth as user %s' % user
        if token:
            headers['Authorization'] = 'Bearer %s' % token
            return headers, 'a bearer token'
        netrc_file = http.get('netrc_file')
        host = urlparse(self.url).hostname
        if netrc_file and host and os.path.exists(netrc_file):
            try:
                entry = netrc.netrc(netrc_file).authenticators(host)
            except (netrc.NetrcParseError, IOError, OSError) as error:
                raise CacheUnavailable('cannot read netrc file %s: %s' % (netrc_file, error),
                                       cache=self.url) from error
            if entry:
                headers['Authorization'] = basic_auth(entry[0], entry[2] or '')
                return headers, 'basic auth as user %s from %s' % (entry[0], netrc_file)
        return headers, 'no credentials'

    def _request(self, relative_url, headers=None, deadline=None):
        """The response to a GET, read through a Deadline (by default ``timeout`` from now)."""
        deadline = deadline or Deadline(self.options.timeout)
        url = '%s/%s' % (self._address, relative_url)
        try:
            response = deadline.call(lambda: self._client.get(
                url, headers, timeout=self.options.timeout, auth_headers=self._auth_headers))
            return DeadlineReader(response, deadline, self.options.timeout)
        except HttpStatusError as error:
            if error.code in (401, 407):
                raise CacheUnavailable('the cache refused the credentials (HTTP %d %s); tried: %s'
                                       % (error.code, error.reason, self.credentials),
                                       cache=self.url) from error
            raise

    def _read(self, relative_url, limit):
        try:
            response = self._request(relative_url)
        except HttpStatusError as error:
            if error.code in MISSING_STATUSES:
                return None
            raise
        try:
            declared = _content_length(response)
            if declared is not None and declared > limit:   # refused before it is read
                raise self._too_large(relative_url, None, declared)
            return read_at_most(response, limit)
        finally:
            response.close()

    def _open(self, relative_url, headers=None, deadline=None):
        try:
            return self._request(relative_url, headers, deadline)
        except HttpStatusError as error:
            if error.code in MISSING_STATUSES:
                raise CacheUnavailable('the cache lists %s but answers HTTP %d for it'
                                       % (relative_url, error.code), cache=self.url) from error
            raise

    def open_at(self, relative_url: str, offset: int, seconds: Optional[float] = None) -> Tuple[Any, int]:
        timeout = self.options.timeout
        deadline = Deadline(max(seconds or timeout, timeout), window=timeout,
                            window_bytes=timeout * LOW_SPEED)
        if not offset:
            return self._open(relative_url, deadline=deadline), 0
        response = self._open(relative_url, {'Range': 'bytes=%d-' % offset}, deadline)
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

    def __init__(self, substituter, relative_url, store_path=None, nar_size=None):
        self._cache = substituter
        self._url = relative_url
        self._store_path = store_path
        self._nar_size = nar_size
        self._offset = 0
        self._resumed = 0
        self._stream = substituter._with_retries(
            lambda: substituter.open_at(relative_url, 0, self._seconds())[0],
            relative_url, store_path)
        self._length = _content_length(self._stream)

    def _seconds(self):
        """How long the next attempt may last: the time-out, plus the rest of the NAR
        at the slowest rate we wait for."""
        rest = max(0, (self._nar_size or 0) - self._offset)
        return self._cache.options.timeout + float(rest) / NAR_MIN_RATE

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
            lambda: self._cache.open_at(self._url, self._offset, self._seconds()),
            self._url, self._store_path)
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


class Throttle(object):
    """The waits of one request that a cache throttles, within ``seconds`` in all.

    Each throttled answer is followed by the wait the cache asks for in ``Retry-After``
    (seconds or an HTTP date), or else by exponential back-off with jitter (from
    ``backoff``, at most THROTTLE_MAX_BACKOFF).  Once the next wait would end after
    ``seconds`` from the first throttled answer, the request is given up: ``next_wait``
    returns None and ``describe`` says why.
    """

    def __init__(self, seconds: float, backoff: float) -> None:
        self.seconds = max(0.0, float(seconds))
        self.backoff = backoff
        self.start = time.monotonic()
        self.answers = 0
        self.last = None          # the last throttled answer, described
        self.asked = None         # the wait it asked for (Retry-After), in seconds

    def next_wait(self, error: BaseException) -> Optional[float]:
        """Seconds to wait before the next attempt, or None when out of time."""
        self.answers += 1
        self.last = str(error) if getattr(error, 'throttled', False) else _describe(error)
        self.asked = retry_after_of(error)
        left = self.start + self.seconds - time.monotonic()
        if self.asked is not None:
            wait = max(self.asked, THROTTLE_MIN_WAIT)
            return wait if wait <= left else None
        wait = min(THROTTLE_MAX_BACKOFF, self.backoff * (2 ** (self.answers - 1)))
        wait = max(THROTTLE_MIN_WAIT, wait * random.uniform(0.5, 1.5))
        if left <= THROTTLE_MIN_WAIT:
            return None
        return min(wait, left)    # the last attempt comes at the deadline

    def describe(self, relative_url: str) -> str:
        asked = ''
        if self.asked is not None:
            asked = ', and asked to wait %g s more' % self.asked
        return ('the cache throttled %s (%s) %d time(s) over %.1f s%s, beyond throttle_timeout '
                '(%g s): realise on fewer hosts at once (forks, serial), put a CDN in front of '
                'the cache, or raise throttle_timeout'
                % (relative_url, self.last, self.answers, time.monotonic() - self.start, asked,
                   self.seconds))


def is_throttled(error: BaseException) -> bool:
    """Whether an error is the cache saying "too many requests: ask again later": HTTP
    429, a 503 that names a Retry-After, or an error marked ``throttled`` (S3 SlowDown)."""
    if isinstance(error, HttpStatusError):
        return error.code == 429 or (error.code == 503 and retry_after_of(error) is not None)
    return bool(getattr(error, 'throttled', False))


def retry_after_of(error: BaseException) -> Optional[float]:
    """The seconds an error's ``Retry-After`` asks to wait (None without one)."""
    if isinstance(error, HttpStatusError):
        headers = error.headers
        return parse_retry_after(headers.get('Retry-After') if headers is not None else None)
    return parse_retry_after(getattr(error, 'retry_after', None))


def parse_retry_after(value: Any, now: Optional[float] = None) -> Optional[float]:
    """Seconds from a ``Retry-After`` value: a number of seconds, or an HTTP date (0 once
    past); None when missing or not understood."""
    if value is None:
        return None
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:   # an HTTP date is always in GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Deadline(object):
    """The end of one request attempt, ``seconds`` from now.

    With ``window``, the answer must also bring ``window_bytes`` in every ``window``
    seconds from the start (the headers within the first): a server that drips is cut
    off after ``window`` seconds, however long the whole attempt may take.
    """

    def __init__(self, seconds, window=None, window_bytes=0):
        self.seconds = seconds
        self.start = time.monotonic()
        self.end = self.start + seconds
        self.window = window
        self.window_bytes = window_bytes
        self.window_end = self.start + (window or seconds)
        self.received = 0          # bytes in the current window

    def left(self):
        """Seconds the next wait may take; raises socket.timeout (a transient error)
        once the attempt is over."""
        now = time.monotonic()
        if now >= self.end:
            raise socket.timeout('no complete answer within %g s' % self.seconds)
        if self.window is None:
            return self.end - now
        while now >= self.window_end:
            if self.received < self.window_bytes:
                raise socket.timeout('less than %d bytes in %g s' % (self.window_bytes,
                                                                     self.window))
            self.window_end += self.window
            self.received = 0
        end = self.window_end
        if self.received >= self.window_bytes:   # this window is done: the next one counts
            end += self.window
        return min(self.end, end) - now

    def count(self, size):
        self.received += size

    def call(self, action):
        """``action()`` (connect, send, read the headers), given up at the deadline.

        It runs in a helper thread that closes whatever it opened if it ends too late:
        a server that drips its headers cannot hold us.
        """
        helper = _Helper(action)
        _HELPER_THREADS.run(helper)
        if not helper.done.wait(self.left()):
            with helper.lock:
                if not helper.done.is_set():
                    helper.abandoned = True
                    raise socket.timeout('no answer within %g s' % (self.window or self.seconds))
        if helper.error is not None:
            raise helper.error
        return helper.value


class _Helper(object):
    def __init__(self, action):
        self.action = action
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.abandoned = False
        self.value = self.error = None

    def run(self):
        value = error = None
        try:
            value = self.action()
        except BaseException as caught:  # handed to the waiting thread
            error = caught
        with self.lock:
            if not self.abandoned:
                self.value, self.error = value, error
                self.done.set()
                return
        if value is not None:
            try:
                value.close()
            except Exception:
                pass


class _HelperThreads(object):
    """The threads that run Deadline.call's actions, each kept for the next action:
    starting a thread for every request cost more than a narinfo request itself.  A
    thread stuck with an abandoned action is simply not there for the next one."""

    IDLE_MAX = 16

    def __init__(self):
        self._lock = threading.Lock()
        self._idle = []          # the inboxes of idle threads

    def forget(self):
        """In a forked child: the idle threads stayed in the parent."""
        self.__init__()

    def run(self, helper):
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            thread = threading.Thread(target=self._serve, args=(inbox,), name='nixcache-request')
            thread.daemon = True
            thread.start()
        inbox.put(helper)

    def _serve(self, inbox):
        while True:
            inbox.get().run()
            with self._lock:
                if len(self._idle) >= self.IDLE_MAX:
                    return
                self._idle.append(inbox)


_HELPER_THREADS = _HelperThreads()
if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_HELPER_THREADS.forget)


class DeadlineReader(object):
    """An HTTP response whose reads end at a Deadline, however slowly bytes arrive.

    Each read gathers socket reads (``read1``), each with the time left as its
    time-out, so a server sending a byte a second is cut off at the deadline; what
    arrived before is handed over, so a resumed download starts after it.
    """

    def __init__(self, response, deadline, read_timeout):
        self._response = response
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._socket = _socket_of(response)
        self.headers = getattr(response, 'headers', None)
        self.status = getattr(response, 'status', None)

    def getcode(self):
        return self._response.getcode()

    def read(self, size=-1):
        if size is None or size < 0:
            size = 1 << 18
        read1 = getattr(self._response, 'read1', None)
        if read1 is None:
            self._deadline.left()
            data = self._response.read(size)
            self._deadline.count(len(data))
            return data
        parts, have = [], 0
        while have < size:    # one socket read at a time, each within the time left
            try:
                left = self._deadline.left()
                self._set_socket_timeout(min(left, self._read_timeout))
                data = read1(size - have)
            except Exception:
                if parts:     # hand over what arrived; the next read fails again
                    break
                raise
            if not data:
                break
            self._deadline.count(len(data))
            parts.append(data)
            have += len(data)
        return parts[0] if len(parts) == 1 else b''.join(parts)

    def _set_socket_timeout(self, seconds):
        if self._socket is None:
            return
        try:
            self._socket.settimeout(seconds)
        except OSError:
            # Closed already: Python 3.13 closes the connection as soon as the whole body
            # is buffered, and then there is nothing left to wait for.
            self._socket = None

    def close(self):
        self._response.close()


def _socket_of(response):
    return getattr(response, 'socket', None)


def read_at_most(stream: Any, limit: int) -> bytes:
    """Read ``stream`` to its end, but no more than ``limit + 1`` bytes."""
    parts, size = [], 0
    while size <= limit:
        data = stream.read(limit + 1 - size)
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b''.join(parts)


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


def split_credentials(url: str) -> Tuple[str, Optional[str], Optional[str]]:
    """(``url`` without ``user:password@``, user, password); user is None without any."""
    parsed = urlparse(url)
    userinfo, at, host = parsed.netloc.rpartition('@')
    if not at:
        return url, None, None
    user, _sep, password = userinfo.partition(':')
    return urlunparse(parsed._replace(netloc=host)), unquote(user), unquote(password)


def redact_url(url: str) -> str:
    """``url`` with its password masked; a lone user part (often a token) is masked too."""
    parsed = urlparse(url)
    userinfo, at, host = parsed.netloc.rpartition('@')
    if not at:
        return url
    user, sep, _password = userinfo.partition(':')
    shown = '%s:%s' % (user, MASK) if sep else MASK
    return urlunparse(parsed._replace(netloc='%s@%s' % (shown, host)))


def url_secrets(urls: Iterable[str]) -> Set[str]:
    """The passwords (and lone user parts) in cache URLs, for Ansible's no_log values."""
    secrets = set()
    for url in urls:
        _address, user, password = split_credentials(url)
        if password:
            secrets.add(password)
        elif user:
            secrets.add(user)
    return secrets


def parse_cache_info(text: str) -> Dict[str, str]:
    """``Key: value`` lines of a nix-cache-info file as a dict."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(':')
        if sep:
            info[key.strip()] = value.strip()
    return info


def _is_transient(error):
    if isinstance(error, HttpStatusError):
        return error.code >= 500 or error.code in (408, 429)
    http_client = sys.modules.get('http.client')   # an HTTPException needs it loaded
    if http_client is not None and isinstance(error, http_client.HTTPException):
        return True     # a body cut short (IncompleteRead), a malformed answer
    # refused, reset, name resolution, a time-out
    return isinstance(error, (socket.timeout, ConnectionError, OSError))


def _describe(error):
    if isinstance(error, HttpStatusError):
        return 'HTTP %d %s' % (error.code, error.reason)
    return '%s: %s' % (type(error).__name__, error)


def _path_str(store_path):
    return None if store_path is None else str(store_path)
