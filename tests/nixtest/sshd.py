"""A private OpenSSH server on 127.0.0.1 that Ansible reaches as a bare managed host.

    with Sshd() as sshd:
        inventory = '[targets]\\n' + sshd.inventory('target1', nixcache_x='y') + '\\n'

It runs Debian's ``/usr/sbin/sshd`` with its own host key, configuration, authorized key
and log in a temporary directory, allows only root with the generated key, and listens
on a free loopback port.  The managed host's Python is Debian's ``/usr/bin/python3`` run with ``-S`` through
a small wrapper, so it sees the standard library only (no cryptography, no zstandard,
even when the machine has python3-cryptography): the collection's modules must work there
through their standard-library fallbacks.  Pass ``python='/usr/bin/python3'`` for the
machine's Python as it is.
"""
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time

SSHD = '/usr/sbin/sshd'
BARE_PYTHON = '/usr/bin/python3'

_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM {use_pam}
StrictModes no
UseDNS no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel {log_level}
"""


class SshdError(RuntimeError):
    pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Sshd:
    """An sshd on loopback; ``start()``/``stop()`` or use it as a context manager."""

    def __init__(self, log_level='INFO', python=None):
        self.log_level = log_level
        self.python = python
        self.directory = None
        self.port = None
        self.host = '127.0.0.1'
        self.user = 'root'
        self.private_key = None
        self.process = None
        self._log = None

    def start(self, timeout=20):
        if not os.path.exists(SSHD):
            raise SshdError('%s not found: run `make deps` (installs openssh-server)' % SSHD)
        self.directory = tempfile.mkdtemp(prefix='nixtest-sshd-')
        d = self.directory
        if self.python is None:
            self.python = _bare_python(d)
        _keygen(os.path.join(d, 'ssh_host_ed25519_key'))
        self.private_key = os.path.join(d, 'id_ed25519')
        _keygen(self.private_key)
        shutil.copyfile(self.private_key + '.pub', os.path.join(d, 'authorized_keys'))
        # sshd insists on its privilege separation directory.
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)

        last_error = None
        for _attempt in range(5):
            self.port = free_port()
            config = os.path.join(d, 'sshd_config')
            with open(config, 'w') as f:
                f.write(_CONFIG.format(port=self.port, dir=d, log_level=self.log_level,
                                       use_pam='yes' if _root_locked() else 'no'))
            subprocess.run([SSHD, '-t', '-f', config], check=True, capture_output=True)
            self._log = open(os.path.join(d, 'sshd.log'), 'ab')
            self.process = subprocess.Popen([SSHD, '-D', '-e', '-f', config],
                                            stdout=self._log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
            try:
                self._wait_ready(timeout)
                return self
            except SshdError as exc:  # port taken in between: try another one
                last_error = exc
                self._kill()
        raise last_error

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SshdError('sshd exited with %s:\n%s' % (self.process.returncode, self.log()))
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(4).startswith(b'SSH-'):
                        return
            except OSError:
                time.sleep(0.05)
        raise SshdError('sshd did not answer on port %d:\n%s' % (self.port, self.log()))

    def _kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self):
        self._kill()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        try:
            with open(os.path.join(self.directory, 'sshd.log'), errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    @property
    def ssh_common_args(self):
        return ('-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null '
                '-o IdentitiesOnly=yes -o LogLevel=ERROR')

    def hostvars(self, **extra):
        """The connection variables for a host reached through this sshd."""
        variables = {
            'ansible_host': self.host,
            'ansible_port': self.port,
            'ansible_user': self.user,
            'ansible_ssh_private_key_file': self.private_key,
            'ansible_ssh_common_args': self.ssh_common_args,
            'ansible_python_interpreter': self.python,
        }
        variables.update(extra)
        return variables

    def inventory(self, name, **hostvars):
        """One INI inventory line for host ``name`` with the connection variables and
        any extra ``hostvars``."""
        fields = [name]
        for key, value in self.hostvars(**hostvars).items():
            fields.append('%s=%s' % (key, shlex.quote(str(value))))
        return ' '.join(fields)

    def ssh_command(self, *command):
        """An argv that runs ``command`` on the host over this sshd (for checks)."""
        return (['ssh', '-p', str(self.port), '-i', self.private_key]
                + shlex.split(self.ssh_common_args)
                + ['%s@%s' % (self.user, self.host), '--'] + list(command))


def _bare_python(directory):
    """A wrapper that runs Debian's Python without its site directories (``-S``), so the
    host has only the standard library whatever python3-* packages the machine has
    (cloud images often carry python3-cryptography)."""
    path = os.path.join(directory, 'python3-bare')
    with open(path, 'w') as f:
        f.write('#!/bin/sh\nexec %s -S "$@"\n' % BARE_PYTHON)
    os.chmod(path, 0o755)
    return path


def _root_locked():
    """Without PAM, sshd refuses accounts whose password field starts with '!'."""
    try:
        with open('/etc/shadow') as f:
            for line in f:
                fields = line.split(':')
                if fields[0] == 'root':
                    return fields[1].startswith('!')
    except OSError:
        pass
    return False


def _keygen(path):
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'nixtest', '-f', path],
                   check=True, capture_output=True)
