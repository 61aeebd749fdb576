"""The postgres role's ``debian`` layout on a fresh Debian host over SSH, then playbooks written
for Debian's ``postgresql-15`` package run against it unchanged.

The target is a debootstrap'd Debian root with its own sshd on loopback, made for this file
alone (starting one from the cached tarball takes a few seconds), so that the layout of the
other end-to-end tests does not meet this one; the tests of this file run in order on it.

``playbooks/postgres.yml`` with ``postgres_layout: debian`` must, after a dry run that changes
nothing, leave what the package leaves: ``/usr/lib/postgresql/15/bin`` and
``/usr/share/postgresql/15`` linked through the profile, Debian's ``postgresql-common``
(pg_ctlcluster, pg_lsclusters, the client wrappers in /usr/bin, the systemd units) and a
running ``15/main`` cluster whose server is the Nix build.  There is no systemd on the target,
so the units are checked by their text and the cluster is started, reloaded and stopped with
the very commands of their ``ExecStart``, ``ExecReload`` and ``ExecStop``.

Then a playbook that does what the configure, initialise, users and databases tasks of
geerlingguy.postgresql (the most used PostgreSQL role on Galaxy) do on Debian 12 -- its
variables, initdb only without PG_VERSION, lineinfile into postgresql.conf, pg_hba.conf from a
template, the socket directory, a restart, and ``community.postgresql``'s postgresql_user,
postgresql_db, postgresql_privs and postgresql_ext -- must work and be idempotent.  Its
package-install tasks are left out (the role is what installs Postgres), and its ``service``
tasks run only where systemd runs (``target_has_systemd``); here the cluster is restarted as
the unit would.  ``community.postgresql`` comes from ``make collections-extra``; the target
has python3-psycopg2, as such a playbook's hosts need.

Last, a new build of the same major restarts the cluster on it and keeps the data, a rollback
to the previous pin does too, and a closure of another major than the host's clusters (or than
``postgres_major_version``) is refused before anything changes.
"""
import os
import re
import shlex

import pytest

from nixtest import BUILD_DIR, COLLECTIONS_PATH, REPO
from nixtest.ansible import run_playbook
from nixtest.http import CacheServer
from nixtest.target import TargetHost

pytestmark = pytest.mark.slow

with open(os.path.join(REPO, 'playbooks', 'postgres.yml')) as _playbook:
    PLAYBOOK = _playbook.read()

