"""Run ``ansible-playbook`` in isolation and read back every task result as JSON.

    result = run_playbook('''
    - hosts: all
      gather_facts: false
      tasks:
        - nixcache.closure.realise: {paths: [...], substituters: [...]}
          register: realised
    ''', sshd.inventory('target'))
    result.assert_ok()
    result.registered('realised')['changed']

Each run gets a private directory (ansible.cfg, ANSIBLE_HOME, local temp, SSH control
sockets), sees this repository as the collection ``nixcache.closure`` through
``build/collections``, and records every task result through the ``nixtest_record``
callback (so failed tasks are recorded too).  ``ansible-playbook`` is the one beside the
running Python (the test virtualenv).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from . import COLLECTIONS_PATH, REPO

CALLBACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'callback_plugins')

_ANSIBLE_CFG = """\
[defaults]
# Written by nixtest: every setting that matters comes from the environment.
"""


def ensure_collection_link():
    """``build/collections/ansible_collections/nixcache/closure`` -> the repository."""
    namespace_dir = os.path.join(COLLECTIONS_PATH, 'ansible_collections', 'nixcache')
    link = os.path.join(namespace_dir, 'closure')
    os.makedirs(namespace_dir, exist_ok=True)
    if not os.path.islink(link):
        os.symlink(REPO, link)
    return COLLECTIONS_PATH


def realise_play(**options):
    """A play of one ``nixcache.closure.realise`` task registered as ``realised``: ``paths``,
    ``root``, ``substituters`` and ``keys`` come from the extra vars of those names;
    ``options`` are further module options (values written as JSON, which YAML reads)."""
    lines = ['- hosts: all', '  gather_facts: false', '  tasks:', '    - name: Realise',
             '      nixcache.closure.realise:', '        paths: "{{ paths }}"',
             '        root: "{{ root }}"', '        substituters: "{{ substituters }}"',
             '        trusted_public_keys: "{{ keys }}"']
    lines += ['        %s: %s' % (name, json.dumps(value)) for name, value in sorted(options.items())]
    return '\n'.join(lines + ['      register: realised', ''])


def ansible_bin(name='ansible-playbook'):
    """An Ansible command from the virtualenv of the running Python."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(candidate):
        return candidate
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError('%s not found beside %s: run `make venv`' % (name, sys.executable))
    return found


