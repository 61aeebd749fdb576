"""A target host that behaves like a fresh EC2 instance: a debootstrap'd Debian root with its
own sshd on 127.0.0.1, in its own mount and PID namespace, reached over SSH as root.

    with TargetHost('/tmp/some/root') as target:
        result = run_playbook(playbook, inventory=target.inventory())
        target.run('locale -a').stdout
        open(target.path('/etc/debian_version')).read()

The root is unpacked from ``build/target/bookworm-minbase.tar``, which is built once with
``debootstrap --variant=minbase`` (about 40 s) and rebuilt only when the recipe (suite,
included packages, locales) changes.  Each start gets fresh SSH host keys and a fresh client
key.  Inside the namespace the root has ``/proc`` (of its own PID namespace), a small
``/dev`` (null, zero, full, random, urandom, tty, its own devpts and shm) and a read-only
``/sys``; all of these mounts live in the namespace only and vanish with it, so nothing
reaches the machine's mount table.  There is no systemd: start daemons by hand.
"""
import ctypes
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

from . import BUILD_DIR, REPO
from .fixtures import _Lock
from .daemon import LoopbackDaemon
from .sshd import _keygen

TARGET_BUILD_DIR = os.path.join(BUILD_DIR, 'target')
SUITE = 'bookworm'
VARIANT = 'minbase'
MIRROR = 'http://deb.debian.org/debian'
INCLUDE = ('python3', 'openssh-server', 'sudo', 'locales', 'bash', 'procps',
           # what playbooks using community.postgresql install on their hosts
           'python3-psycopg2')
LOCALES = ('en_US.UTF-8 UTF-8',)
# Bump when the way the tarball is made changes.
RECIPE_VERSION = 1

CLEAN_ENV = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
             'LANG': 'C', 'HOME': '/root', 'DEBIAN_FRONTEND': 'noninteractive'}

SSH_COMMON_ARGS = ('-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null '
                   '-o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR')

# Run inside the new mount and PID namespace (as its PID 1, until it execs sshd): a small
# /dev and a read-only /sys like a real host's, then sshd as PID 1 of the namespace.
_NAMESPACE_SCRIPT = r"""
set -e
R="$1"; shift
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for d in null zero full random urandom tty; do
    touch "$R/dev/$d"
    mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys" 2>/dev/null || true
exec chroot "$R" "$@"
"""


class TargetError(RuntimeError):
    pass


def recipe():
    """What the cached tarball depends on."""
    return {'suite': SUITE, 'variant': VARIANT, 'mirror': MIRROR, 'include': sorted(INCLUDE),
            'locales': list(LOCALES), 'version': RECIPE_VERSION}


def recipe_key():
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()


def base_tarball(directory=TARGET_BUILD_DIR):
    """The path of ``bookworm-minbase.tar``, built first if missing or made by another
    recipe.  Takes a lock, so parallel runs build it once."""
    tarball = os.path.join(directory, '%s-%s.tar' % (SUITE, VARIANT))
    key_file = tarball + '.key'
    with _Lock(os.path.join(directory, '.lock')):
        if os.path.exists(tarball) and _read(key_file) == recipe_key():
            return tarball
        for stale in (tarball, key_file):
            if os.path.exists(stale):
                os.unlink(stale)
        _build_tarball(directory, tarball)
        with open(key_file + '.tmp', 'w') as f:
            f.write(recipe_key())
        os.rename(key_file + '.tmp', key_file)
        return tarball


def _build_tarball(directory, tarball):
    if shutil.which('debootstrap') is None:
        raise TargetError('debootstrap not found: run `make deps`')
    work = tempfile.mkdtemp(prefix='build-', dir=directory)
    root = os.path.join(work, 'root')
    try:
        # In a private mount and PID namespace: debootstrap's /proc and /sys mounts, and
        # any daemon a package's postinst starts, end with it even when it fails.
        _run(['unshare', '--mount', '--pid', '--fork', '--kill-child',
              'debootstrap', '--variant=' + VARIANT, '--include=' + ','.join(INCLUDE),
              SUITE, root, MIRROR], 'debootstrap', timeout=1800)
        _refuse_mounts_under(root)
        locale_gen = os.path.join(root, 'etc', 'locale.gen')
        for entry in LOCALES:
            _run(['sed', '-i', 's/^# *%s$/%s/' % (entry, entry), locale_gen], 'sed')
            with open(locale_gen) as f:
                if entry not in [line.strip() for line in f]:
                    with open(locale_gen, 'a') as f2:
                        f2.write(entry + '\n')
        _run(['unshare', '--mount', '--pid', '--fork', '--kill-child',
              'chroot', root, 'locale-gen'], 'locale-gen')
        if not os.path.exists(os.path.join(root, 'usr/lib/locale/locale-archive')):
            raise TargetError('locale-gen made no /usr/lib/locale/locale-archive')
        # Like a cloud image: host keys are made on first boot (here: on start).
        ssh_dir = os.path.join(root, 'etc', 'ssh')
        for name in os.listdir(ssh_dir):
            if name.startswith('ssh_host_'):
                os.unlink(os.path.join(ssh_dir, name))
        for sub in ('var/cache/apt/archives', 'var/lib/apt/lists'):
            base = os.path.join(root, sub)
            for name in os.listdir(base) if os.path.isdir(base) else ():
                if name.endswith('.deb') or name.endswith('_Packages'):
                    os.unlink(os.path.join(base, name))
        _refuse_mounts_under(root)
        _run(['tar', '-C', root, '--numeric-owner', '--xattrs', '--acls',
              '-cf', tarball + '.tmp', '.'], 'tar')
        os.rename(tarball + '.tmp', tarball)
    finally:
        if os.path.exists(tarball + '.tmp'):
            os.unlink(tarball + '.tmp')
        remove_root(work)


