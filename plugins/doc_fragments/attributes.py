# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    """The attributes every module documents; each module states its support."""

    DOCUMENTATION = r'''
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second run
        reports no change.
'''

    # The modules that read caches; meta/runtime.yml lists the same group.
    ACTION_GROUP = r'''
options: {}
attributes:
  action_group:
    description:
      - Use C(group/nixcache.closure.cache) in C(module_defaults) to set the cache options
        once for this module and the others of the group.
    support: full
    membership:
      - nixcache.closure.cache
'''