COLLECTIONS_EXTRA = os.path.join(BUILD_DIR, 'collections-extra')
WITH_COMMUNITY_POSTGRESQL = {
    'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS_PATH + os.pathsep + COLLECTIONS_EXTRA}

# The target shares the machine's network: its cluster listens on loopback addresses that the
# machine's own servers do not use (pg_createcluster cannot set an empty listen_addresses, and
# quotes a list but not a single address).
OWN_ADDRESS = ['--pgoption', 'listen_addresses=127.0.0.2,127.0.0.3']

# What a dry run must leave alone on the target.
WATCHED = ('/etc', '/usr', '/var/lib', '/var/log', '/nix')
# ... but for the records of SSH logins.
LOGIN_RECORDS = ('/var/log/wtmp', '/var/log/btmp', '/var/log/lastlog')
# ... and for what the running cluster writes (its files are there, but they change).
LIVE = ('/var/lib/postgresql/15/main/', '/var/log/postgresql/postgresql-15-main.log')

# A playbook written for Debian's postgresql-15 package, doing what the configure.yml,
# initialize.yml, users.yml and databases.yml tasks of geerlingguy.postgresql do there (its
# package-install tasks are skipped: the postgres role installed Postgres).
APT_ROLE_PLAYBOOK = r'''
- name: A playbook written for the apt package
  hosts: target
  become: true
  gather_facts: false
  vars:
    target_has_systemd: false     # a real host runs the service tasks
    postgresql_version: "15"
    postgresql_data_dir: /var/lib/postgresql/{{ postgresql_version }}/main
    postgresql_bin_path: /usr/lib/postgresql/{{ postgresql_version }}/bin
    postgresql_config_path: /etc/postgresql/{{ postgresql_version }}/main
    postgresql_daemon: postgresql@{{ postgresql_version }}-main
    postgresql_user: postgres
    postgresql_group: postgres
    postgresql_unix_socket_directories: [/var/run/postgresql]
    postgresql_global_config_options:
      - {option: unix_socket_directories, value: "{{ postgresql_unix_socket_directories | join(',') }}"}
      - {option: work_mem, value: 8MB}
      - {option: log_directory, value: log}
    postgresql_hba_entries:
      - {type: local, database: all, user: postgres, auth_method: peer}
      - {type: local, database: all, user: all, auth_method: peer}
      - {type: host, database: all, user: all, address: 127.0.0.1/32, auth_method: scram-sha-256}
    postgresql_databases:
      - {name: shop}
    postgresql_users:
      - {name: shopkeeper, password: s3cret-enough, role_attr_flags: LOGIN}
    postgresql_privs:
      - {db: shop, role: shopkeeper, type: database, privs: ALL}
    postgresql_extensions:
      - {name: hstore, db: shop}
  handlers:
    - name: Restart postgresql
      ansible.builtin.service:
        name: "{{ postgresql_daemon }}"
        state: restarted
      when: target_has_systemd
      listen: restart postgresql
    - name: Restart postgresql as its unit does
      ansible.builtin.command: /usr/bin/pg_ctlcluster --skip-systemctl-redirect {{ postgresql_version }}-main restart
      changed_when: true
      when: not target_has_systemd
      listen: restart postgresql
  tasks:
    # initialise
    - name: Set PostgreSQL environment variables
      ansible.builtin.copy:
        dest: /etc/profile.d/postgres.sh
        content: |
          export PGDATA={{ postgresql_data_dir }}
          export PATH={{ postgresql_bin_path }}:$PATH
        mode: "0644"
      notify: restart postgresql
    - name: Ensure the data directory exists
      ansible.builtin.file:
        path: "{{ postgresql_data_dir }}"
        owner: "{{ postgresql_user }}"
        group: "{{ postgresql_group }}"
        state: directory
        mode: "0700"
    - name: Check whether the database is initialised
      ansible.builtin.stat:
        path: "{{ postgresql_data_dir }}/PG_VERSION"
      register: pgdata_dir_version
    - name: Initialise the database
      ansible.builtin.command: "{{ postgresql_bin_path }}/initdb -D {{ postgresql_data_dir }}"
      when: not pgdata_dir_version.stat.exists
      become_user: "{{ postgresql_user }}"
    - name: Ensure the log directory exists
      ansible.builtin.file:
        path: "{{ postgresql_data_dir }}/log"
        owner: "{{ postgresql_user }}"
        group: "{{ postgresql_group }}"
        state: directory
        mode: "0700"
    # configure
    - name: Configure global settings
      ansible.builtin.lineinfile:
        dest: "{{ postgresql_config_path }}/postgresql.conf"
        regexp: "^#?{{ item.option }}.+$"
        line: "{{ item.option }} = '{{ item.value }}'"
      loop: "{{ postgresql_global_config_options }}"
      notify: restart postgresql
    - name: Configure host based authentication
      ansible.builtin.copy:
        dest: "{{ postgresql_config_path }}/pg_hba.conf"
        content: |
          # Managed by Ansible
          {% for e in postgresql_hba_entries %}
          {{ e.type }} {{ e.database }} {{ e.user }} {{ e.address | default('') }} {{ e.auth_method }}
          {% endfor %}
        owner: "{{ postgresql_user }}"
        group: "{{ postgresql_group }}"
        mode: "0600"
      notify: restart postgresql
    - name: Ensure the unix socket directories exist
      ansible.builtin.file:
        path: "{{ item }}"
        state: directory
        owner: "{{ postgresql_user }}"
        group: "{{ postgresql_group }}"
        mode: "02775"
      loop: "{{ postgresql_unix_socket_directories }}"
    - name: Run the handlers now
      ansible.builtin.meta: flush_handlers
    - name: Ensure PostgreSQL is started and enabled on boot
      ansible.builtin.service:
        name: "{{ postgresql_daemon }}"
        state: started
        enabled: true
      when: target_has_systemd
    # databases, users, privileges, extensions
    - name: Ensure the databases are present
      community.postgresql.postgresql_db:
        name: "{{ item.name }}"
        lc_collate: en_US.UTF-8
        lc_ctype: en_US.UTF-8
        encoding: UTF-8
        template: template0
        login_unix_socket: "{{ postgresql_unix_socket_directories[0] }}"
      loop: "{{ postgresql_databases }}"
      become_user: "{{ postgresql_user }}"
    - name: Ensure the users are present
      community.postgresql.postgresql_user:
        name: "{{ item.name }}"
        password: "{{ item.password }}"
        role_attr_flags: "{{ item.role_attr_flags }}"
        login_unix_socket: "{{ postgresql_unix_socket_directories[0] }}"
      loop: "{{ postgresql_users }}"
      become_user: "{{ postgresql_user }}"
      no_log: true
    - name: Grant the privileges
      community.postgresql.postgresql_privs:
        login_db: "{{ item.db }}"
        roles: "{{ item.role }}"
        type: "{{ item.type }}"
        objs: "{{ item.db }}"
        privs: "{{ item.privs }}"
        login_unix_socket: "{{ postgresql_unix_socket_directories[0] }}"
      loop: "{{ postgresql_privs }}"
      become_user: "{{ postgresql_user }}"
    - name: Ensure the extensions are present
      community.postgresql.postgresql_ext:
        name: "{{ item.name }}"
        login_db: "{{ item.db }}"
        login_unix_socket: "{{ postgresql_unix_socket_directories[0] }}"
      loop: "{{ postgresql_extensions }}"
      become_user: "{{ postgresql_user }}"
'''


@pytest.fixture(scope='module')
def debian_host(tmp_path_factory):
    """A fresh target of its own (the session's carries the nix-profile layout)."""
    if not os.path.exists('/usr/sbin/debootstrap'):
        pytest.fail('debootstrap is missing: run `make deps`', pytrace=False)
    if not os.path.isdir(os.path.join(COLLECTIONS_EXTRA, 'ansible_collections', 'community',
                                      'postgresql')):
        pytest.fail('community.postgresql is missing: run `make collections-extra`', pytrace=False)
    target = TargetHost(tmp_path_factory.mktemp('debian-host') / 'root').start()
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope='module')
def pg_server(caches, nix_keys):
    with CacheServer(caches.root) as server:
        yield dict(substituters=[server.url_for('xz')], trusted_public_keys=[nix_keys.trusted.public])


