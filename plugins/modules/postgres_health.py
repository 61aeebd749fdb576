#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: postgres_health
short_description: Tell which build a PostgreSQL server runs, and wait until it answers a health query
version_added: 0.2.0
description:
  - Reads C(postmaster.pid) in O(data_directory) and C(/proc/PID/exe) to tell whether a server
    runs there, on which port and socket, and which build (program) it runs; with O(program),
    whether that is the build O(program) leads to (for example the profile's C(bin/postgres)).
  - With O(profile), also finds the newest generation of that Nix profile whose C(bin/postgres)
    is the running build (where a rollback goes back to).
  - With O(wait=true), asks the server O(query) through C(psql) until it answers, or fails after
    O(timeout) seconds saying why, with the last lines of the server's log (O(log)). The check
    fails when the query raises an error, when no server runs, or when it answers false.
  - The postgres role runs it around a restart on a new build of the same major (a minor
    upgrade), and puts the previous generation back when the check fails.
  - Changes nothing on the host.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host; the standard library is enough.
  - C(psql) in O(bin_dir) for O(wait=true).
extends_documentation_fragment:
  - nixcache.closure.attributes
options:
  data_directory:
    description: The cluster's data directory (where C(postmaster.pid) is).
    type: path
    required: true
  program:
    description:
      - The server program the cluster should run, links followed (for example
        C(/var/lib/postgresql/.nix-profile/bin/postgres)); RV(current) tells whether it does.
    type: path
  profile:
    description:
      - A Nix profile (for example C(/nix/var/nix/profiles/per-user/postgres/profile)) whose
        generations are searched for the running build (RV(serving_generation)).
    type: path
  wait:
    description:
      - Wait until the server answers O(query) (and fail when it does not within O(timeout)).
      - Without it, only report the server's state; no server running is then no failure.
    type: bool
    default: false
  query:
    description:
      - The health query. It passes when it runs without error and does not answer false
        (C(f)); for example C(select 1), or C(select count(*) > 0 from orders).
    type: str
    default: select 1
  database:
    description: The database to ask.
    type: str
    default: postgres
  login_user:
    description: The database role to connect as.
    type: str
    default: postgres
  os_user:
    description:
      - The system user that runs C(psql) (peer authentication over the socket).
    type: str
    default: postgres
  bin_dir:
    description: Where C(psql) is.
    type: path
    default: /usr/lib/postgresql/bin
  timeout:
    description: Seconds the server has to answer; each C(psql) call is bounded by what is left.
    type: int
    default: 60
  interval:
    description: Seconds between attempts.
    type: int
    default: 1
  log:
    description:
      - Log files of the server; the last O(log_lines) lines of the first that exists go into
        the failure message.
    type: list
    elements: path
    default: []
  log_lines:
    description: How many lines of the log to show.
    type: int
    default: 20
attributes:
  check_mode:
    support: full
    details: Reads the server's state and asks it a query; nothing is changed, so it runs in check mode too.
  diff_mode:
    support: none
  idempotent:
    support: full
'''

EXAMPLES = r'''
- name: Which build does the cluster run?
  nixcache.closure.postgres_health:
    data_directory: /var/lib/postgresql/15/main
    program: /var/lib/postgresql/.nix-profile/bin/postgres
    profile: /nix/var/nix/profiles/per-user/postgres/profile
  register: server

- name: Wait until it serves orders
  nixcache.closure.postgres_health:
    data_directory: /var/lib/postgresql/15/main
    bin_dir: /usr/lib/postgresql/15/bin
    wait: true
    database: shop
    query: select count(*) > 0 from orders
    timeout: 30
    log: [/var/log/postgresql/postgresql-15-main.log]
'''

RETURN = r'''
running:
  description: Whether a server runs on O(data_directory).
  returned: always
  type: bool
pid:
  description: The postmaster's PID (null when none runs).
  returned: always
  type: int
program:
  description: The real path of the program the server runs (null when none runs).
  returned: always
  type: str
  sample: /nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8/lib/postgresql/15/bin/postgres
current:
  description: Whether the server runs the build O(program) leads to.
  returned: always
  type: bool
port:
  description: The server's port.
  returned: always
  type: int
socket_directory:
  description: Its first socket directory (empty when it has none).
  returned: always
  type: str
status:
  description: Its state in C(postmaster.pid) (C(ready), C(starting), C(stopping)).
  returned: always
  type: str
serving_generation:
  description: >-
    With O(profile): the newest generation, as C(number) and C(path), whose C(bin/postgres) is
    the running build; null when none is (or no server runs).
  returned: always
  type: dict
healthy:
  description: With O(wait), whether the server answered O(query).
  returned: always
  type: bool
answer:
  description: With O(wait), the query's answer (unaligned, tuples only).
  returned: success
  type: str
attempts:
  description: With O(wait), how many times the query was asked.
  returned: always
  type: int
seconds:
  description: With O(wait), how long the check took.
  returned: always
  type: float
problem:
  description: With O(wait), why the last attempt failed (null when the server answered).
  returned: always
  type: str
log_tail:
  description: On failure, the last lines of the server's log.
  returned: failure
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import module_errors
from ansible_collections.nixcache.closure.plugins.module_utils.pgserver import (
    Runner,
    log_tail,
    serving_generation,
    server_state,
    wait_healthy,
)
from ansible_collections.nixcache.closure.plugins.module_utils.profiles import Profile


def main():
    module = AnsibleModule(
        argument_spec=dict(
            data_directory=dict(type='path', required=True),
            program=dict(type='path'),
            profile=dict(type='path'),
            wait=dict(type='bool', default=False),
            query=dict(type='str', default='select 1'),
            database=dict(type='str', default='postgres'),
            login_user=dict(type='str', default='postgres'),
            os_user=dict(type='str', default='postgres'),
            bin_dir=dict(type='path', default='/usr/lib/postgresql/bin'),
            timeout=dict(type='int', default=60),
            interval=dict(type='int', default=1),
            log=dict(type='list', elements='path', default=[]),
            log_lines=dict(type='int', default=20),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params['timeout'] < 1 or params['interval'] < 1:
        module.fail_json(msg='timeout and interval are whole seconds, at least 1',
                         found=dict(timeout=params['timeout'], interval=params['interval']))
    with module_errors(module):
        result = dict(changed=False, healthy=False, attempts=0, seconds=0.0)
        result.update(server_state(params['data_directory'], params['program']))
        if params['profile']:
            generations = Profile(params['profile']).generations()
            result['serving_generation'] = serving_generation(generations, result['program'])
        else:
            result['serving_generation'] = None
        if params['wait']:
            try:
                runner = Runner(params['os_user'])
            except KeyError:
                module.fail_json(msg='unknown os_user: %s' % params['os_user'])
            check = wait_healthy(params['data_directory'], params['bin_dir'], params['query'],
                                 params['database'], params['login_user'], params['timeout'],
                                 runner, interval=params['interval'])
            check.pop('state')
            result.update(check)
            result.update(server_state(params['data_directory'], params['program']))
            if not check['healthy']:
                tail = log_tail(params['log'], params['log_lines'])
                result['log_tail'] = tail
                module.fail_json(
                    msg='the server on %s did not pass the health check (%s) within %d s: %s%s'
                    % (params['data_directory'], params['query'], params['timeout'],
                       check['problem'], ('\n' + tail) if tail else ''), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
