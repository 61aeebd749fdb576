# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue between Ansible options and the library, shared by modules and lookups.

The cache options are declared once here (and documented once in the ``cache``
doc fragment); every plugin turns them into Substituter and TrustedKeys objects the
same way, and turns library errors into one failure shape.
"""

import contextlib
import os
import threading
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter
from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    CacheUnavailable,
    MissingLibrary,
    NixCacheError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.nixconf import (
    NIX_CONF,
    read_nix_conf,
    setting_list,
)
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import (
    STORE_DIR,
    StorePath,
)
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    DEFAULT_PRIORITY,
    THROTTLE_TIMEOUT,
    CacheOptions,
)

CACHE_ARGUMENT_SPEC = dict(
    substituters=dict(type='list', elements='str', default=[]),
    trusted_public_keys=dict(type='list', elements='str', default=[], no_log=False),
    require_sigs=dict(type='bool', default=True),
    timeout=dict(type='int', default=30),
    retries=dict(type='int', default=3),
    throttle_timeout=dict(type='int', default=THROTTLE_TIMEOUT),
    validate_certs=dict(type='bool', default=True),
    use_nix_conf=dict(type='bool', default=True),
    url_username=dict(type='str'),
    url_password=dict(type='str', no_log=True),
    bearer_token=dict(type='str', no_log=True),
    netrc_file=dict(type='path'),
    client_cert=dict(type='path'),
    client_key=dict(type='path', no_log=False),
    ca_path=dict(type='path'),
    use_proxy=dict(type='bool', default=True),
    aws_profile=dict(type='str', aliases=['profile']),
    aws_region=dict(type='str', aliases=['region']),
    endpoint_url=dict(type='str', aliases=['aws_endpoint_url']),
    access_key=dict(type='str', aliases=['aws_access_key_id', 'aws_access_key'], no_log=False),
    secret_key=dict(type='str', aliases=['aws_secret_access_key', 'aws_secret_key'], no_log=True),
    session_token=dict(type='str', aliases=['aws_session_token'], no_log=True),
)
DEFAULT_NETRC = '/etc/nix/netrc'  # Nix's default netrc-file


def cache_argument_spec(**extra: Any) -> Dict[str, Any]:
    """The shared cache options plus a plugin's own."""
    spec = dict((name, dict(option)) for name, option in CACHE_ARGUMENT_SPEC.items())
    spec.update(extra)
    return spec


def caches_from_options(options: Dict[str, Any], root: str = '/', store_dir: str = STORE_DIR, probe: bool = True) -> Tuple[List[Any], Any]:
    """Substituters and trusted keys from the cache options.

    Options left empty are taken from ``ROOT/etc/nix/nix.conf`` unless ``use_nix_conf``
    is off, as a Nix on that host would configure itself.  With ``probe``, each cache's
    ``nix-cache-info`` is read once, when the caches are first used (see ProbedCaches):
    a cache for another store directory is refused, and caches taken from nix.conf are
    ordered by their Priority (lower first), as Nix does; caches the user listed keep the
    user's order.
    """
    urls = [url for url in options.get('substituters') or [] if url]
    user_ordered = bool(urls)
    keys = list(options.get('trusted_public_keys') or [])
    settings = {}
    if options.get('use_nix_conf', True):
        settings = read_nix_conf(NIX_CONF, root=root)
        urls = urls or setting_list(settings, 'substituters')
        keys = keys or setting_list(settings, 'trusted-public-keys')
    if not urls:
        raise CacheUnavailable('no substituters given: set the substituters option '
                               '(for example https://cache.example.org or file:///var/cache/nix) '
                               'or substituters in %s' % NIX_CONF)
    cache_options = client_options(options, root=root, settings=settings)
    caches = [make_substituter(url, cache_options, store_dir) for url in urls]
    trusted = TrustedKeys(keys)
    if probe:
        caches = ProbedCaches(caches, store_dir, by_priority=not user_ordered)
    return caches, trusted