class TargetHost(LoopbackDaemon):
    """A fresh Debian root under ``root`` with its own sshd on 127.0.0.1:``port``.

    ``start()``/``stop()`` or use it as a context manager.  ``key_file`` is root's private
    key; ``inventory(name)`` an INI inventory line for ``ansible-playbook``; ``run(cmd)``
    runs a shell command on the target over SSH; ``path(p)`` is target path ``p`` as seen
    from the machine.  ``stop()`` removes ``root`` unless ``keep_root=True``.
    """

    error = TargetError

    def __init__(self, root, keep_root=False):
        self.root = os.path.abspath(str(root))
        self.keep_root = keep_root
        self.user = 'root'
        self.key_file = None
        self.sshd_pid = None
        self.start_seconds = None
        self._state = None
        self._memory_log = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout=30):
        started = time.monotonic()
        super().start(timeout)
        self.start_seconds = time.monotonic() - started
        return self

    def prepare(self):
        """Unpack the root and make the keys: the slow part of ``start()``, which then only
        starts sshd.  Safe in a helper thread (to prepare many hosts at once); ``start()``
        is not: sshd dies with the thread that started it (PR_SET_PDEATHSIG)."""
        try:
            self._prepare()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _prepare(self):
        if self._state is not None:    # prepared already
            return
        tarball = base_tarball()
        if os.path.exists(self.root) and os.listdir(self.root):
            raise TargetError('%s exists and is not empty' % self.root)
        os.makedirs(self.root, exist_ok=True)
        self._state = tempfile.mkdtemp(prefix='.target-', dir=os.path.dirname(self.root))
        _run(['tar', '-C', self.root, '--numeric-owner', '--xattrs', '--acls',
              '-xpf', tarball], 'tar')
        _run(['chroot', self.root, 'ssh-keygen', '-A'], 'ssh-keygen -A')
        os.makedirs(self.path('/run/sshd'), mode=0o755, exist_ok=True)
        self.key_file = os.path.join(self._state, 'id_ed25519')
        _keygen(self.key_file)
        ssh_dir = self.path('/root/.ssh')
        os.makedirs(ssh_dir, exist_ok=True)
        os.chmod(ssh_dir, 0o700)
        authorized = os.path.join(ssh_dir, 'authorized_keys')
        shutil.copyfile(self.key_file + '.pub', authorized)
        os.chmod(authorized, 0o600)

    def _spawn(self):
        command = ['unshare', '--mount', '--pid', '--fork', '--kill-child',
                   '--mount-proc=' + self.path('/proc'),
                   'sh', '-c', _NAMESPACE_SCRIPT, 'target-ns', self.root,
                   '/usr/sbin/sshd', '-D', '-e', '-p', str(self.port),
                   '-o', 'ListenAddress=127.0.0.1',
                   '-o', 'PermitRootLogin=prohibit-password',
                   '-o', 'PasswordAuthentication=no',
                   '-o', 'UseDNS=no',
                   '-o', 'MaxStartups=100:30:200', '-o', 'MaxSessions=100']
        # Own session (setsid); if the test process dies, unshare gets SIGKILL and
        # --kill-child takes sshd and the whole namespace with it.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=CLEAN_ENV,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        self.sshd_pid = None

    def _waiting(self):
        if self.sshd_pid is None:
            self.sshd_pid = _child_of(self.process.pid)

    def _terminate(self):
        """Kill the namespace's PID 1 (sshd); the kernel then kills everything else in it
        and ``unshare`` exits.  Killing ``unshare`` alone would leave sshd running."""
        pid = self.sshd_pid or _child_of(self.process.pid)
        if pid is not None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
        if self.process.poll() is None:
            self.process.kill()  # --kill-child sends SIGKILL to sshd
        self.process.wait(timeout=30)
        self.sshd_pid = None

    def _cleanup(self):
        if not self.keep_root and os.path.exists(self.root):
            remove_root(self.root)
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)
            self._state = None

    def log_path(self):
        return os.path.join(self._state, 'sshd.log')

    # -- use -------------------------------------------------------------------------

    def path(self, p):
        """Target path ``p`` (absolute) as a path on the machine, under ``root``."""
        p = os.path.normpath('/' + str(p))
        return os.path.join(self.root, p.lstrip('/'))

    def hostvars(self, **extra):
        variables = {
            'ansible_host': self.host,
            'ansible_port': self.port,
            'ansible_user': self.user,
            'ansible_ssh_private_key_file': self.key_file,
            'ansible_python_interpreter': '/usr/bin/python3',
            'ansible_ssh_common_args': SSH_COMMON_ARGS,
        }
        variables.update(extra)
        return variables

    def inventory(self, name='target', **hostvars):
        """INI inventory text with one host ``name`` and its connection variables."""
        fields = [name] + ['%s=%s' % (k, shlex.quote(str(v)))
                           for k, v in self.hostvars(**hostvars).items()]
        return ' '.join(fields) + '\n'

    def ssh_command(self, command):
        """The argv that runs shell ``command`` on the target."""
        return (['ssh', '-p', str(self.port), '-i', self.key_file]
                + shlex.split(SSH_COMMON_ARGS)
                + ['%s@%s' % (self.user, self.host), '--', command])

    def record_module_memory(self, log='/var/tmp/module-rss.log'):
        """Install benchmarks/maxrss.py on the target as an interpreter that runs
        /usr/bin/python3 and appends each run's peak RSS (KiB) and seconds to ``log``;
        returns its target path, for ``ansible_python_interpreter``.  ``module_memory()``
        reads the figures back."""
        with open(os.path.join(REPO, 'benchmarks', 'maxrss.py')) as f:
            text = f.read()
        text = text.replace('PYTHON = None', "PYTHON = '/usr/bin/python3'", 1)
        text = text.replace('LOG = None', 'LOG = %r' % log, 1)
        interpreter = '/usr/local/bin/python3-maxrss'
        with open(self.path(interpreter), 'w') as f:
            f.write('#!/usr/bin/python3 -IS\n' + text)
        os.chmod(self.path(interpreter), 0o755)
        if os.path.exists(self.path(log)):
            os.unlink(self.path(log))
        self._memory_log = log
        return interpreter

    def module_memory(self):
        """[(peak RSS in MiB, seconds)] of every Python run since record_module_memory()."""
        try:
            with open(self.path(self._memory_log)) as f:
                return [(int(kib) / 1024.0, float(seconds))
                        for kib, seconds in (line.split()[:2] for line in f)]
        except FileNotFoundError:
            return []

    def sh(self, command, user=None, ok=True):
        """The stripped standard output of shell ``command`` on the target, run as ``user``
        (through runuser, from /tmp) when given; with ``ok``, a failure names the command,
        its exit code and its output."""
        if user:
            command = 'cd /tmp && runuser -u %s -- bash -c %s' % (user, shlex.quote(command))
        proc = self.run(command)
        if ok:
            assert proc.returncode == 0, '%s: rc=%d\n%s\n%s' % (
                command, proc.returncode, proc.stdout, proc.stderr)
        return proc.stdout.strip()

    def realpath(self, path):
        """Where ``path`` leads on the target, every link followed (``readlink -f``)."""
        return self.sh('readlink -f %s' % shlex.quote(path))

    def run(self, command, check=False, timeout=300, input=None):
        """Run shell ``command`` on the target over SSH; a CompletedProcess (text)."""
        return subprocess.run(self.ssh_command(command), capture_output=True, text=True,
                              check=check, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)