def apply_role(target, server, store_path, check=False, diff=False, ok=True, **variables):
    result = run_playbook(PLAYBOOK, target.inventory(), check=check, diff=diff, extra_vars=dict(
        server, postgres_store_path=store_path, postgres_layout='debian',
        postgres_createcluster_options=OWN_ADDRESS, **variables))
    if ok:
        result.assert_ok()
    else:
        result.assert_failed()
    return result


def snapshot(target):
    """Every path under WATCHED on the target with its mode, owner, size, mtime and link."""
    found = {}
    for top in WATCHED:
        for directory, dirs, files in os.walk(target.path(top)):
            dirs[:] = [name for name in dirs if name != '.ansible']
            for name in dirs + files:
                path = os.path.join(directory, name)
                if path in [target.path(record) for record in LOGIN_RECORDS] or any(
                        path.startswith(target.path(live)) for live in LIVE):
                    continue
                info = os.lstat(path)
                found[path] = (info.st_mode, info.st_uid, info.st_gid) if name in dirs else (
                    info.st_mode, info.st_uid, info.st_size, info.st_mtime,
                    os.readlink(path) if os.path.islink(path) else None)
    return found


def psql(target, query, db='postgres'):
    return target.sh('psql -XAtd %s -c %s' % (db, shlex.quote(query)), user='postgres')


def postmaster(target):
    """The running postmaster's PID and the file it runs."""
    pid = target.sh('head -n 1 /var/lib/postgresql/15/main/postmaster.pid')
    return pid, target.sh('readlink /proc/%s/exe' % pid)


def unit(target, name):
    with open(target.path('/lib/systemd/system/' + name)) as f:
        return f.read()


def unit_command(text, key, instance):
    """The command of ``key`` (ExecStart, ...) in a unit's text for ``instance``, as systemd
    runs it (its ``-`` prefix dropped, ``%i`` and ``%I`` expanded)."""
    line = [entry for entry in text.splitlines() if entry.startswith(key + '=')][0]
    command = line.split('=', 1)[1].lstrip('-')
    return command.replace('%i', instance).replace('%I', instance.replace('-', '/'))


def test_dry_run_on_a_fresh_host_reports_the_cluster_and_changes_nothing(
        debian_host, pg_server, pg_closure):
    target = debian_host
    before = snapshot(target)
    result = apply_role(target, pg_server, pg_closure.top, check=True, diff=True)
    assert snapshot(target) == before
    changed = result.changed_tasks()
    assert 'Report that postgresql-common would be installed' in changed
    assert 'Create the main cluster (pg_createcluster, as the package\'s installation does)' \
        in changed
    facts = [event['result'].get('ansible_facts', {}) for event in result.events
             if event['task'].startswith('Take the major version')]
    assert facts and facts[-1]['postgres_major'] == pg_closure.major
    assert 'not fetched yet' in facts[-1]['postgres_major_source']


