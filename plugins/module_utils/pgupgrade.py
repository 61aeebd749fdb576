# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A major-version upgrade of a PostgreSQL cluster with pg_upgrade, as a recorded state
machine, so that a crash at any point either finishes or puts the old cluster back.

The new major's programs come from its own closure (realised beside the old one); the
cluster keeps its paths: the data directory ``D`` holds the new cluster afterwards, the
old one is kept at ``D.<old major>`` until the user removes it (``cleanup``).  Steps and
the states recorded in ``D.upgrade/state.json`` (written atomically) after each:

  realised     the plan is known: both builds, the method, the old server's port
  checked      pre-flight checks passed, the new cluster is initialised at ``D.<new>``
               to match (locale, checksums, WAL segment size, install user), the old
               settings carried over, and ``pg_upgrade --check`` passed with the old
               server still running
  transferring the old server is stopped and pg_upgrade runs (copy, clone or link)
  transferred  pg_upgrade finished
  new-started  ``D`` is the new cluster and its server runs on the old port with the old
               options: the point of no return for ``link``
  done         update_extensions.sql and ``vacuumdb --analyze-in-stages`` ran
  rolled-back  the old cluster is back at ``D`` and serves
  refused      a check on the initialised new cluster refused; it is removed again

Nothing changes the old cluster before ``transferring``.  A run finding ``realised``,
``checked`` or ``transferring`` (a crash before pg_upgrade finished) undoes the transfer
(with ``link``: ``global/pg_control.old`` back to ``pg_control``), starts the old server
and begins again; one finding ``transferred`` or ``new-started`` finishes.  A rollback
after the transfer is always possible with copy and clone (writes on the new cluster since
are lost), with link only before the new cluster started.
"""

import fcntl
import json
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils.pgcluster import (
    ClusterError,
    Host,
    bindir_version,
    controldata,
    data_version,
    major_of,
    quote_options,
    running_server,
    start_options,
)

METHODS = ('copy', 'clone', 'link')
STATES = ('realised', 'checked', 'transferring', 'transferred', 'new-started', 'done', 'rolled-back',
          'refused')
# Before this state the old cluster is untouched; from it on, the new cluster is the one.
UNDONE_BY_RECOVERY = ('realised', 'checked', 'transferring')
CONFIG_FILES = ('postgresql.conf', 'postgresql.auto.conf', 'pg_hba.conf', 'pg_ident.conf')
# The programs pg_upgrade needs in the new bindir (check_bin_dir of pg_upgrade).
NEW_PROGRAMS = ('postgres', 'pg_ctl', 'pg_controldata', 'pg_resetwal', 'initdb', 'pg_dump',
                'pg_dumpall', 'pg_restore', 'psql', 'vacuumdb', 'pg_upgrade')
STATISTICS_CARRIED_FROM = 18   # pg_upgrade carries optimizer statistics over from 18 on
CHECKSUMS_BY_DEFAULT_FROM = 18  # initdb turns data checksums on by default from 18 on
TEMPORARY_PORT = 50432


class UpgradeError(ClusterError):
    """An upgrade step that failed; the message says where the cluster stands."""


class PreflightError(UpgradeError):
    """Pre-flight checks that refuse the upgrade before anything changed: ``problems``."""

    def __init__(self, problems: List[str], **context: Any) -> None:
        super(PreflightError, self).__init__(
            'The upgrade was refused before anything changed: ' + '; '.join(problems), **context)
        self.problems = problems


# ---------------------------------------------------------------------------- state file

class StateFile(object):
    """``D.upgrade/state.json``: the plan and the state reached, rewritten atomically
    (temporary file, fsync, rename, fsync of the directory) after every step."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.record = None  # type: Optional[Dict[str, Any]]

    def load(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.path) as f:
                self.record = json.load(f)
        except FileNotFoundError:
            self.record = None
        except (OSError, ValueError) as error:
            raise UpgradeError('the upgrade state file cannot be read: move it away only after '
                               'checking which cluster is the good one', path=self.path,
                               found=str(error)) from None
        if self.record is not None and self.record.get('state') not in STATES:
            raise UpgradeError('unknown upgrade state', path=self.path,
                               found=self.record.get('state'))
        return self.record

    @property
    def state(self) -> Optional[str]:
        return self.record['state'] if self.record else None

    def archive(self) -> None:
        """Keep a finished upgrade's record as state-<time>.json, so a new one starts clean."""
        if self.record is not None:
            os.rename(self.path, '%s-%s.json' % (self.path[:-len('.json')],
                                                 time.strftime('%Y%m%dT%H%M%S', time.gmtime())))
            self.record = None

    def save(self, state: str, **fields: Any) -> None:
        record = dict(self.record or {})
        record.update(fields)
        record['state'] = state
        record.setdefault('history', []).append(
            dict(state=state, at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())))
        directory = os.path.dirname(self.path)
        temporary = self.path + '.tmp'
        with open(temporary, 'w') as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, self.path)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self.record = record


