# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Binary caches in S3 buckets, addressed as Nix addresses them.

``s3://bucket?region=eu-west-1&endpoint=minio.example:9000&scheme=http&profile=name``

URL parameters win over the ``aws`` settings of CacheOptions (``profile``, ``region``,
``endpoint_url``, ``access_key``, ``secret_key``, ``session_token``).  Without explicit
keys boto3's usual credential chain applies: environment, profile files, instance
role.  Parameters Nix knows but this reader has no use for (``multipart-upload``,
``compression`` and the like) are ignored, as Nix ignores the ones a store does not use.

A missing key, and a 403 (what S3 answers for a missing key to a reader without
ListBucket), means "not in this cache", as for Nix.  Broken connections and 5xx
answers are raised as ConnectionError so that the retry loop of Substituter treats
them as transient; every other S3 error is a CacheUnavailable naming the bucket and
the AWS error code.
"""

import threading
import traceback
from typing import Any, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlparse

from ansible_collections.nixcache.closure.plugins.module_utils.errors import CacheUnavailable, MissingLibrary
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import CacheOptions, Substituter, read_at_most

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError:
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None

BOTO3_MISSING = ('the s3:// cache needs boto3 for the Python that runs the module '
                 '(`pip install boto3` or Debian\'s `python3-boto3`)')

# AWS error codes that mean "this cache does not have that file"
MISSING_CODES = ('NoSuchKey', '404', '403', 'AccessDenied')
# AWS error codes worth another attempt besides any 5xx answer
TRANSIENT_CODES = ('SlowDown', 'Throttling', 'ThrottlingException', 'RequestTimeout',
                   'RequestTimeTooSkewed', 'InternalError', 'ServiceUnavailable')
# AWS error codes that ask for fewer requests: waited out within throttle_timeout
THROTTLE_CODES = ('SlowDown', 'Throttling', 'ThrottlingException', 'RequestLimitExceeded',
                  'TooManyRequestsException')


class S3TransientError(ConnectionError):
    """A failure of S3 or of the connection to it that may pass (retried).

    ``throttled``: S3 asked for fewer requests (SlowDown, HTTP 429), which is waited out
    within throttle_timeout rather than counted against the retries; ``retry_after``: the
    Retry-After header of that answer, if any."""

    def __init__(self, message: str, throttled: bool = False, retry_after: Optional[str] = None) -> None:
        super(S3TransientError, self).__init__(message)
        self.throttled = throttled
        self.retry_after = retry_after


class S3Substituter(Substituter):
    """A cache in an S3 bucket (or any S3-compatible service), read with boto3."""

    fork_friendly = False   # a boto3 client is not fork-safe, and a new one per process is slow

    def __init__(self, url: str, options: Optional[CacheOptions] = None, store_dir: str = STORE_DIR) -> None:
        super(S3Substituter, self).__init__(url, options, store_dir)
        parsed = urlparse(self.url)
        self.bucket = unquote(parsed.netloc)
        if not self.bucket:
            raise CacheUnavailable('an s3:// cache URL needs a bucket name, as in s3://bucket?region=eu-west-1',
                                   cache=self.url)
        # an optional key prefix after the bucket name
        self.prefix = unquote(parsed.path).strip('/')
        params = dict((key, values[-1]) for key, values in parse_qs(parsed.query).items())
        aws = dict(getattr(self.options, 'aws', None) or {})
        self.profile = params.get('profile') or aws.get('profile') or None
        self.region = params.get('region') or aws.get('region') or None
        endpoint = params.get('endpoint') or aws.get('endpoint_url') or None
        if endpoint and '://' not in endpoint:
            endpoint = '%s://%s' % (params.get('scheme') or 'https', endpoint)
        self.endpoint_url = endpoint
        self._access_key = aws.get('access_key') or None
        self._secret_key = aws.get('secret_key') or None
        self._session_token = aws.get('session_token') or None
        self.credentials = self._describe_credentials()
        self._client_lock = threading.Lock()
        self._s3 = None

    def _describe_credentials(self):
        """Where the credentials come from, for error messages (never the secret)."""
        if self._access_key:
            return 'access key %s from the aws options' % self._access_key
        if self.profile:
            return 'profile %s' % self.profile
        return 'the default AWS credential chain'

    def _client(self):
        """The boto3 S3 client, built on first use (thread-safe)."""
        with self._client_lock:
            if self._s3 is None:
                if not HAS_BOTO3:
                    raise MissingLibrary(BOTO3_MISSING, 'boto3', 'for s3:// caches',
                                         exception=BOTO3_IMPORT_ERROR, cache=self.url)
                try:
                    session = boto3.session.Session(
                        profile_name=self.profile,
                        aws_access_key_id=self._access_key,
                        aws_secret_access_key=self._secret_key,
                        aws_session_token=self._session_token,
                        region_name=self.region)
                    # one attempt per call: Substituter._with_retries does the retrying
                    config = botocore.config.Config(connect_timeout=self.options.timeout,
                                                    read_timeout=self.options.timeout,
                                                    retries={'max_attempts': 1})
                    self._s3 = session.client('s3', endpoint_url=self.endpoint_url, config=config,
                                              verify=self.options.validate_certs)
                except botocore.exceptions.BotoCoreError as error:  # unknown profile, bad endpoint
                    raise CacheUnavailable('cannot set up the S3 client for bucket %s: %s'
                                           % (self.bucket, error), cache=self.url) from error
            return self._s3

    def _key(self, relative_url):
        return '%s/%s' % (self.prefix, relative_url) if self.prefix else relative_url

    def _get(self, relative_url, offset=0):
        """The get_object response; S3 errors translated (see the module docstring)."""
        args = dict(Bucket=self.bucket, Key=self._key(relative_url))
        if offset:
            args['Range'] = 'bytes=%d-' % offset
        client = self._client()
        try:
            return client.get_object(**args)
        except botocore.exceptions.ClientError as error:
            raise self._translate(error, relative_url) from error
        except _transient_errors() as error:
            raise S3TransientError(str(error)) from error
        except botocore.exceptions.BotoCoreError as error:  # no credentials, unknown profile
            raise CacheUnavailable('cannot read %s from S3 bucket %s: %s; credentials: %s'
                                   % (relative_url, self.bucket, error, self.credentials),
                                   cache=self.url) from error

    def _translate(self, error, relative_url):
        """The exception to raise for a ClientError: _Missing, transient or CacheUnavailable."""
        details = error.response.get('Error') or {}
        code = str(details.get('Code') or '')
        status = (error.response.get('ResponseMetadata') or {}).get('HTTPStatusCode') or 0
        if code in MISSING_CODES:
            return _Missing(code)
        if code in THROTTLE_CODES or status == 429:
            headers = (error.response.get('ResponseMetadata') or {}).get('HTTPHeaders') or {}
            return S3TransientError('S3 answered %s (HTTP %s) for %s' % (code, status, relative_url),
                                    throttled=True, retry_after=headers.get('retry-after'))
        if status >= 500 or code in TRANSIENT_CODES:
            return S3TransientError('S3 answered %s (HTTP %s) for %s' % (code, status, relative_url))
        message = details.get('Message') or ''
        return CacheUnavailable('S3 bucket %s refused %s: %s%s; credentials: %s'
                                % (self.bucket, relative_url, code or 'HTTP %s' % status,
                                   ' (%s)' % message if message else '', self.credentials),
                                cache=self.url)

    def _read(self, relative_url, limit):
        try:
            response = self._get(relative_url)
        except _Missing:
            return None
        if (response.get('ContentLength') or 0) > limit:   # refused before it is read
            response['Body'].close()
            raise self._too_large(relative_url, None, response['ContentLength'])
        body = _Body(response['Body'])
        try:
            return read_at_most(body, limit)
        finally:
            body.close()

    def _open(self, relative_url):
        return self.open_at(relative_url, 0)[0]

    def open_at(self, relative_url: str, offset: int, seconds: Optional[float] = None) -> Tuple[Any, int]:
        try:
            response = self._get(relative_url, offset)
        except _Missing as missing:
            raise CacheUnavailable('the cache lists %s but does not hold it (S3 answered %s)'
                                   % (relative_url, missing), cache=self.url) from missing
        content_range = response.get('ContentRange') or ''
        if offset and content_range.startswith('bytes %d-' % offset):
            return _Body(response['Body']), offset
        return _Body(response['Body']), 0


class _Missing(Exception):
    """A key the bucket does not hold (internal to this module)."""


class _Body(object):
    """A StreamingBody whose connection errors are ConnectionErrors (so: transient)."""

    def __init__(self, stream):
        self._stream = stream

    def read(self, size=-1):
        try:
            return self._stream.read(None if size is None or size < 0 else size)
        except _transient_errors() as error:
            raise S3TransientError(str(error)) from error

    def close(self):
        self._stream.close()


def _transient_errors():
    """botocore's exception classes for broken connections, time-outs and cut bodies."""
    exc = botocore.exceptions
    return (exc.ConnectionError, exc.HTTPClientError, exc.IncompleteReadError)


def s3_substituter(url: str, options: Any = None, store_dir: str = STORE_DIR) -> S3Substituter:
    """The Substituter for an ``s3://`` cache URL."""
    return S3Substituter(url, options, store_dir)
