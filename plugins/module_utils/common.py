# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Glue between Ansible options and the library, shared by modules and lookups.

The cache options are declared once here (and documented once in the ``cache``
doc fragment); every plugin turns them into Substituter and TrustedKeys objects the
same way, and turns library errors into one failure shape.
"""

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    NixCacheError,
    CacheUnavailable,
)
from ansible_collections.nixcache.closure.plugins.module_utils.nixconf import (
    NIX_CONF,
    read_nix_conf,
    setting_list,
)
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import (
    STORE_DIR,
    StorePath,
)
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import (
    CacheOptions,
    make_substituter,
)

CACHE_ARGUMENT_SPEC = dict(
    substituters=dict(type='list', elements='str', default=[]),
    trusted_public_keys=dict(type='list', elements='str', default=[], no_log=False),
    require_sigs=dict(type='bool', default=True),
    timeout=dict(type='int', default=30),
    retries=dict(type='int', default=3),
    validate_certs=dict(type='bool', default=True),
    use_nix_conf=dict(type='bool', default=True),
)


def cache_argument_spec(**extra):
    """The shared cache options plus a plugin's own."""
    spec = dict((name, dict(option)) for name, option in CACHE_ARGUMENT_SPEC.items())
    spec.update(extra)
    return spec


def cache_options_of(plugin):
    """The cache options of a controller plugin (lookup), as a dict."""
    return dict((name, plugin.get_option(name)) for name in CACHE_ARGUMENT_SPEC)


def caches_from_options(options, root='/', store_dir=STORE_DIR):
    """Substituters (in the order given) and trusted keys from the cache options.

    Options left empty are taken from ``ROOT/etc/nix/nix.conf`` unless ``use_nix_conf``
    is off, as a Nix on that host would configure itself.
    """
    urls = [url for url in options.get('substituters') or [] if url]
    keys = list(options.get('trusted_public_keys') or [])
    if options.get('use_nix_conf', True) and not (urls and keys):
        settings = read_nix_conf(NIX_CONF, root=root)
        urls = urls or setting_list(settings, 'substituters')
        keys = keys or setting_list(settings, 'trusted-public-keys')
    if not urls:
        raise CacheUnavailable('no substituters given: set the substituters option '
                               '(for example https://cache.example.org or file:///var/cache/nix) '
                               'or substituters in %s' % NIX_CONF)
    cache_options = CacheOptions(timeout=options.get('timeout', 30),
                                 retries=options.get('retries', 3),
                                 validate_certs=options.get('validate_certs', True))
    caches = [make_substituter(url, cache_options, store_dir) for url in urls]
    trusted = TrustedKeys(keys)
    return caches, trusted


def parse_store_paths(texts, store_dir=STORE_DIR):
    """StorePaths from user input, de-duplicated, in the order given."""
    paths = []
    for text in texts:
        path = StorePath.parse(text, store_dir)
        if path not in paths:
            paths.append(path)
    return paths


def failure(error):
    """``fail_json`` keyword arguments for a library error."""
    result = dict(msg=str(error), error=type(error).__name__)
    if isinstance(error, NixCacheError):
        result.update(error.details())
    return result