def client_options(options: Dict[str, Any], root: str = '/', settings: Optional[Dict[str, str]] = None) -> Any:
    """How to reach caches (and other files beside them) from the cache options: time-outs,
    retries, HTTP credentials and certificates, S3 settings.  ``settings`` are nix.conf's."""
    settings = settings or {}
    if options.get('netrc_file') and not os.path.isfile(under_root(root, options['netrc_file'])):
        raise CacheUnavailable('the netrc_file %s does not exist' % options['netrc_file'])
    netrc_file = options.get('netrc_file') or settings.get('netrc-file') or DEFAULT_NETRC
    http = dict(url_username=options.get('url_username'), url_password=options.get('url_password'),
                bearer_token=options.get('bearer_token'), client_cert=options.get('client_cert'),
                client_key=options.get('client_key'), ca_path=options.get('ca_path'),
                use_proxy=options.get('use_proxy', True),
                netrc_file=under_root(root, netrc_file))
    aws = dict(profile=options.get('aws_profile'), region=options.get('aws_region'),
               endpoint_url=options.get('endpoint_url'), access_key=options.get('access_key'),
               secret_key=options.get('secret_key'), session_token=options.get('session_token'))
    return CacheOptions(timeout=options.get('timeout', 30), retries=options.get('retries', 3),
                        throttle_timeout=options.get('throttle_timeout', THROTTLE_TIMEOUT),
                        validate_certs=options.get('validate_certs', True),
                        http=dict((k, v) for k, v in http.items() if v is not None),
                        aws=dict((k, v) for k, v in aws.items() if v))


def probe_caches(caches: Sequence[Any], store_dir: str = STORE_DIR, by_priority: bool = False) -> Sequence[Any]:
    """Read every cache's nix-cache-info once: refuse a cache of another store directory,
    and order by Priority when asked.  A cache that does not answer is kept (marked
    unavailable), so that the others can still serve."""
    for cache in caches:
        try:
            info = cache.cache_info()
        except CacheUnavailable:
            if cache.unavailable:
                continue
            raise
        if info.get('StoreDir', store_dir) != store_dir:
            raise CacheUnavailable('the cache holds paths for another store directory',
                                   cache=cache.url, expected=store_dir, found=info['StoreDir'])
    if by_priority:
        caches = sorted(caches, key=lambda cache: cache.priority() if not cache.unavailable
                        else DEFAULT_PRIORITY)
    return caches


class ProbedCaches(object):
    """A sequence of caches probed (``probe_caches``) the first time it is used, so that
    a run that finds every path valid asks no cache anything."""

    def __init__(self, caches: Sequence[Any], store_dir: str = STORE_DIR, by_priority: bool = False) -> None:
        self._unprobed = list(caches)
        self._store_dir = store_dir
        self._by_priority = by_priority
        self._probed = None
        self._lock = threading.Lock()

    def _caches(self):
        with self._lock:   # planner threads may need them at once: one probe
            if self._probed is None:
                self._probed = list(probe_caches(self._unprobed, self._store_dir,
                                                 self._by_priority))
            return self._probed

    def __iter__(self):
        return iter(self._caches())

    def __len__(self):
        return len(self._caches())

    def __getitem__(self, index):
        return self._caches()[index]


def parse_store_paths(texts: Iterable[str], store_dir: str = STORE_DIR) -> List[Any]:
    """StorePaths from user input, de-duplicated, in the order given."""
    paths = []
    for text in texts:
        path = StorePath.parse(text, store_dir)
        if path not in paths:
            paths.append(path)
    return paths


def failure(error: BaseException) -> Dict[str, Any]:
    """``fail_json`` keyword arguments for a library error."""
    result = dict(msg=str(error), error=type(error).__name__)
    if isinstance(error, NixCacheError):
        result.update(error.details())
    elif isinstance(error, OSError):
        result['msg'] = '%s: %s' % (os.fsdecode(error.filename) if error.filename is not None
                                    else 'the store', error.strerror or error)
        if error.filename is not None:
            result['path'] = os.fsdecode(error.filename)
    return result


@contextlib.contextmanager
def module_errors(module: Any, **extra: Any) -> Iterator[None]:
    """The one edge between the library and Ansible: a library error (or a stray OSError)
    raised inside the block ends the module with ``fail_json``, its message and context
    (path, cache, expected, found), plus ``extra`` fields; never with a traceback."""
    try:
        yield
    except (NixCacheError, OSError) as error:
        arguments = dict(extra)
        arguments.update(failure(error))
        if isinstance(error, MissingLibrary):
            arguments.update(msg=missing_required_lib(error.library, reason=error.reason),
                             exception=error.exception)
        module.fail_json(**arguments)
