# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    """Options shared by everything that reads a Nix binary cache."""

    DOCUMENTATION = r'''
options:
  substituters:
    description:
      - Binary cache URLs, asked in this order for every store path.
      - When empty and O(use_nix_conf) is on, the C(substituters) (and C(extra-substituters))
        of the host's C(/etc/nix/nix.conf) are used.
      - C(file:///dir) reads a cache written by C(nix copy --to file:///dir).
      - C(http://host/prefix) and C(https://host/prefix) read a cache served over HTTP(S).
    type: list
    elements: str
    default: []
  trusted_public_keys:
    description:
      - Public keys whose signatures make a path trusted, as in C(nix.conf), for example
        C(cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=).
      - A key that does not parse (wrong length, a stray character) fails the task and is named.
      - When empty and O(use_nix_conf) is on, the C(trusted-public-keys) of the host's
        C(/etc/nix/nix.conf) are used.
    type: list
    elements: str
    default: []
  require_sigs:
    description:
      - Refuse any path that carries no signature by one of O(trusted_public_keys).
      - Turn this off only for caches you control end to end; the NAR hash is checked either way.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for a cache to answer a request.
    type: int
    default: 30
  retries:
    description:
      - How many times to retry a request that failed for a transient reason (connection refused
        or reset, time-out, HTTP 5xx), with exponential back-off and jitter.
    type: int
    default: 3
  validate_certs:
    description: Verify the TLS certificates of C(https://) caches.
    type: bool
    default: true
  use_nix_conf:
    description:
      - Fill O(substituters) and O(trusted_public_keys), when they are empty, from
        C(/etc/nix/nix.conf) (under O(ignore:root) for the module), following its
        C(include), C(!include) and C(extra-) settings as Nix does.
    type: bool
    default: true
'''
