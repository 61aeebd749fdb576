#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: postgres_upgrade
short_description: Upgrade a PostgreSQL cluster to a new major version with pg_upgrade, recorded so it can resume or roll back
version_added: 0.2.0
description:
  - Upgrades the cluster in O(data_directory) to the major version of the programs in
    O(new_bindir) (a realised closure, beside the old one) with the new build's
    C(pg_upgrade). The cluster keeps its path, so afterwards O(data_directory) holds the new
    cluster, its server runs on the old port with the old start options
    (C(postmaster.opts)), and the old cluster is kept at C(<data_directory>.<old major>) until
    O(state=cleaned).
  - "Steps: pre-flight checks that refuse before anything changes (no downgrade; every
    library the old cluster uses, from C(pg_proc.probin) and C(shared_preload_libraries),
    present in the new build; enough free space for a copy; a locale provider the new
    build has); C(initdb) of the new cluster at C(<data_directory>.<new major>) matching the old
    one's install user, encoding, locale, data checksums and WAL segment size (with
    C(--no-data-checksums) for 18 and later when the old cluster has none); the old
    configuration files copied over; C(pg_upgrade --check) with the old server still
    running; stop; C(pg_upgrade); the data directories swapped; the new server started;
    C(update_extensions.sql); C(vacuumdb --all --analyze-in-stages) (not for 18 and later,
    which carry the statistics over)."
  - Each step is recorded in C(<data_directory>.upgrade/state.json). A run after a crash
    (the play or C(pg_upgrade) killed, power lost) finds the record; before the transfer
    finished it puts the old cluster back and starts again, after it it finishes. A run
    after success changes nothing.
  - O(state=rolled_back) puts the old cluster back at O(data_directory) and starts it. With
    C(copy) and C(clone) this is always possible, and the writes made on the new cluster
    since are lost (its directory is kept at C(<data_directory>.rolled-back-<new major>)). With
    C(link) it is possible only until the new cluster has started, then refused.
  - Runs the servers and tools as O(os_user); runs as root.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
  - Both builds on the host, each a directory of PostgreSQL programs; the old one is
    found from the running server (or its C(postmaster.opts)) unless O(old_bindir) is set.
extends_documentation_fragment:
  - nixcache.closure.attributes
options:
  data_directory:
    description: The cluster's data directory, as the server runs it (its real path is used).
    type: path
    required: true
  new_bindir:
    description:
      - The new major's programs, for example
        C(/nix/store/<hash>-postgresql-and-plugins-17.11/lib/postgresql/17/bin). It must hold
        every program C(pg_upgrade) needs (C(postgres), C(pg_ctl), C(initdb), C(pg_dump),
        C(psql), C(vacuumdb), C(pg_upgrade), ...). Required with O(state=upgraded).
    type: path
  old_bindir:
    description: The old cluster's programs. Default the directory of the running server's
      program, or of the one in C(postmaster.opts).
    type: path
  method:
    description:
      - How C(pg_upgrade) moves the data. C(copy) leaves the old cluster untouched (needs as
        much free space as its data). C(clone) makes reflinks (Btrfs, XFS), as fast as
        C(link) and as safe as C(copy). C(link) makes hard links; once the new cluster has
        started there is no way back to the old one but a backup.
    type: str
    choices: [copy, clone, link]
    default: copy
  state:
    description:
      - C(upgraded) upgrades (or finishes or resumes an upgrade); C(rolled_back) puts the old
        cluster back; C(cleaned) removes the old cluster kept after a finished upgrade.
    type: str
    choices: [upgraded, rolled_back, cleaned]
    default: upgraded
  pinned_major:
    description:
      - With O(state=rolled_back), the major version of the build the host runs afterwards
        (the pin the rollback comes with). The rollback is refused, changing nothing, unless
        it is the old cluster's major.
    type: int
  os_user:
    description: The operating system user of the server.
    type: str
    default: postgres
  login_user:
    description: A superuser role to connect as over the server's socket for the pre-flight
      queries (the install user is read from the cluster).
    type: str
    default: postgres
  environment:
    description: Environment of the servers and tools, such as C(LOCALE_ARCHIVE), which
      Nix-built glibc needs to find the locales.
    type: dict
    default: {}
  jobs:
    description: Parallel jobs of C(pg_upgrade).
    type: int
    default: 1