def test_role_leaves_what_the_package_leaves(debian_host, pg_server, pg_closure):
    target = debian_host
    major = pg_closure.major
    assert major == '15'
    first = apply_role(target, pg_server, pg_closure.top)
    assert 'Install postgresql-common and postgresql-client-common (cluster tools, no server)' \
        in first.changed_tasks()
    facts = [event['result'].get('ansible_facts', {}) for event in first.events
             if event['task'].startswith('Take the major version')]
    assert facts[-1]['postgres_major_source'].startswith(pg_closure.top + '/bin/pg_config --version: ')

    # versioned directories that link through the profile into the closure
    assert os.readlink(target.path('/usr/lib/postgresql/15/bin/postgres')) == \
        '/var/lib/postgresql/.nix-profile/bin/postgres'
    assert target.realpath('/usr/lib/postgresql/15/bin/postgres').startswith(pg_closure.top + '/')
    extension = '/usr/share/postgresql/15/extension'
    assert os.path.isdir(target.path(extension)) and not os.path.islink(target.path(extension))
    assert target.realpath(extension + '/hstore.control').startswith(pg_closure.top + '/')
    lib = '/usr/lib/postgresql/15/lib'
    assert os.path.isdir(target.path(lib)) and os.listdir(target.path(lib))
    assert all(os.readlink(target.path(lib + '/' + name)).startswith(
        '/var/lib/postgresql/.nix-profile/lib/') for name in os.listdir(target.path(lib)))
    assert target.sh('dpkg-query -W -f "${Status}" postgresql-15 || true') != \
        'install ok installed'  # no server package

    # the main cluster, as pg_createcluster makes it for the package
    listed = target.sh('pg_lsclusters -h').split()
    assert listed[:4] == ['15', 'main', '5432', 'online']
    assert listed[4:7] == ['postgres', '/var/lib/postgresql/15/main',
                           '/var/log/postgresql/postgresql-15-main.log']
    config = '/etc/postgresql/15/main/'
    for name in ('postgresql.conf', 'pg_hba.conf', 'pg_ident.conf', 'start.conf', 'pg_ctl.conf',
                 'environment'):
        assert os.stat(target.path(config + name)).st_uid == int(target.sh('id -u postgres')), name
    conf = open(target.path(config + 'postgresql.conf')).read()
    for line in ("data_directory = '/var/lib/postgresql/15/main'", "cluster_name = '15/main'",
                 "hba_file = '/etc/postgresql/15/main/pg_hba.conf'",
                 "external_pid_file = '/var/run/postgresql/15-main.pid'",
                 "include_dir = 'conf.d'", "unix_socket_directories = '/var/run/postgresql'"):
        assert line in conf, line
    assert open(target.path(config + 'start.conf')).read().split()[-1] == 'auto'
    environment = open(target.path(config + 'environment')).read()
    assert "LOCALE_ARCHIVE = '/usr/lib/locale/locale-archive'" in environment
    data = os.stat(target.path('/var/lib/postgresql/15/main'))
    assert oct(data.st_mode & 0o777) == '0o700'
    assert data.st_uid == int(target.sh('id -u postgres'))
    assert open(target.path('/var/lib/postgresql/15/main/PG_VERSION')).read().strip() == '15'
    assert oct(os.stat(target.path('/var/run/postgresql')).st_mode & 0o7777) == '0o2775'
    assert oct(os.stat(target.path('/var/log/postgresql')).st_mode & 0o7777) == '0o1775'

    # the server is the Nix build, with the locale Nix's glibc found through LOCALE_ARCHIVE
    pid, exe = postmaster(target)
    assert exe.startswith(pg_closure.top + '/'), exe
    assert 'PostgreSQL %s' % pg_closure.version in psql(target, 'select version()')
    assert psql(target, 'show lc_collate') == 'en_US.UTF-8'
    assert psql(target, "select 'ä' < 'b' collate \"en_US.utf8\"") == 't'
    # the client commands in /usr/bin go through pg_wrapper to the Nix build
    assert os.readlink(target.path('/usr/bin/psql')) == '../share/postgresql-common/pg_wrapper'
    assert target.sh('pg_dump --version').startswith('pg_dump (PostgreSQL) %s' % pg_closure.version)
    assert target.sh('pg_config --version').startswith('PostgreSQL %s' % pg_closure.version)
    assert target.sh('pg_conftool -s 15 main show cluster_name') == '15/main'

    # pg_ctlcluster, for real
    target.sh('pg_ctlcluster 15 main reload')
    assert target.run('pg_ctlcluster 15 main status').returncode == 0
    target.sh('pg_ctlcluster 15 main restart')
    assert postmaster(target)[0] != pid
    target.sh('pg_ctlcluster 15 main stop')
    assert target.run('pg_ctlcluster 15 main status').returncode == 3
    assert target.sh('pg_lsclusters -h').split()[3] == 'down'
    target.sh('pg_ctlcluster 15 main start')
    assert target.sh('pg_lsclusters -h').split()[3] == 'online'

    # the units, by their text; then the cluster run by their commands (no systemd here)
    template = unit(target, 'postgresql@.service')
    for line in ('AssertPathExists=/etc/postgresql/%I/postgresql.conf', 'Type=forking',
                 'ExecStart=-/usr/bin/pg_ctlcluster --skip-systemctl-redirect %i start',
                 'ExecStop=/usr/bin/pg_ctlcluster --skip-systemctl-redirect -m fast %i stop',
                 'ExecReload=/usr/bin/pg_ctlcluster --skip-systemctl-redirect %i reload',
                 'PIDFile=/run/postgresql/%i.pid', 'PartOf=postgresql.service'):
        assert line in template.splitlines(), line
    service = unit(target, 'postgresql.service')
    assert 'ExecStart=/bin/true' in service and 'RemainAfterExit=on' in service
    assert os.path.exists(target.path('/etc/postgresql/15/main/postgresql.conf'))  # the Assert
    target.sh(unit_command(template, 'ExecStop', '15-main'))
    assert not os.path.exists(target.path('/run/postgresql/15-main.pid'))
    target.sh(unit_command(template, 'ExecStart', '15-main'))
    pid, exe = postmaster(target)
    assert open(target.path('/run/postgresql/15-main.pid')).read().strip() == pid
    target.sh(unit_command(template, 'ExecReload', '15-main'))
    assert postmaster(target)[0] == pid

    # a re-run and a dry run change nothing
    assert apply_role(target, pg_server, pg_closure.top).changed_tasks() == []
    before = snapshot(target)
    assert apply_role(target, pg_server, pg_closure.top, check=True, diff=True).changed_tasks() == []
    assert snapshot(target) == before


