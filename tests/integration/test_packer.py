"""The Packer template builds an AMI end to end, offline.

Debian's Packer 1.6.6 runs ``packer/postgres-ami.pkr.hcl`` against moto's EC2 on loopback:
the amazon-ebs builder creates a security group and an instance, but its SSH connection
goes to a fresh debootstrap'd Debian root with its own sshd (a stand-in for the instance),
where the ansible provisioner applies ``playbooks/postgres.yml`` from the collection
tarball; then moto stops the instance and makes the AMI, and the manifest post-processor
records it.  A build whose cache keys do not match the signatures must fail, naming the
path it refused.
"""
import json
import os
import shutil
import subprocess

import pytest

from nixtest import REPO
from nixtest.ansible import ansible_bin
from nixtest.http import CacheServer
from nixtest.target import TargetHost

pytestmark = pytest.mark.slow

PACKER = shutil.which('packer') or '/usr/bin/packer'
TEMPLATE = os.path.join(REPO, 'packer', 'postgres-ami.pkr.hcl')
REGION = 'us-east-1'
KEY_NAME = 'nixcache-packer-test'
# Placeholders good enough for `packer validate`.
VALIDATE_VARS = {
    'postgres_store_path': '/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8',
    'substituters': ['https://cache.example.org'],
    'trusted_public_keys': ['cache.example.org-1:' + 'A' * 43 + '='],
}


def _require_packer():
    if not os.path.exists(PACKER):
        pytest.fail('packer is missing: run `make deps`', pytrace=False)