def ansible_env(workdir, interpreter=None, extra=None, bin_dir=None):
    """The environment of an isolated Ansible run rooted at ``workdir``, with ``bin_dir``
    (default: the running Python's) first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('ANSIBLE_')}
    home = os.path.join(workdir, 'ansible-home')
    for sub in ('tmp', 'cp'):
        os.makedirs(os.path.join(home, sub), exist_ok=True)
    env.update({
        'ANSIBLE_CONFIG': os.path.join(workdir, 'ansible.cfg'),
        'ANSIBLE_HOME': home,
        'ANSIBLE_LOCAL_TEMP': os.path.join(home, 'tmp'),
        'ANSIBLE_SSH_CONTROL_PATH_DIR': os.path.join(home, 'cp'),
        'ANSIBLE_COLLECTIONS_PATH': ensure_collection_link(),
        'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': 'False',
        'ANSIBLE_PYTHON_INTERPRETER': interpreter or sys.executable,
        'ANSIBLE_FORCE_COLOR': '0',
        'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_HOST_KEY_CHECKING': 'False',
        'ANSIBLE_RETRY_FILES_ENABLED': 'False',
        'ANSIBLE_STDOUT_CALLBACK': 'default',
        'ANSIBLE_CALLBACK_PLUGINS': CALLBACK_DIR,
        'ANSIBLE_CALLBACKS_ENABLED': 'nixtest_record',
        'NIXTEST_RESULTS_FILE': os.path.join(workdir, 'results.jsonl'),
        'PATH': (bin_dir or os.path.dirname(sys.executable)) + os.pathsep + os.environ.get('PATH', ''),
    })
    env.update(extra or {})
    return env


class PlaybookResult:
    """What one ``ansible-playbook`` run did.

    ``rc``, ``stdout``, ``stderr``; ``events``: one dict a task result and host (keys
    play, host, task, action, register, status in ok/failed/ignored/skipped/unreachable,
    changed, result); ``stats``: host -> {ok, changed, failures, unreachable, skipped,
    rescued, ignored}; ``workdir`` (kept when the run failed or ``keep=True``).
    """

    def __init__(self, command, rc, stdout, stderr, events, stats, workdir):
        self.command = command
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.events = events
        self.stats = stats
        self.workdir = workdir

    @property
    def ok(self):
        return self.rc == 0

    def assert_ok(self):
        if self.rc != 0:
            raise AssertionError('ansible-playbook failed (rc=%d)\n%s' % (self.rc, self))
        return self

    def assert_failed(self):
        if self.rc == 0:
            raise AssertionError('ansible-playbook succeeded but should have failed\n%s' % self)
        return self

    def tasks(self, name=None, host=None, status=None):
        """Events filtered by task name, host and status."""
        return [e for e in self.events
                if (name is None or e['task'] == name)
                and (host is None or e['host'] == host)
                and (status is None or e['status'] == status)]

    def task(self, name, host=None):
        """The result dict of the last run of task ``name`` (on ``host``)."""
        found = self.tasks(name=name, host=host)
        if not found:
            raise KeyError('no result for task %r%s; tasks seen: %s' % (
                name, ' on %s' % host if host else '',
                sorted({e['task'] for e in self.events})))
        return found[-1]['result']

    def registered(self, var, host=None):
        """The result dict of the last task registered as ``var`` (on ``host``)."""
        found = [e for e in self.events
                 if e['register'] == var and (host is None or e['host'] == host)]
        if not found:
            raise KeyError('no task registered %r%s; registered: %s' % (
                var, ' on %s' % host if host else '',
                sorted({e['register'] for e in self.events if e['register']})))
        return found[-1]['result']

    def changed_tasks(self, host=None):
        return [e['task'] for e in self.events
                if e['changed'] and (host is None or e['host'] == host)]

    def failed_tasks(self, host=None):
        return [e['task'] for e in self.events
                if e['status'] in ('failed', 'unreachable') and (host is None or e['host'] == host)]

    def __str__(self):
        return '$ %s\n(workdir %s)\n--- stdout ---\n%s\n--- stderr ---\n%s' % (
            ' '.join(self.command), self.workdir, self.stdout[-20000:], self.stderr[-20000:])


def run_playbook(playbook, inventory=None, extra_vars=None, check=False, env=None, diff=False,
                 limit=None, tags=None, args=(), interpreter=None, verbosity=0, timeout=1800,
                 workdir=None, keep=False, ansible_playbook=None, prefix=()):
    """Run a playbook and return a PlaybookResult.

    ``playbook``: YAML text (or a list of plays, written as JSON).  ``inventory``: INI
    text (or a dict in the YAML inventory layout); by default a local ``localhost``.
    ``extra_vars``: a dict passed with ``-e @file``.  ``env``: extra environment
    variables (override ours).  ``interpreter``: the default Python of managed hosts
    that do not set ``ansible_python_interpreter`` (default: the running Python).
    ``workdir``: where to put the run's files (default: a new temporary directory,
    removed after a successful run unless ``keep``).  ``ansible_playbook``: another
    controller's ``ansible-playbook`` (default: the one beside the running Python).
    ``prefix``: a command that runs ``ansible-playbook`` (e.g.
    ``['prlimit', '--nofile=256', '--']``).
    """
    own_workdir = workdir is None
    workdir = tempfile.mkdtemp(prefix='nixtest-ansible-') if own_workdir else str(workdir)
    os.makedirs(workdir, exist_ok=True)

    with open(os.path.join(workdir, 'ansible.cfg'), 'w') as f:
        f.write(_ANSIBLE_CFG)
    playbook_file = os.path.join(workdir, 'playbook.yml')
    with open(playbook_file, 'w') as f:
        f.write(playbook if isinstance(playbook, str) else json.dumps(playbook, indent=2))
    if inventory is None:
        inventory = 'localhost ansible_connection=local\n'
    if isinstance(inventory, str):
        inventory_file = os.path.join(workdir, 'inventory.ini')
        text = inventory if inventory.endswith('\n') else inventory + '\n'
    else:
        inventory_file = os.path.join(workdir, 'inventory.yml')
        text = json.dumps(inventory, indent=2)
    with open(inventory_file, 'w') as f:
        f.write(text)
    results_file = os.path.join(workdir, 'results.jsonl')
    if os.path.exists(results_file):
        os.unlink(results_file)

    command = list(prefix) + [ansible_playbook or ansible_bin(), '-i', inventory_file, playbook_file]
    if extra_vars:
        vars_file = os.path.join(workdir, 'extra_vars.json')
        with open(vars_file, 'w') as f:
            json.dump(extra_vars, f, indent=2)
        command += ['-e', '@' + vars_file]
    if check:
        command.append('--check')
    if diff:
        command.append('--diff')
    if limit:
        command += ['--limit', limit]
    if tags:
        command += ['--tags', tags if isinstance(tags, str) else ','.join(tags)]
    if verbosity:
        command.append('-' + 'v' * verbosity)
    command += list(args)

    bin_dir = os.path.dirname(ansible_playbook) if ansible_playbook else None
    proc = subprocess.run(command, cwd=workdir, env=ansible_env(workdir, interpreter, env, bin_dir),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    events, stats = [], {}
    if os.path.exists(results_file):
        with open(results_file) as f:
            for line in f:
                record = json.loads(line)
                if record['kind'] == 'task':
                    events.append(record)
                elif record['kind'] == 'stats':
                    stats = record['stats']
    result = PlaybookResult(command, proc.returncode, proc.stdout, proc.stderr, events, stats,
                            workdir)
    if own_workdir and proc.returncode == 0 and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
        result.workdir = None
    return result