# -- helpers -------------------------------------------------------------------------------

def remove_root(path):
    """Remove a target root (made writable first), refusing while anything is mounted
    under it in the machine's mount table."""
    path = os.path.realpath(path)
    if not os.path.exists(path):
        return
    _refuse_mounts_under(path)
    subprocess.run(['chmod', '-R', 'u+w', path], capture_output=True, check=False)
    shutil.rmtree(path)


def mounts_under(path):
    path = os.path.realpath(path).rstrip('/')
    found = []
    with open('/proc/self/mounts') as f:
        for line in f:
            target = line.split()[1].replace('\\040', ' ')
            if target == path or target.startswith(path + '/'):
                found.append(target)
    return found


def _refuse_mounts_under(path):
    found = mounts_under(path)
    if found:
        raise TargetError('refusing to touch %s: mounted under it: %s' % (path, found))


def _child_of(pid):
    """The PID of ``pid``'s child (the namespace's PID 1), or None."""
    try:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
            children = f.read().split()
        if children:
            return int(children[0])
    except OSError:
        pass
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rpartition(')')[2].split()[1]) == pid:
            return int(name)
    return None


def _die_with_parent():
    """In the child before exec: SIGKILL when the parent goes (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:  # pylint: disable=broad-except
        pass


def _run(command, what, timeout=600):
    proc = subprocess.run(command, capture_output=True, text=True, env=CLEAN_ENV,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise TargetError('%s failed (rc=%d): %s\n%s\n%s' % (
            what, proc.returncode, ' '.join(command), proc.stdout[-5000:], proc.stderr[-5000:]))
    return proc


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
