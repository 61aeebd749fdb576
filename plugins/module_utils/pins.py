# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pins: the store paths a release built for each system, read from a JSON release manifest.

A release manifest, as a CI job writes it after ``nix build`` on each architecture::

    {
      "version": 1,
      "packages": {
        "psql_15": {
          "x86_64-linux": "/nix/store/<hash>-postgresql-and-plugins-15.8",
          "aarch64-linux": "/nix/store/<hash>-postgresql-and-plugins-15.8"
        },
        "pg_prove": {"x86_64-linux": "/nix/store/<hash>-pg_prove-3.36"}
      }
    }

It may lie in a file, behind an ``http(s)://`` URL or in an ``s3://bucket/key`` object, and
is read with the same clients (credentials, certificates, S3 settings) as the caches.
"""

import json
import os
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlparse, urlunparse

from ansible_collections.nixcache.closure.plugins.module_utils.errors import (
    InvalidStorePath,
    NixCacheError,
)
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import STORE_DIR, StorePath
from ansible_collections.nixcache.closure.plugins.module_utils.caches import make_substituter

MANIFEST_VERSION = 1
# Nix's name for the machine types Ansible reports (ansible_facts.architecture).
ARCHITECTURES = {
    'x86_64': 'x86_64', 'amd64': 'x86_64',
    'aarch64': 'aarch64', 'arm64': 'aarch64',
    'armv7l': 'armv7l', 'armv6l': 'armv6l',
    'i386': 'i686', 'i686': 'i686',
    'riscv64': 'riscv64', 'ppc64le': 'powerpc64le', 's390x': 's390x',
}


class InvalidManifest(NixCacheError):
    """A release manifest that cannot be read, is not one, or lacks a pin."""


def nix_system(architecture: Optional[str], kernel: str = 'linux') -> Optional[str]:
    """``x86_64-linux`` from ``x86_64``; None for a machine type Nix has no name for."""
    machine = ARCHITECTURES.get((architecture or '').lower())
    return '%s-%s' % (machine, kernel.lower()) if machine else None


def split_url(url: str) -> Tuple[str, str]:
    """(URL of the directory, file name) of a manifest URL or file path."""
    if '://' not in url:
        url = 'file://' + os.path.abspath(url)
    parsed = urlparse(url)
    directory, name = parsed.path.rsplit('/', 1) if '/' in parsed.path else ('', parsed.path)
    if not name:
        raise InvalidManifest('the manifest URL names a directory, not a file', found=url)
    return urlunparse(parsed._replace(path=directory or '/')).rstrip('/'), name


def read_manifest(url: str, options: Any = None, store_dir: str = STORE_DIR) -> Dict[str, Dict[str, StorePath]]:
    """The release manifest at ``url``: {package: {system: StorePath}}."""
    directory, name = split_url(url)
    text = make_substituter(directory, options, store_dir).read_text(name)
    if text is None:
        raise InvalidManifest('the release manifest does not exist', path=url)
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidManifest('the release manifest is not JSON: %s' % error, path=url) from error
    return parse_manifest(document, url, store_dir)


def parse_manifest(document: Any, source: str, store_dir: str = STORE_DIR) -> Dict[str, Dict[str, StorePath]]:
    if not isinstance(document, dict) or not isinstance(document.get('packages'), dict):
        raise InvalidManifest('not a release manifest: expected {"version": 1, "packages": '
                              '{NAME: {SYSTEM: STORE_PATH}}}', path=source)
    if document.get('version', MANIFEST_VERSION) != MANIFEST_VERSION:
        raise InvalidManifest('unsupported release manifest version', path=source,
                              expected=str(MANIFEST_VERSION), found=str(document.get('version')))
    pins = {}
    for package, systems in document['packages'].items():
        if not isinstance(systems, dict):
            raise InvalidManifest('a package maps systems to store paths', path=source,
                                  found='%s: %s' % (package, json.dumps(systems)))
        pins[package] = {}
        for system, text in systems.items():
            try:
                pins[package][system] = StorePath.parse(text, store_dir)
            except InvalidStorePath as error:
                raise InvalidManifest('%s for %s is not a store path: %s'
                                      % (package, system, error.message), path=source,
                                      found=repr(text)) from error
    return pins


def pin(pins: Dict[str, Dict[str, StorePath]], package: str, system: str, source: str) -> StorePath:
    """The store path of ``package`` for ``system``; a clear error naming what there is."""
    if package not in pins:
        raise InvalidManifest('no package %s in the release manifest' % package, path=source,
                              expected=package, found=', '.join(sorted(pins)) or 'no packages')
    systems = pins[package]
    if system not in systems:
        raise InvalidManifest('no %s build of %s in the release manifest' % (system, package),
                              path=source, expected=system,
                              found=', '.join(sorted(systems)) or 'no systems')
    return systems[system]
