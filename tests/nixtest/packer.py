"""Packer offline: run Debian's Packer 1.6.6 against moto's EC2 and S3 on loopback.

    with Moto(directory, images).start() as moto:     # or start()/stop()
        run_packer(['build', *var_args({'ec2_endpoint': moto.endpoint, ...}), template], workdir)

``Moto`` serves the base images given (MOTO_AMIS_PATH is read when moto is imported, so it
cannot be given to a server in this process: it runs in a process of its own).
``collection_tarball`` builds this collection's Galaxy tarball; ``packer_env`` is an
environment without the machine's AWS, Ansible or Packer settings.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

from . import REPO
from .ansible import ansible_bin
from .daemon import free_port

PACKER = shutil.which('packer') or '/usr/bin/packer'
REGION = 'us-east-1'
DEBIAN = '136693071363'


def collection_tarball(directory):
    """Build this collection's Galaxy tarball (``ansible-galaxy collection build``) into
    ``directory``; its path."""
    built = subprocess.run([ansible_bin('ansible-galaxy'), 'collection', 'build',
                            '--output-path', directory, REPO],
                           capture_output=True, text=True, check=False, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (name,) = [n for n in os.listdir(directory) if n.endswith('.tar.gz')]
    return os.path.join(directory, name)


def var_args(variables):
    """``-var name=value`` arguments; lists, maps and numbers written as JSON literals."""
    args = []
    for name, value in variables.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += ['-var', '%s=%s' % (name, text)]
    return args


def packer_env(workdir, extra=None):
    """An environment for Packer with nothing of the machine's AWS, Ansible or Packer
    settings: dummy credentials, a private HOME and Packer directories, the virtualenv's
    ansible-playbook first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('ANSIBLE_', 'AWS_', 'PACKER_', 'PKR_VAR_'))}
    home = os.path.join(workdir, 'home')
    for sub in ('home', 'packer-config', 'packer-cache', 'tmp'):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    env.update({
        'HOME': home,
        'TMPDIR': os.path.join(workdir, 'tmp'),
        'PACKER_CONFIG_DIR': os.path.join(workdir, 'packer-config'),
        'PACKER_CACHE_DIR': os.path.join(workdir, 'packer-cache'),
        'CHECKPOINT_DISABLE': '1',
        'AWS_ACCESS_KEY_ID': 'testing',
        'AWS_SECRET_ACCESS_KEY': 'testing',
        'AWS_DEFAULT_REGION': REGION,
        'PATH': os.path.dirname(ansible_bin()) + os.pathsep + os.environ.get('PATH', ''),
    })
    env.update(extra or {})
    return env


def run_packer(args, workdir, timeout=1200):
    return subprocess.run([PACKER] + args, cwd=workdir, env=packer_env(workdir),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def show(proc):
    return 'rc=%s\n--- stdout ---\n%s\n--- stderr ---\n%s' % (
        proc.returncode, proc.stdout[-30000:], proc.stderr[-10000:])


class Moto:
    """moto's server on 127.0.0.1 in a process of its own, serving EC2 and S3, with the
    Debian base images ``images``: (AMI id, name, architecture, creation date) each."""

    def __init__(self, directory, images):
        self.directory = directory
        self.images = images
        self.process = None
        self.endpoint = None

    def start(self):
        amis = os.path.join(self.directory, 'amis.json')
        with open(amis, 'w') as f:
            json.dump([{
                'ami_id': ami, 'name': name, 'description': name, 'owner_id': DEBIAN,
                'public': True, 'virtualization_type': 'hvm', 'architecture': arch,
                'state': 'available', 'platform': None, 'image_type': 'machine',
                'hypervisor': 'xen', 'root_device_name': '/dev/xvda',
                'root_device_type': 'ebs', 'sriov': 'simple', 'creation_date': created,
            } for ami, name, arch, created in self.images], f)
        env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
        env['MOTO_AMIS_PATH'] = amis
        server = os.path.join(os.path.dirname(sys.executable), 'moto_server')
        for _attempt in range(5):
            port = free_port()
            log = open(os.path.join(self.directory, 'moto.log'), 'ab')
            self.process = subprocess.Popen([server, '-H', '127.0.0.1', '-p', str(port)],
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
            log.close()
            self.endpoint = 'http://127.0.0.1:%d' % port
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    socket.create_connection(('127.0.0.1', port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError('moto_server did not start: see %s/moto.log' % self.directory)

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def client(self, service, region=REGION):
        import boto3
        return boto3.client(service, endpoint_url=self.endpoint, region_name=region,
                            aws_access_key_id='testing', aws_secret_access_key='testing')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