attributes:
  check_mode:
    support: full
    details: Reads both builds and the cluster and says in RV(messages) what would happen.
  diff_mode:
    support: none
  idempotent:
    support: full
'''

EXAMPLES = r'''
- name: Upgrade the cluster to PostgreSQL 17 from its realised closure
  nixcache.closure.postgres_upgrade:
    data_directory: /data/pgdata
    new_bindir: /nix/store/ykrjb8n2lfn2np9cslm12ajr8x79x48j-postgresql-and-plugins-17.11/lib/postgresql/17/bin
    login_user: supabase_admin
    environment:
      LOCALE_ARCHIVE: /usr/lib/locale/locale-archive

- name: Put PostgreSQL 15 back
  nixcache.closure.postgres_upgrade:
    data_directory: /data/pgdata
    new_bindir: /nix/store/ykrjb8n2lfn2np9cslm12ajr8x79x48j-postgresql-and-plugins-17.11/lib/postgresql/17/bin
    state: rolled_back
'''

RETURN = r'''
upgrade_state:
  description: The recorded state after the run (C(done), C(rolled-back), ...), empty when
    no upgrade was ever recorded.
  returned: always
  type: str
  sample: done
plan:
  description: The recorded upgrade (both builds, method, paths, port, initdb options).
  returned: when an upgrade is recorded
  type: dict
messages:
  description: What was done (or, in check mode, would be done).
  returned: always
  type: list
  elements: str
  sample: ["PostgreSQL 17.11 serves /data/pgdata; the old cluster is kept at /data/pgdata.15"]
problems:
  description: The reasons of a refusal by the pre-flight checks.
  returned: on a refusal
  type: list
  elements: str
'''

import functools
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import module_errors
from ansible_collections.nixcache.closure.plugins.module_utils.pgupgrade import (
    METHODS,
    PreflightError,
    Upgrade,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            data_directory=dict(type='path', required=True),
            new_bindir=dict(type='path'),
            old_bindir=dict(type='path'),
            method=dict(type='str', choices=list(METHODS), default='copy'),
            state=dict(type='str', choices=['upgraded', 'rolled_back', 'cleaned'], default='upgraded'),
            os_user=dict(type='str', default='postgres'),
            pinned_major=dict(type='int'),
            login_user=dict(type='str', default='postgres'),
            environment=dict(type='dict', default={}),
            jobs=dict(type='int', default=1),
        ),
        required_if=[('state', 'upgraded', ['new_bindir'])],
        supports_check_mode=True,
    )
    params = module.params
    upgrade = Upgrade(os.path.realpath(params['data_directory']), params['new_bindir'] or '',
                      method=params['method'], user=params['os_user'],
                      login_user=params['login_user'], old_bindir=params['old_bindir'],
                      environment=dict((k, str(v)) for k, v in params['environment'].items()),
                      jobs=params['jobs'])
    with module_errors(module, messages=upgrade.messages + upgrade.warnings):
        action = dict(upgraded=upgrade.upgrade,
                      rolled_back=functools.partial(upgrade.rollback, pinned_major=params['pinned_major']),
                      cleaned=upgrade.cleanup)[params['state']]
        try:
            changed = action(check_mode=module.check_mode)
        except PreflightError as error:
            module.fail_json(msg=str(error), problems=error.problems, path=error.path,
                             messages=upgrade.messages)
    for warning in upgrade.warnings:
        module.warn(warning)
    record = upgrade.record()
    module.exit_json(changed=changed, upgrade_state=record.get('state', ''),
                     plan=dict((k, v) for k, v in record.items() if k != 'history') or None,
                     messages=upgrade.messages + upgrade.warnings)


if __name__ == '__main__':
    main()