def test_a_playbook_written_for_the_apt_package_runs_unchanged(debian_host, pg_closure):
    target = debian_host
    first = run_playbook(APT_ROLE_PLAYBOOK, target.inventory(), env=WITH_COMMUNITY_POSTGRESQL)
    first.assert_ok()
    changed = first.changed_tasks()
    assert 'Initialise the database' not in changed  # the role's cluster is there
    for task in ('Configure global settings', 'Configure host based authentication',
                 'Restart postgresql as its unit does', 'Ensure the databases are present',
                 'Ensure the users are present', 'Grant the privileges',
                 'Ensure the extensions are present'):
        assert task in changed, task
    assert psql(target, 'show work_mem') == '8MB'  # restarted with the new setting
    assert psql(target, "select datcollate from pg_database where datname = 'shop'") == \
        'en_US.UTF-8'
    assert psql(target, "select rolcanlogin from pg_roles where rolname = 'shopkeeper'") == 't'
    assert psql(target, "select has_database_privilege('shopkeeper', 'shop', 'CREATE')") == 't'
    assert psql(target, "select extversion from pg_extension where extname = 'hstore'",
                db='shop') != ''
    assert psql(target, "select 'a=>1'::hstore -> 'a'", db='shop') == '1'
    hba = open(target.path('/etc/postgresql/15/main/pg_hba.conf')).read()
    assert 'scram-sha-256' in hba

    again = run_playbook(APT_ROLE_PLAYBOOK, target.inventory(), env=WITH_COMMUNITY_POSTGRESQL)
    again.assert_ok()
    assert again.changed_tasks() == []