def var_args(variables):
    """``-var name=value`` arguments; lists and numbers written as HCL/JSON literals."""
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


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture
def aws_env(monkeypatch):
    """Dummy credentials for boto3 in this process; the machine's profile and CA bundle
    must not leak in."""
    for name in ('AWS_PROFILE', 'AWS_CA_BUNDLE', 'AWS_SESSION_TOKEN', 'AWS_CONFIG_FILE',
                 'AWS_SHARED_CREDENTIALS_FILE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'testing')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'testing')
    monkeypatch.setenv('AWS_DEFAULT_REGION', REGION)


@pytest.fixture(scope='module')
def moto_ec2():
    """moto's server on 127.0.0.1 (a free port): ``(endpoint_url, boto3 EC2 client)``."""
    boto3 = pytest.importorskip('boto3')
    server_module = pytest.importorskip('moto.server')
    server = server_module.ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try:
        endpoint = 'http://127.0.0.1:%d' % server._server.server_address[1]
        client = boto3.client('ec2', endpoint_url=endpoint, region_name=REGION,
                              aws_access_key_id='testing', aws_secret_access_key='testing')
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture(scope='module')
def packer_target(tmp_path_factory):
    """A fresh target of this module's own (the session one is changed by other tests)."""
    if not os.path.exists('/usr/sbin/debootstrap'):
        pytest.fail('debootstrap is missing: run `make deps`', pytrace=False)
    target = TargetHost(tmp_path_factory.mktemp('packer-target') / 'root').start()
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture(scope='module')
def source_ami(moto_ec2):
    """An x86_64 Amazon Linux 2 image that moto lists."""
    dummy, ec2 = moto_ec2
    images = ec2.describe_images(Owners=['amazon'], Filters=[
        {'Name': 'name', 'Values': ['amzn2-ami-hvm-*']},
        {'Name': 'architecture', 'Values': ['x86_64']}])['Images']
    assert images, 'moto lists no amzn2-ami-hvm-* image'
    return sorted(images, key=lambda image: image['Name'])[-1]


@pytest.fixture(scope='module')
def key_pair(moto_ec2, packer_target):
    """The target's root key, imported into moto: Packer launches with it and logs in
    with it."""
    dummy, ec2 = moto_ec2
    with open(packer_target.key_file + '.pub', 'rb') as f:
        ec2.import_key_pair(KeyName=KEY_NAME, PublicKeyMaterial=f.read())
    return KEY_NAME, packer_target.key_file


@pytest.fixture(scope='module')
def pg_cache_server(caches):
    with CacheServer(caches.root) as server:
        yield server


@pytest.fixture(scope='module')
def collection_tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp('collection')
    proc = subprocess.run([ansible_bin('ansible-galaxy'), 'collection', 'build',
                           '--output-path', str(out), REPO],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tarballs = [name for name in os.listdir(str(out)) if name.endswith('.tar.gz')]
    assert len(tarballs) == 1, tarballs
    return os.path.join(str(out), tarballs[0])


@pytest.fixture(scope='module')
def requirements_file(collection_tarball):
    """A requirements file naming the built tarball, as a user would write one."""
    path = os.path.join(os.path.dirname(collection_tarball), 'requirements.yml')
    with open(path, 'w') as handle:
        handle.write('---\ncollections:\n  - name: %s\n    type: file\n' % collection_tarball)
    return path


@pytest.fixture(scope='module')
def build_vars(moto_ec2, source_ami, key_pair, packer_target, requirements_file):
    """The variables every offline build shares: moto, the target, the tarball."""
    endpoint, dummy = moto_ec2
    name, key_file = key_pair
    return {
        'region': REGION,
        'ec2_endpoint': endpoint,
        'source_ami': source_ami['ImageId'],
        'root_device_name': source_ami.get('RootDeviceName') or '/dev/xvda',
        'instance_type': 't3.micro',
        'ssh_host': '127.0.0.1',
        'ssh_port': packer_target.port,
        'ssh_username': 'root',
        'ssh_keypair_name': name,
        'ssh_private_key_file': key_file,
        'galaxy_file': requirements_file,
    }


def packer_build(tmp_path, variables):
    workdir = str(tmp_path)
    variables = dict(variables, manifest_path=os.path.join(workdir, 'packer-manifest.json'),
                     collections_dir=os.path.join(workdir, 'collections'))
    proc = run_packer(['build', '-color=false', '-on-error=cleanup'] + var_args(variables)
                      + [TEMPLATE], workdir)
    return proc, variables['manifest_path']


# -- tests ---------------------------------------------------------------------------------

def test_templates_validate(tmp_path):
    _require_packer()
    fmt = run_packer(['fmt', '-check', os.path.join(REPO, 'packer')], str(tmp_path))
    assert fmt.returncode == 0, 'packer fmt -check: files to reformat\n' + show(fmt)
    # with the default galaxy_file, and with the test hooks
    for extra in ({}, {'ec2_endpoint': 'http://127.0.0.1:1', 'ssh_host': '127.0.0.1'}):
        validate = run_packer(['validate'] + var_args(dict(VALIDATE_VARS, **extra)) + [TEMPLATE],
                              str(tmp_path))
        assert validate.returncode == 0, show(validate)
    # the store path, caches and keys are required
    missing = run_packer(['validate', TEMPLATE], str(tmp_path))
    assert missing.returncode != 0
    assert 'postgres_store_path' in missing.stdout + missing.stderr


def test_packer_build_offline(aws_env, tmp_path, build_vars, moto_ec2, packer_target,
                              pg_cache_server, caches, pg_closure):
    _require_packer()
    target = packer_target
    proc, manifest_path = packer_build(tmp_path, dict(
        build_vars,
        ami_name_prefix='nixtest-postgres',
        postgres_store_path=pg_closure.top,
        substituters=[pg_cache_server.url_for('xz')],
        trusted_public_keys=[caches['xz'].public_key]))
    assert proc.returncode == 0, show(proc)

    with open(manifest_path) as f:
        manifest = json.load(f)
    build = manifest['builds'][-1]
    region, dummy, ami = build['artifact_id'].partition(':')
    assert region == REGION and ami.startswith('ami-'), build
    closure_hash = os.path.basename(pg_closure.top)[:32]
    assert build['custom_data'] == {'postgres_store_path': pg_closure.top,
                                    'closure_hash': closure_hash}

    # moto holds the AMI, named and tagged after the closure
    dummy, ec2 = moto_ec2
    image = ec2.describe_images(ImageIds=[ami])['Images'][0]
    assert image['Name'].startswith('nixtest-postgres-%s-' % closure_hash), image['Name']
    tags = {tag['Key']: tag['Value'] for tag in image.get('Tags', [])}
    assert tags.get('nixcache:store') == pg_closure.top, tags
    assert tags.get('nixcache:hash') == closure_hash, tags

    # and the "instance" has PostgreSQL from the cache
    version = target.run('/usr/lib/postgresql/bin/postgres --version', check=True).stdout
    assert 'PostgreSQL' in version and pg_closure.version in version, version
    assert target.run('readlink -f /var/lib/postgresql/.nix-profile',
                      check=True).stdout.strip() == pg_closure.top
    receipts = target.run('ls /nix/var/nixcache/receipts/', check=True).stdout.split()
    assert os.path.basename(pg_closure.top) + '.json' in receipts, receipts
    # the playbook's own check ran during the build
    assert '(PostgreSQL) %s' % pg_closure.version in proc.stdout, show(proc)


def test_packer_build_fails_on_untrusted_key(aws_env, tmp_path, build_vars, moto_ec2,
                                             pg_cache_server, nix_keys, pg_closure_b):
    # Another top path than the first build's, so the target has to fetch (and refuse) it.
    _require_packer()
    proc, manifest_path = packer_build(tmp_path, dict(
        build_vars,
        ami_name_prefix='nixtest-untrusted',
        postgres_store_path=pg_closure_b.top,
        substituters=[pg_cache_server.url_for('xz')],
        trusted_public_keys=[nix_keys.untrusted.public]))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, show(proc)
    assert 'no signature' in output or 'UntrustedPath' in output, show(proc)
    assert pg_closure_b.top in output, show(proc)
    # no AMI, no manifest, and the instance was cleaned up
    assert not os.path.exists(manifest_path)
    dummy, ec2 = moto_ec2
    assert ec2.describe_images(Owners=['self'], Filters=[
        {'Name': 'name', 'Values': ['nixtest-untrusted-*']}])['Images'] == []
    running = ec2.describe_instances(Filters=[
        {'Name': 'tag:nixcache:store', 'Values': [pg_closure_b.top]},
        {'Name': 'instance-state-name', 'Values': ['pending', 'running', 'stopped']}])
    assert running['Reservations'] == [], running['Reservations']