class UpgradeLock(object):
    """One upgrade of a cluster at a time: an exclusive lock on ``D.upgrade/lock``, waited
    for at most ``timeout`` seconds (a killed run's lock goes with its process)."""

    def __init__(self, path: str, timeout: float = 300) -> None:
        self.path = path
        self.timeout = timeout
        self.file = None

    def __enter__(self) -> 'UpgradeLock':
        self.file = open(self.path, 'w')
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.file.close()
                    raise UpgradeError('another upgrade of this cluster is still running',
                                       path=self.path) from None
                time.sleep(1)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


# ---------------------------------------------------------------------------- checks

def library_name(entry: str) -> str:
    """``$libdir/pgcrypto`` -> ``pgcrypto``; a preload entry as written in the setting."""
    entry = entry.strip().strip('"')
    return entry[len('$libdir/'):] if entry.startswith('$libdir/') else entry


def missing_libraries(used: List[str], new_libdir: str) -> List[str]:
    """The libraries of ``used`` (probin values and shared_preload_libraries entries) that
    the new build's library directory lacks, as named in the old cluster."""
    missing = []
    for entry in sorted(set(e for e in used if e and e.strip())):
        name = library_name(entry)
        if os.path.isabs(name):
            candidates = [name, name + '.so']
        else:
            candidates = [os.path.join(new_libdir, name), os.path.join(new_libdir, name + '.so'),
                          os.path.join(new_libdir, 'plugins', name + '.so')]
        if not any(os.path.isfile(candidate) for candidate in candidates):
            missing.append(entry.strip())
    return missing


def split_setting_list(value: str) -> List[str]:
    """``shared_preload_libraries`` as a list ("a, b" -> ["a", "b"]); the configuration
    files may quote the whole list ('"a,b"')."""
    return [item.strip().strip('"') for item in (value or '').strip().strip('"').split(',')
            if item.strip().strip('"')]


def data_size(data_dir: str) -> int:
    """Bytes pg_upgrade copies in copy mode: the relation files, not the WAL."""
    total = 0
    for directory, dirs, files in os.walk(data_dir):
        if directory == data_dir:
            dirs[:] = [d for d in dirs if d not in ('pg_wal', 'pg_upgrade_output.d')]
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