def test_a_new_build_of_the_major_restarts_the_cluster_and_keeps_it_and_so_does_a_rollback(
        debian_host, pg_server, pg_closure, pg_closure_b):
    target = debian_host
    psql(target, 'create table kept (n int); insert into kept values (42)', db='shop')
    pid, exe = postmaster(target)
    assert exe.startswith(pg_closure.top + '/')

    # a dry run of the switch reports the new profile and changes nothing
    before = snapshot(target)
    planned = apply_role(target, pg_server, pg_closure_b.top, check=True, diff=True)
    assert snapshot(target) == before
    assert "Point the postgres user's profile at them" in planned.changed_tasks()
    assert postmaster(target)[0] == pid

    upgrade = apply_role(target, pg_server, pg_closure_b.top, postgres_major_version='15')
    assert 'Restart the main cluster (debian layout)' in upgrade.changed_tasks()
    assert 'Create the main cluster (pg_createcluster, as the package\'s installation does)' \
        not in upgrade.changed_tasks()
    new_pid, exe = postmaster(target)
    assert new_pid != pid and exe.startswith(pg_closure_b.top + '/'), exe
    assert psql(target, 'select n from kept', db='shop') == '42'
    assert psql(target, 'show work_mem') == '8MB'  # the playbook's setting survives

    rollback = apply_role(target, pg_server, pg_closure.top)
    assert 'Restart the main cluster (debian layout)' in rollback.changed_tasks()
    rolled_pid, exe = postmaster(target)
    assert rolled_pid != new_pid and exe.startswith(pg_closure.top + '/'), exe
    assert psql(target, 'select n from kept', db='shop') == '42'
    assert apply_role(target, pg_server, pg_closure.top).changed_tasks() == []

    # pruning old generations changes the profile but not the build: no restart
    pruned = apply_role(target, pg_server, pg_closure.top, postgres_profile_keep=0)
    assert "Point the postgres user's profile at them" in pruned.changed_tasks()
    assert postmaster(target)[0] == rolled_pid


def test_another_major_is_refused_before_anything_changes_unless_a_new_cluster_is_asked_for(
        debian_host, pg_server, pg_closure, pg_closure_b):
    target = debian_host
    before = snapshot(target)
    wrong = apply_role(target, pg_server, pg_closure_b.top, ok=False, postgres_major_version='16')
    assert wrong.failed_tasks() == ['Refuse a closure of another major than postgres_major_version']
    message = wrong.task('Refuse a closure of another major than postgres_major_version')['msg']
    assert 'postgres_major_version is 16' in message and 'PostgreSQL 15' in message
    assert pg_closure_b.top + '/bin/pg_config --version: PostgreSQL 15.' in message
    assert snapshot(target) == before

    # a cluster of another major on the host (as an older package would have left it)
    old = target.path('/etc/postgresql/14/main')
    target.sh('install -d -o postgres -g postgres /etc/postgresql/14/main /var/lib/postgresql/14 '
              '&& install -d -m 0700 -o postgres -g postgres /var/lib/postgresql/14/main '
              '&& echo 14 > /var/lib/postgresql/14/main/PG_VERSION')
    with open(os.path.join(old, 'postgresql.conf'), 'w') as f:
        f.write("data_directory = '/var/lib/postgresql/14/main'\n")
    try:
        before = snapshot(target)
        refused = apply_role(target, pg_server, pg_closure_b.top, ok=False)
        task = 'Refuse to switch to another major while clusters of the old one exist'
        assert refused.failed_tasks() == [task]
        message = refused.task(task)['msg']
        assert '14/main' in message and 'PostgreSQL 15' in message
        assert 'postgres_new_cluster' in message and 'Nothing was changed' in message
        assert snapshot(target) == before
        assert target.realpath('/usr/lib/postgresql/15/bin/postgres').startswith(
            pg_closure.top + '/')

        # asked for, the new major's cluster goes beside the old one (here: already there)
        allowed = apply_role(target, pg_server, pg_closure.top, postgres_new_cluster=True)
        assert allowed.changed_tasks() == []

        # ... and, when it is not there yet, it is made beside the old one, which is left alone
        target.sh('pg_dropcluster --stop 15 main')
        made = apply_role(target, pg_server, pg_closure.top, postgres_new_cluster=True)
        assert 'Create the main cluster (pg_createcluster, as the package\'s installation does)' \
            in made.changed_tasks()
        assert open(os.path.join(old, 'postgresql.conf')).read() == \
            "data_directory = '/var/lib/postgresql/14/main'\n"
        # the old cluster keeps port 5432, so the new one gets the next, as pg_createcluster does
        assert re.search(r'^15 +main +5433 +online ', target.sh('pg_lsclusters -h'), re.M)
        assert target.sh('psql --cluster 15/main -XAtd postgres -c "select 1"', user='postgres') == '1'
    finally:
        target.run('rm -r /etc/postgresql/14 /var/lib/postgresql/14', check=True)
    assert re.match(r'^15 +main +\d+ +online ', target.sh('pg_lsclusters -h'))
