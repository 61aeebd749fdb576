# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the cache lookups share on the controller: their options become caches and
trusted keys the same way the module's do, and library errors become lookup errors."""

import contextlib

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.nixcache.closure.plugins.module_utils.common import (
    CACHE_ARGUMENT_SPEC,
    caches_from_options,
)
from ansible_collections.nixcache.closure.plugins.module_utils.errors import NixCacheError

VARIABLE_PREFIX = 'nixcache_'


class CacheLookupBase(LookupBase):
    """A lookup that reads Nix binary caches with the options of the ``cache`` fragment."""

    def cache_options(self, variables, kwargs):
        """Set the lookup's options; the cache options as the module would get them.

        An option may come from a keyword, a ``nixcache_*`` variable or a ``NIXCACHE_*``
        environment variable, in this order; the variables are templated first."""
        own = dict((name, self._templar.template(value)) for name, value in (variables or {}).items()
                   if name.startswith(VARIABLE_PREFIX))
        self.set_options(var_options=own, direct=kwargs)
        return dict((name, self.get_option(name)) for name in CACHE_ARGUMENT_SPEC)

    def caches(self, options, probe=True):
        """(substituters, trusted keys) for these options."""
        return caches_from_options(options, probe=probe)


@contextlib.contextmanager
def lookup_errors():
    """Turn the library's errors into lookup errors with the same message."""
    try:
        yield
    except NixCacheError as error:
        raise AnsibleLookupError(str(error)) from error