def free_space(path: str) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def preflight_problems(facts: Dict[str, Any]) -> List[str]:
    """Every reason to refuse, from what was read of both sides (pure, unit tested):

    old_major, new_major, missing_libraries, old_checksums, locale_provider,
    new_has_icu, method, needed_bytes, free_bytes, target_dir, missing_programs.
    """
    problems = []
    if facts['new_major'] < facts['old_major']:
        problems.append('the new build is PostgreSQL %d, older than the cluster\'s %d: '
                        'pg_upgrade cannot downgrade (restore a dump into an older cluster '
                        'instead)' % (facts['new_major'], facts['old_major']))
    if facts.get('missing_programs'):
        problems.append('the new build lacks %s, which pg_upgrade needs'
                        % ', '.join(facts['missing_programs']))
    if facts.get('missing_libraries'):
        problems.append('the old cluster uses the libraries %s (extensions or '
                        'shared_preload_libraries), which the new build does not have in %s: '
                        'add them to the new closure, or drop what uses them first'
                        % (', '.join(facts['missing_libraries']), facts['new_libdir']))
    if facts.get('locale_provider') == 'i' and not facts.get('new_has_icu'):
        problems.append('the old cluster uses the ICU locale provider, but the new build has '
                        'no ICU support')
    if facts['method'] == 'copy' and facts['needed_bytes'] > facts['free_bytes']:
        problems.append('not enough free space for a copy: the old cluster has %d bytes of '
                        'data, the file system of %s has %d bytes free (free space, or use '
                        'method clone or link)' % (facts['needed_bytes'], facts['target_dir'],
                                                   facts['free_bytes']))
    return problems


