# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read the cache settings a host's ``nix.conf`` already declares.

Nix's rules: ``name = value`` lines, ``#`` starts a comment, ``include FILE`` and
``!include FILE`` (missing files allowed) read another file relative to the including
one, a later assignment replaces an earlier one, and ``extra-NAME`` appends to NAME.
"""

import os
from typing import Dict, List

from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidNixConf
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root

NIX_CONF = '/etc/nix/nix.conf'
# old names Nix still accepts for the settings we read
ALIASES = {
    'binary-caches': 'substituters',
    'binary-cache-public-keys': 'trusted-public-keys',
}
MAX_INCLUDE_DEPTH = 16


def read_nix_conf(path: str = NIX_CONF, root: str = '/') -> Dict[str, str]:
    """Settings of ``path`` (looked up under ``root``) as ``{name: value string}``.

    Returns ``{}`` when the file does not exist.  Includes are resolved under ``root`` too.
    """
    settings = {}
    real_path = under_root(root, path)
    if os.path.exists(real_path):
        _apply_file(real_path, root, settings, depth=0)
    return settings


def setting_list(settings: Dict[str, str], name: str) -> List[str]:
    """A whitespace-separated list setting, ``extra-`` values included."""
    return settings.get(name, '').split()


def _apply_file(real_path, root, settings, depth):
    if depth > MAX_INCLUDE_DEPTH:
        raise InvalidNixConf('includes nested too deep', path=real_path)
    with open(real_path) as handle:
        lines = handle.read().splitlines()
    for number, line in enumerate(lines, 1):
        tokens = line.split('#', 1)[0].split()
        if not tokens:
            continue
        where = '%s:%d' % (real_path, number)
        if tokens[0] in ('include', '!include'):
            if len(tokens) != 2:
                raise InvalidNixConf('include takes exactly one file', path=where)
            included = _resolve_include(tokens[1], real_path, root)
            if os.path.exists(included):
                _apply_file(included, root, settings, depth + 1)
            elif tokens[0] == 'include':
                raise InvalidNixConf('included file not found', path=where, found=tokens[1])
            continue
        if len(tokens) < 2 or tokens[1] != '=':
            raise InvalidNixConf('expected "name = value"', path=where, found=line.strip())
        _assign(settings, tokens[0], ' '.join(tokens[2:]))


def _assign(settings, name, value):
    append = name.startswith('extra-')
    if append:
        name = name[len('extra-'):]
    name = ALIASES.get(name, name)
    if append and settings.get(name):
        settings[name] = settings[name] + ' ' + value
    else:
        settings[name] = value


def _resolve_include(target, including_file, root):
    if os.path.isabs(target):
        return under_root(root, target)
    return os.path.normpath(os.path.join(os.path.dirname(including_file), target))
