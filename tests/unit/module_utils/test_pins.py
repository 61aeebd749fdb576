# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release manifests: where they are read from, and what a pin is."""

import pytest

from ansible_collections.nixcache.closure.plugins.module_utils.pins import (
    InvalidManifest,
    nix_system,
    parse_manifest,
    pin,
    split_url,
)

PATH = '/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8'


@pytest.mark.parametrize('url, expected', [
    ('/srv/releases/pins.json', ('file:///srv/releases', 'pins.json')),
    ('file:///srv/pins.json', ('file:///srv', 'pins.json')),
    ('https://releases.example.org/pins.json', ('https://releases.example.org', 'pins.json')),
    ('https://example.org/pg/15.8/pins.json', ('https://example.org/pg/15.8', 'pins.json')),
    ('s3://bucket/pg/pins.json?region=eu-west-1', ('s3://bucket/pg?region=eu-west-1', 'pins.json')),
])
def test_a_manifest_url_is_a_directory_and_a_file(url, expected):
    assert split_url(url) == expected


def test_a_directory_is_not_a_manifest():
    with pytest.raises(InvalidManifest):
        split_url('https://example.org/releases/')


def test_nix_systems_from_ansible_architectures():
    assert nix_system('x86_64') == 'x86_64-linux'
    assert nix_system('aarch64') == 'aarch64-linux'
    assert nix_system('arm64', 'Darwin') == 'aarch64-darwin'
    assert nix_system('sparc64') is None and nix_system(None) is None


def test_pins_and_what_a_missing_one_names():
    pins = parse_manifest({'version': 1, 'packages': {'psql_15': {'x86_64-linux': PATH}}}, 'm')
    assert str(pin(pins, 'psql_15', 'x86_64-linux', 'm')) == PATH
    with pytest.raises(InvalidManifest) as caught:
        pin(pins, 'psql_15', 'aarch64-linux', 'm')
    assert caught.value.found == 'x86_64-linux'
    with pytest.raises(InvalidManifest) as caught:
        pin(pins, 'groonga', 'x86_64-linux', 'm')
    assert caught.value.found == 'psql_15'


@pytest.mark.parametrize('document', [
    [], {'packages': []}, {'version': 2, 'packages': {}},
    {'packages': {'psql_15': PATH}},
    {'packages': {'psql_15': {'x86_64-linux': '/nix/store/../../etc/passwd'}}},
])
def test_what_is_not_a_manifest_is_refused(document):
    with pytest.raises(InvalidManifest):
        parse_manifest(document, 'm')