def initdb_options(old: Dict[str, Any], new_major: int) -> List[str]:
    """initdb options that make the new cluster agree with the old one: install user,
    encoding and locale (libc or ICU provider), checksums (PG 18 turns them on by
    default, so an old cluster without them needs --no-data-checksums), WAL segment size."""
    options = ['--username=' + old['install_user'], '--encoding=' + old['encoding'],
               '--lc-collate=' + old['collate'], '--lc-ctype=' + old['ctype'],
               '--locale=' + old['ctype']]
    if old.get('locale_provider') == 'i':
        options += ['--locale-provider=icu', '--icu-locale=' + old['icu_locale']]
    elif new_major >= 15:
        options.append('--locale-provider=libc')
    if old['checksums']:
        options.append('--data-checksums')
    elif new_major >= CHECKSUMS_BY_DEFAULT_FROM:
        options.append('--no-data-checksums')
    options.append('--wal-segsize=%d' % (old['wal_segment_size'] // (1024 * 1024)))
    return options


def pg_upgrade_command(plan: Dict[str, Any], check: bool = False) -> List[str]:
    """The pg_upgrade command line (run by the new build, from the work directory)."""
    command = [os.path.join(plan['new']['bindir'], 'pg_upgrade'),
               '--old-bindir=' + plan['old']['bindir'], '--new-bindir=' + plan['new']['bindir'],
               '--old-datadir=' + plan['old_data_dir'], '--new-datadir=' + plan['new_data_dir'],
               '--username=' + plan['install_user'], '--jobs=%d' % plan['jobs'],
               '--socketdir=' + (plan['socket_dir'] if check else plan['work_dir']),
               '--new-port=%d' % TEMPORARY_PORT]
    command.append('--old-port=%d' % (plan['port'] if check else TEMPORARY_PORT + 1))
    if plan['method'] != 'copy':
        command.append('--' + plan['method'])
    if check:
        command.append('--check')
    return command


# ---------------------------------------------------------------------------- the upgrade

class Upgrade(object):
    """One cluster's major upgrade.  ``data_dir`` is where the cluster lives (and stays);
    ``new_bindir`` the new build's programs; ``user`` the OS user of the server;
    ``login_user`` a superuser to connect as for the pre-flight queries; ``environment``
    what the servers need (LOCALE_ARCHIVE); ``log`` receives progress lines."""

    def __init__(self, data_dir: str, new_bindir: str, method: str = 'copy', user: str = 'postgres',
                 login_user: str = 'postgres', old_bindir: Optional[str] = None,
                 environment: Optional[Dict[str, str]] = None, jobs: int = 1,
                 host: Optional[Host] = None, log: Optional[Callable[[str], None]] = None) -> None:
        if method not in METHODS:
            raise UpgradeError('method must be one of %s' % ', '.join(METHODS), found=method)
        self.data_dir = os.path.normpath(data_dir)
        self.new_bindir = new_bindir
        self.method = method
        self.user = user
        self.login_user = login_user
        self.old_bindir = old_bindir
        self.environment = dict(environment or {})
        self.environment.pop('LC_ALL', None)   # keep the programs' messages parseable
        self.environment['LC_MESSAGES'] = 'C'
        self.jobs = max(1, jobs)
        self.host = host or Host()
        self.work_dir = self.data_dir + '.upgrade'
        self.state_file = StateFile(os.path.join(self.work_dir, 'state.json'))
        self.log = log or (lambda line: None)
        self.messages = []  # type: List[str]
        self.warnings = []  # type: List[str]

    # ------------------------------------------------------------------ helpers

    def run(self, argv: List[str], what: str, cwd: Optional[str] = None, ok=(0,)) -> str:
        self.log('%s: %s' % (what, ' '.join(argv)))
        rc, out, err = self.host.run(argv, user=self.user, env=self.environment, cwd=cwd)
        if rc not in ok:
            raise UpgradeError('%s failed (exit %d)' % (what, rc),
                               found=(out.strip() + '\n' + err.strip()).strip()[-2000:])
        return out

    def say(self, message: str) -> None:
        self.messages.append(message)
        self.log(message)

    def psql(self, bindir: str, server: Dict[str, Any], query: str, database: str = 'postgres') -> List[List[str]]:
        out = self.run([os.path.join(bindir, 'psql'), '-XAtq', '-F', '\t', '-h', server['socket_dir'],
                        '-p', str(server['port']), '-U', self.login_user, '-d', database,
                        '-v', 'ON_ERROR_STOP=1', '-c', query], 'psql')
        return [line.split('\t') for line in out.splitlines() if line]

    def record(self) -> Dict[str, Any]:
        return self.state_file.record or {}

    def _owned_dir(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        uid, gid = _ids(self.user)
        os.chown(path, uid, gid)

    # ------------------------------------------------------------------ servers

    def start_server(self, bindir: str, data_dir: str, options: List[str], port: Optional[int] = None) -> None:
        if running_server(data_dir):
            return
        options = list(options)
        if port is not None:
            options += ['-p', str(port)]
        argv = [os.path.join(bindir, 'pg_ctl'), '-D', data_dir, '-w', '-t', '300',
                '-l', os.path.join(self.work_dir, 'server.log')]
        if options:
            argv += ['-o', quote_options(options)]
        self.run(argv + ['start'], 'start the server of %s' % data_dir)

    def stop_server(self, bindir: str, data_dir: str) -> None:
        if running_server(data_dir):
            self.run([os.path.join(bindir, 'pg_ctl'), '-D', data_dir, '-w', '-t', '300',
                      '-m', 'fast', 'stop'], 'stop the server of %s' % data_dir)

    # ------------------------------------------------------------------ reading

    def inspect(self) -> Dict[str, Any]:
        """What the upgrade starts from: both versions, the old server and its options."""
        old_major = data_version(self.data_dir)
        new_version = bindir_version(self.host, self.new_bindir)
        server = running_server(self.data_dir)
        program, options = start_options(self.data_dir)
        old_bindir = self.old_bindir
        if not old_bindir:
            found = server['exe'] if server else program
            if not found:
                raise UpgradeError('cannot tell which PostgreSQL build the old cluster runs: '
                                   'no server runs and it has no postmaster.opts; set old_bindir',
                                   path=self.data_dir)
            old_bindir = os.path.dirname(os.path.realpath(found))
        old_version = bindir_version(self.host, old_bindir)
        if major_of(old_version) != old_major:
            raise UpgradeError('the programs found for the old cluster are PostgreSQL %s, but the '
                               'cluster is %d: set old_bindir to its build' % (old_version, old_major),
                               path=old_bindir)
        return dict(old=dict(major=old_major, version=old_version, bindir=old_bindir),
                    new=dict(major=major_of(new_version), version=new_version, bindir=self.new_bindir),
                    server=server, options=options)

    def old_cluster_facts(self, bindir: str, server: Dict[str, Any]) -> Dict[str, Any]:
        """Install user, locale, encoding and the libraries in use, from the old server."""
        rows = self.psql(bindir, server, "select rolname from pg_roles where oid = 10")
        install_user = rows[0][0]
        template = self.psql(bindir, server, (
            "select pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, "
            "coalesce(%s, '') from pg_database where datname = 'template0'")
            % ('daticulocale' if major_of(self.inspected['old']['version']) < 17 else 'datlocale'))[0]
        databases = [r[0] for r in self.psql(bindir, server,
                                             'select datname from pg_database where datallowconn')]
        libraries = set()
        for database in databases:
            for row in self.psql(bindir, server, 'select distinct probin from pg_proc '
                                 'where probin is not null', database=database):
                libraries.add(row[0])
        # what runs now, and what the configuration files set for the next start (the last
        # entry wins; it is marked "could not be applied" until a restart)
        for row in self.psql(bindir, server, (
                "select setting from pg_settings where name = 'shared_preload_libraries' "
                "union all (select setting from pg_file_settings where name = "
                "'shared_preload_libraries' order by seqno desc limit 1)")):
            libraries.update(split_setting_list(row[0]))
        return dict(install_user=install_user, encoding=template[0], collate=template[1],
                    ctype=template[2], locale_provider=template[3], icu_locale=template[4],
                    libraries=sorted(libraries))

    # ------------------------------------------------------------------ entry points

    def status(self) -> Dict[str, Any]:
        self.state_file.load()
        return self.record()

    def upgrade(self, check_mode: bool = False) -> bool:
        """Bring the cluster to the new major (or find it there); True when it changed."""
        if not os.path.isdir(self.work_dir):
            if check_mode:
                return self._plan_fresh(check_mode=True)
            self._owned_dir(self.work_dir)
        with UpgradeLock(os.path.join(self.work_dir, 'lock')) if not check_mode else _nothing():
            state = self.state_file.load() and self.state_file.state
            if state == 'done' and self.record()['new']['major'] == self._new_major():
                return self._ensure_new_running(check_mode)
            if state in ('transferred', 'new-started') and self.record()['new']['bindir'] == self.new_bindir:
                if check_mode:
                    self.say('would finish the upgrade left at %s' % state)
                    return True
                self._finish()
                return True
            if state in UNDONE_BY_RECOVERY:
                if check_mode:
                    self.say('would put the old cluster back (an upgrade stopped at %s) and '
                             'upgrade again' % state)
                    return True
                self._undo_transfer('an earlier run stopped at %s' % state)
            elif state in ('transferred', 'new-started'):
                raise UpgradeError('the cluster was upgraded to another build (%s): roll that '
                                   'upgrade back or clean it up first' % self.record()['new']['bindir'],
                                   path=self.state_file.path)
            return self._plan_fresh(check_mode)

    def _new_major(self) -> int:
        return major_of(bindir_version(self.host, self.new_bindir))

    def _plan_fresh(self, check_mode: bool) -> bool:
        self.inspected = facts = self.inspect()
        if facts['new']['major'] == facts['old']['major']:
            self.say('the cluster is already PostgreSQL %d' % facts['old']['major'])
            return False
        server = facts['server']
        if server is None:
            if check_mode:
                self.say('would start the old server for the pre-flight checks')
            else:
                self.start_server(facts['old']['bindir'], self.data_dir, facts['options'])
                server = running_server(self.data_dir)
        old_data = dict(major=facts['old']['major'])
        new_libdir = self.pkglibdir(self.new_bindir)
        problems_facts = dict(old_major=facts['old']['major'], new_major=facts['new']['major'],
                              method=self.method, new_libdir=new_libdir,
                              missing_programs=[p for p in NEW_PROGRAMS if not os.path.isfile(
                                  os.path.join(self.new_bindir, p))],
                              target_dir=os.path.dirname(self.data_dir),
                              needed_bytes=data_size(self.data_dir),
                              free_bytes=free_space(os.path.dirname(self.data_dir)))
        if server is not None:
            old_data.update(self.old_cluster_facts(facts['old']['bindir'], server))
            problems_facts.update(missing_libraries=missing_libraries(old_data['libraries'], new_libdir),
                                  locale_provider=old_data['locale_provider'],
                                  new_has_icu=self.has_icu(self.new_bindir))
        old_data.update(controldata(self.host, facts['old']['bindir'], self.data_dir, self.user))
        problems = preflight_problems(problems_facts)
        if problems:
            raise PreflightError(problems, path=self.data_dir)
        plan = dict(old=facts['old'], new=facts['new'], method=self.method, jobs=self.jobs,
                    data_dir=self.data_dir, old_data_dir=self.data_dir,
                    new_data_dir='%s.%d' % (self.data_dir, facts['new']['major']),
                    kept_data_dir='%s.%d' % (self.data_dir, facts['old']['major']),
                    work_dir=self.work_dir, options=facts['options'],
                    port=server['port'] if server else 5432,
                    socket_dir=server['socket_dir'] if server else self.work_dir,
                    install_user=old_data.get('install_user', self.login_user),
                    initdb=initdb_options(old_data, facts['new']['major']) if server else [])
        if check_mode:
            self.say('would upgrade %s from PostgreSQL %s to %s with pg_upgrade --%s (the old '
                     'cluster kept at %s)' % (self.data_dir, facts['old']['version'],
                                              facts['new']['version'], self.method,
                                              plan['kept_data_dir']))
            return True
        for stale in (plan['new_data_dir'], plan['kept_data_dir']):
            if os.path.exists(stale):
                raise UpgradeError('a directory is in the way of the upgrade; move it away if '
                                   'it holds nothing you need', path=stale)
        self.state_file.archive()
        self.state_file.save('realised', **plan)
        try:
            self._check(plan)
        except PreflightError as error:
            self.state_file.save('refused', reason=str(error))
            raise
        self._transfer(plan)
        self._finish()
        return True

    # ------------------------------------------------------------------ steps

    def pkglibdir(self, bindir: str) -> str:
        return self.run([os.path.join(bindir, 'pg_config'), '--pkglibdir'], 'pg_config').strip()

    def has_icu(self, bindir: str) -> bool:
        configure = self.run([os.path.join(bindir, 'pg_config'), '--configure'], 'pg_config')
        return "'--with-icu'" in configure or ("--without-icu" not in configure
                                               and major_of(self.inspected['new']['version']) >= 16)

    def _check(self, plan: Dict[str, Any]) -> None:
        new_dir = plan['new_data_dir']
        self._owned_dir(new_dir)
        argv = [os.path.join(plan['new']['bindir'], 'initdb'), '-D', new_dir, '--no-instructions',
                '-A', 'trust'] + plan['initdb']
        try:
            self.run(argv, 'initialise the new cluster')
        except UpgradeError as error:
            shutil.rmtree(new_dir, ignore_errors=True)
            if 'locale' in (error.found or ''):
                locales = sorted(set(option.split('=', 1)[1] for option in plan['initdb']
                                     if option.startswith(('--lc-collate=', '--lc-ctype='))))
                raise PreflightError(['the new build cannot load the old cluster\'s locale %s '
                                      '(its glibc, with LOCALE_ARCHIVE=%s): %s' % (
                                          ', '.join(locales), self.environment.get('LOCALE_ARCHIVE'),
                                          error.found)], path=self.data_dir) from None
            raise
        self._carry_settings(plan)
        old = controldata(self.host, plan['old']['bindir'], plan['old_data_dir'], self.user)
        new = controldata(self.host, plan['new']['bindir'], new_dir, self.user)
        for key in ('checksums', 'wal_segment_size'):
            if bool(old[key]) != bool(new[key]) if key == 'checksums' else old[key] != new[key]:
                shutil.rmtree(new_dir, ignore_errors=True)
                raise PreflightError(['the new cluster\'s %s (%s) differs from the old one\'s (%s)'
                                      % (key, new[key], old[key])], path=self.data_dir)
        try:
            self.run(pg_upgrade_command(plan, check=True), 'pg_upgrade --check', cwd=self.work_dir)
        except UpgradeError as error:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise PreflightError(['pg_upgrade --check found the clusters incompatible: %s'
                                  % error.found], path=self.data_dir) from None
        self.state_file.save('checked')

    def _carry_settings(self, plan: Dict[str, Any]) -> None:
        """The old cluster's configuration files replace initdb's in the new one."""
        uid, gid = _ids(self.user)
        for name in CONFIG_FILES:
            source = os.path.join(plan['old_data_dir'], name)
            if os.path.isfile(source):
                target = os.path.join(plan['new_data_dir'], name)
                shutil.copy2(source, target)
                os.chown(target, uid, gid)

    def _transfer(self, plan: Dict[str, Any]) -> None:
        self.stop_server(plan['old']['bindir'], plan['old_data_dir'])
        self.state_file.save('transferring')
        try:
            self.run(pg_upgrade_command(plan), 'pg_upgrade', cwd=self.work_dir)
        except UpgradeError as error:
            self._undo_transfer('pg_upgrade failed')
            raise UpgradeError('pg_upgrade failed; the old cluster is back and serves (logs in '
                               '%s/pg_upgrade_output.d, if kept)' % plan['new_data_dir'],
                               path=self.data_dir, found=error.found) from None
        self.state_file.save('transferred')

    def _finish(self) -> None:
        plan = self.record()
        self._swap_in(plan)
        self.start_server(plan['new']['bindir'], plan['data_dir'], plan['options'])
        self.state_file.save('new-started')
        self.say('PostgreSQL %s serves %s; the old cluster is kept at %s'
                 % (plan['new']['version'], plan['data_dir'], plan['kept_data_dir']))
        server = running_server(plan['data_dir'])
        script = os.path.join(self.work_dir, 'update_extensions.sql')
        client = [os.path.join(plan['new']['bindir'], 'psql'), '-XAtq', '-h', server['socket_dir'],
                  '-p', str(server['port']), '-U', plan['install_user']]
        if os.path.isfile(script):
            self.run(client + ['-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-f', script],
                     'update_extensions.sql')
            os.rename(script, script + '.done')
            self.say('updated the extensions (update_extensions.sql)')
        if plan['new']['major'] < STATISTICS_CARRIED_FROM:
            self.run([os.path.join(plan['new']['bindir'], 'vacuumdb'), '--all', '--analyze-in-stages',
                      '-h', server['socket_dir'], '-p', str(server['port']), '-U', plan['install_user']],
                     'vacuumdb --analyze-in-stages')
            self.say('gathered statistics (vacuumdb --all --analyze-in-stages)')
        self.state_file.save('done')

    def _swap_in(self, plan: Dict[str, Any]) -> None:
        """D -> D.<old>, D.<new> -> D; idempotent, so that a crash between the renames is
        finished by the next run."""
        data, new, kept = plan['data_dir'], plan['new_data_dir'], plan['kept_data_dir']
        if os.path.isdir(new) and os.path.isdir(data) and not os.path.exists(kept):
            os.rename(data, kept)
        if os.path.isdir(new) and not os.path.exists(data):
            os.rename(new, data)
        _sync_dir(os.path.dirname(data))

    def _undo_transfer(self, why: str) -> None:
        """Back to the old cluster before the new one ever served: the renames undone, the
        old pg_control restored (link), the new cluster removed, the old server started."""
        plan = self.record()
        data, new, kept = plan['data_dir'], plan['new_data_dir'], plan['kept_data_dir']
        if os.path.isdir(kept):   # a crash between the two renames of _swap_in
            if os.path.isdir(data) and not os.path.exists(new):
                os.rename(data, new)
            if not os.path.exists(data):
                os.rename(kept, data)
        # a killed pg_upgrade can leave its own servers running (on its ports, with its
        # options); before the transfer the old server is the user's own and keeps running
        if os.path.isdir(new):
            self.stop_server(plan['new']['bindir'], new)
        server = running_server(data)
        if server and (self.state_file.state not in ('realised', 'checked')
                       or server['port'] != plan['port']):
            self.stop_server(plan['old']['bindir'], data)
        control = os.path.join(data, 'global', 'pg_control')
        if not os.path.exists(control) and os.path.exists(control + '.old'):
            os.rename(control + '.old', control)
            self.say('restored global/pg_control of the old cluster (link mode)')
        shutil.rmtree(new, ignore_errors=True)
        _sync_dir(os.path.dirname(data))
        self.start_server(plan['old']['bindir'], data, plan['options'])
        self.state_file.save('rolled-back', reason=why)
        self.warnings.append('%s: the old cluster (PostgreSQL %s) is back at %s and serves'
                             % (why, plan['old']['version'], data))

    def _ensure_new_running(self, check_mode: bool) -> bool:
        plan = self.record()
        if running_server(plan['data_dir']):
            return False
        if check_mode:
            self.say('would start the upgraded server')
        else:
            self.start_server(plan['new']['bindir'], plan['data_dir'], plan['options'])
        return True

    def rollback(self, check_mode: bool = False, pinned_major: Optional[int] = None) -> bool:
        """Put the old cluster back at D and start it; False when there is nothing to undo.
        With ``pinned_major`` (the major of the build the host will run afterwards), refuse
        unless it is the old cluster's: the old data would not start on another major."""
        if not os.path.isdir(self.work_dir):
            return False
        with UpgradeLock(os.path.join(self.work_dir, 'lock')) if not check_mode else _nothing():
            state = self.state_file.load() and self.state_file.state
            if state in (None, 'rolled-back', 'refused'):
                return False
            plan = self.record()
            if pinned_major is not None and pinned_major != plan['old']['major']:
                raise UpgradeError(
                    'cannot roll back while PostgreSQL %d is pinned: the old cluster is PostgreSQL '
                    '%d and would not start on it; pin the old build (%s) and run again. Nothing '
                    'was changed' % (pinned_major, plan['old']['major'], plan['old']['bindir']),
                    path=self.data_dir)
            if plan['method'] == 'link' and state in ('new-started', 'done'):
                raise UpgradeError(
                    'cannot roll back: the upgrade used link mode and the new cluster has started, '
                    'so the old cluster\'s files (hard links shared with the new one) may have '
                    'been changed by it; restore the old cluster from a backup', path=self.data_dir)
            if check_mode:
                self.say('would put PostgreSQL %s back at %s' % (plan['old']['version'], plan['data_dir']))
                return True
            if state in UNDONE_BY_RECOVERY or plan['method'] == 'link':
                self._undo_transfer('rolled back on request')
                return True
            # copy or clone: the old cluster is untouched at D.<old>
            self.stop_server(plan['new']['bindir'], plan['data_dir'])
            data, kept = plan['data_dir'], plan['kept_data_dir']
            aside = '%s.rolled-back-%d' % (data, plan['new']['major'])
            if os.path.isdir(kept):
                if os.path.exists(aside):
                    shutil.rmtree(aside)
                if os.path.isdir(data):
                    os.rename(data, aside)
                os.rename(kept, data)
                _sync_dir(os.path.dirname(data))
            self.start_server(plan['old']['bindir'], data, plan['options'])
            self.state_file.save('rolled-back', reason='rolled back on request', rolled_back_to=aside)
            self.warnings.append('rolled back to PostgreSQL %s: writes made on the new cluster '
                                 'since the upgrade are lost (its data directory is kept at %s)'
                                 % (plan['old']['version'], aside))
            return True

    def cleanup(self, check_mode: bool = False) -> bool:
        """Remove the kept old cluster after a finished upgrade; False when none is kept."""
        self.state_file.load()
        if self.state_file.state != 'done':
            return False
        kept = self.record()['kept_data_dir']
        if not os.path.isdir(kept):
            return False
        if not check_mode:
            shutil.rmtree(kept)
            self.say('removed the old cluster at %s' % kept)
        else:
            self.say('would remove the old cluster at %s' % kept)
        return True


class _nothing(object):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _ids(user):
    import pwd
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _sync_dir(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
