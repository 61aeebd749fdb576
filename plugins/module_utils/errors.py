# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One exception family for everything that can go wrong while realising a closure.

Every error carries what a user needs to act on it: the store path, the cache,
and what was expected versus what was found.  Plugins turn it into a failure
with ``error.details()``; nothing else in the library knows about Ansible.
"""

import contextlib
from typing import Any, Iterator


class NixCacheError(Exception):
    """Base class: a message plus optional context fields."""

    def __init__(self, message, path=None, cache=None, expected=None, found=None):
        super(NixCacheError, self).__init__(message)
        self.message = message
        self.path = path
        self.cache = cache
        self.expected = expected
        self.found = found

    def details(self):
        """The context fields that are set, as a dict (for fail_json)."""
        fields = (('path', self.path), ('cache', self.cache),
                  ('expected', self.expected), ('found', self.found))
        return dict((key, value) for key, value in fields if value is not None)

    def __str__(self):
        context = ', '.join('%s: %s' % item for item in self.details().items())
        return '%s (%s)' % (self.message, context) if context else self.message


class InvalidStorePath(NixCacheError):
    """A store path or name that is malformed or could escape the store."""


class InvalidHash(NixCacheError):
    """A hash string (Nix base32, base16, base64 or SRI) that does not parse."""


class InvalidNarInfo(NixCacheError):
    """A .narinfo that is malformed or describes another path than the one asked for."""


class InvalidKey(NixCacheError):
    """A public or secret key that does not parse."""


class UntrustedPath(NixCacheError):
    """No signature of the path verifies under a trusted key."""


class InvalidNar(NixCacheError):
    """A NAR stream that is malformed or unsafe to unpack."""


class HashMismatch(NixCacheError):
    """Content whose hash or size differs from what the cache promised."""


class UnsupportedCompression(NixCacheError):
    """A compression method this host cannot decompress."""


class CacheUnavailable(NixCacheError):
    """A cache that could not be reached or answered with an error."""


class MissingLibrary(CacheUnavailable):
    """A cache that needs a Python package this host lacks (boto3 for ``s3://``).

    ``library`` names the package, ``reason`` what it is for, ``exception`` the import's
    traceback text."""

    def __init__(self, message, library, reason, exception=None, **context):
        super(MissingLibrary, self).__init__(message, **context)
        self.library = library
        self.reason = reason
        self.exception = exception


class PathNotInCaches(NixCacheError):
    """No configured cache has the path."""


class InvalidNixConf(NixCacheError):
    """A nix.conf line or include that Nix itself would reject."""


class InvalidSbomOption(NixCacheError):
    """An SBOM option (format, timestamp, CPE vendor) that cannot be honoured."""


class StoreError(NixCacheError):
    """A failure of the local store: locking, unpacking, the database."""


class InsufficientSpace(StoreError):
    """Less free space under the store than the closure needs."""


@contextlib.contextmanager
def file_errors(what: str, path: Any) -> Iterator[None]:
    """Turn an OSError into a StoreError that names the file (or else ``path``)."""
    try:
        yield
    except OSError as error:
        name = error.filename if error.filename is not None else path
        if isinstance(name, bytes):
            name = name.decode('utf-8', 'backslashreplace')
        raise StoreError('%s: %s' % (what, error.strerror or error), path=str(name)) from error
