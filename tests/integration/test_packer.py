"""The Packer template builds AMIs end to end, offline, for both architectures.

Debian's Packer 1.6.6 runs ``packer/postgres-ami.pkr.hcl`` against moto's EC2 (and S3) on
loopback: for each architecture the amazon-ebs builder creates a security group and an
instance, but its SSH connection goes to a fresh debootstrap'd Debian root with its own sshd
(a stand-in for that architecture's instance), where the ansible provisioner applies
``playbooks/postgres.yml`` from the collection tarball; the receipts come back, moto stops
the instance and makes the AMI, and the manifest post-processor records it.

What the arm64 leg proves: both stand-in hosts are x86_64 (this machine), so the arm64 leg
realises an x86_64 Postgres closure under the arm64 pins.  It proves the template's arm64
side (its own source image found by architecture, instance type, pins, tags, receipts and
manifest entry, built in parallel with x86_64), not that Postgres runs on aarch64.  That a
closure built for aarch64 is refused on an x86_64 host, before any profile switch, is
proven with a real aarch64 program (assembled by Debian's cross binutils), which the test
then runs by its name through binfmt_misc and qemu-user, as an arm64 host would run it
(binfmt_misc works here in a private user namespace; the machine's handlers are untouched).
An arm64 leg that runs aarch64 Postgres would need an arm64 root and an aarch64 Postgres
closure, which the fixtures do not build.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from nixtest import REPO, fixtures
from nixtest.ansible import ansible_bin
from nixtest.http import CacheServer
from nixtest.packer import PACKER, REGION, Moto, run_packer, show, var_args
from nixtest.sbom import assert_image_sbom
from nixtest.target import TargetHost

pytestmark = pytest.mark.slow

TEMPLATE = os.path.join(REPO, 'packer', 'postgres-ami.pkr.hcl')
COPY_REGION = 'us-west-2'
KEY_NAME = 'nixcache-packer-test'
BUCKET = 'nixcache-packer'
ARCHITECTURES = ('x86_64', 'arm64')
STORE_PATH = '/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8'
STORE_PATH_ARM = '/nix/store/1c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8'
GOOD_KEY = 'cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY='
# Placeholders good enough for `packer validate`.
VALIDATE_VARS = {
    'pins': {'x86_64': {'postgres': STORE_PATH}, 'aarch64-linux': {'postgres': STORE_PATH_ARM}},
    'substituters': ['https://cache.example.org', 's3://bucket?region=eu-west-1'],
    'trusted_public_keys': [GOOD_KEY],
}


def _require_packer():
    if not os.path.exists(PACKER):
        pytest.fail('packer is missing: run `make deps`', pytrace=False)


def tags_of(resource):
    return {tag['Key']: tag['Value'] for tag in resource.get('Tags', [])}


def installed(target, package):
    return target.run("dpkg-query -W -f='${Status}' %s" % package).stdout == 'install ok installed'


# binfmt_misc's rule for aarch64 ELF executables (as qemu-user-static's own binfmt file has
# it); "F" opens the interpreter now, so it works from inside any root.
AARCH64_BINFMT = (
    r':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:'
    r'\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:%s:F')


def run_through_binfmt(program):
    """Run an aarch64 program by its name, as an arm64 host would, in a user namespace of
    its own with a binfmt_misc instance that hands aarch64 executables to qemu-user (the
    machine's own binfmt handlers are left alone).  Its standard output."""
    qemu = shutil.which('qemu-aarch64-static')
    if qemu is None:
        pytest.fail('qemu-aarch64-static is missing: run `make deps`', pytrace=False)
    script = ('mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && '
              'printf %s "$1" > /proc/sys/fs/binfmt_misc/register && exec "$2"')
    ran = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c', script,
                          'binfmt', AARCH64_BINFMT % qemu, program],
                         capture_output=True, text=True, check=False, timeout=60)
    assert ran.returncode == 0, ran
    return ran.stdout


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


# The base images moto serves, as the publishers name them: the newest of each architecture
# is the one to start from.  The decoy is newer and named for arm64, but is an x86_64 image:
# only the architecture filter keeps the arm64 build off it.
BASE_IMAGES = [
    ('ami-0de0000000000a0d1', 'debian-12-amd64-20260101-1', 'x86_64', '2026-01-01T00:00:00.000Z'),
    ('ami-0de0000000000a641', 'debian-12-arm64-20260101-1', 'arm64', '2026-01-01T00:00:00.000Z'),
    ('ami-0de0000000000a640', 'debian-12-arm64-20251201-1', 'arm64', '2025-12-01T00:00:00.000Z'),
    ('ami-0de000000000decoy', 'debian-12-arm64-20260201-1', 'x86_64', '2026-02-01T00:00:00.000Z'),
]

SOURCES = {'x86_64': 'ami-0de0000000000a0d1', 'arm64': 'ami-0de0000000000a641'}
# x86_64's set by the test, arm64's the template's default
INSTANCE_TYPES = {'x86_64': 't3.micro', 'arm64': 'c7g.large'}


@pytest.fixture(scope='module')
def moto(tmp_path_factory):
    """moto's server on 127.0.0.1 (a free port), serving EC2 and S3."""
    pytest.importorskip('boto3')
    pytest.importorskip('moto.server')
    server = Moto(str(tmp_path_factory.mktemp('moto')), BASE_IMAGES).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='module')
def packer_targets(tmp_path_factory, moto):
    """One fresh target per architecture (the session one is changed by other tests), with
    credentials for moto's S3 in root's ~/.aws as an instance profile would provide them."""
    if not os.path.exists('/usr/sbin/debootstrap'):
        pytest.fail('debootstrap is missing: run `make deps`', pytrace=False)
    targets = {}
    try:
        for arch in ARCHITECTURES:
            target = TargetHost(tmp_path_factory.mktemp('packer-target-' + arch) / 'root')
            targets[arch] = target.start()
            os.makedirs(target.path('/root/.aws'), exist_ok=True)
            with open(target.path('/root/.aws/credentials'), 'w') as f:
                f.write('[default]\naws_access_key_id = testing\n'
                        'aws_secret_access_key = testing\n')
        yield targets
    finally:
        for target in targets.values():
            target.stop()


@pytest.fixture(scope='module')
def key_pair(moto, packer_targets):
    """One key for both targets, imported into moto: Packer launches with it and logs in
    with it."""
    key_file = packer_targets['x86_64'].key_file
    with open(key_file + '.pub') as f:
        public = f.read()
    for target in packer_targets.values():
        with open(target.path('/root/.ssh/authorized_keys'), 'a') as f:
            f.write(public)
    with open(key_file + '.pub', 'rb') as f:
        moto.client('ec2').import_key_pair(KeyName=KEY_NAME, PublicKeyMaterial=f.read())
    return KEY_NAME, key_file


@pytest.fixture(scope='module')
def s3_cache(moto, caches):
    """The zstd cache in a moto S3 bucket: ``s3://`` URL for the target hosts."""
    s3 = moto.client('s3')
    s3.create_bucket(Bucket=BUCKET)
    top = caches['zstd'].directory
    for directory, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(directory, name)
            s3.upload_file(path, BUCKET, os.path.relpath(path, top).replace(os.sep, '/'))
    endpoint = moto.endpoint.split('://', 1)[1]
    return 's3://%s?region=%s&endpoint=%s&scheme=http' % (BUCKET, REGION, endpoint)


@pytest.fixture(scope='module')
def pg_cache_server(caches):
    with CacheServer(caches.root) as server:
        yield server


@pytest.fixture(scope='module')
def aarch64_cache(nix_keys):
    """A signed xz cache holding a real aarch64 program, and the closure."""
    closure = fixtures.aarch64_closure()
    root = os.path.join(fixtures.FIXTURES_BUILD_DIR, 'caches-aarch64')
    cache = fixtures.caches(nix_keys, [closure], root=root, compressions=('xz',))
    with CacheServer(cache.root) as server:
        yield closure, server.url_for('xz'), cache['xz'].public_key


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
def build_vars(moto, key_pair, packer_targets, requirements_file):
    """The variables every offline build shares: moto, the targets, the tarball."""
    name, key_file = key_pair
    return {
        'region': REGION,
        'ec2_endpoint': moto.endpoint,
        'instance_types': {'x86_64': 't3.micro'},
        'ssh_host': '127.0.0.1',
        'ssh_ports': {arch: target.port for arch, target in packer_targets.items()},
        'ssh_username': 'root',
        'ssh_keypair_name': name,
        'ssh_private_key_file': key_file,
        'galaxy_file': requirements_file,
    }


def packer_build(tmp_path, variables, only=None):
    workdir = str(tmp_path)
    variables = dict(variables, manifest_path=os.path.join(workdir, 'packer-manifest.json'),
                     collections_dir=os.path.join(workdir, 'collections'))
    args = ['build', '-color=false', '-on-error=cleanup']
    if only:
        args.append('-only=amazon-ebs.' + only)
    proc = run_packer(args + var_args(variables) + [TEMPLATE], workdir)
    return proc, variables['manifest_path']


SBOM_TIMESTAMP = '2026-01-31T00:00:00Z'


# -- tests ---------------------------------------------------------------------------------

def validate(tmp_path, variables, only=None):
    args = ['validate'] + (['-only=amazon-ebs.' + only] if only else [])
    return run_packer(args + var_args(variables) + [TEMPLATE], str(tmp_path))


def test_templates_validate(tmp_path):
    _require_packer()
    fmt = run_packer(['fmt', '-check', os.path.join(REPO, 'packer')], str(tmp_path))
    assert fmt.returncode == 0, 'packer fmt -check: files to reformat\n' + show(fmt)
    # with the default galaxy_file, with the test hooks, with every base image
    for extra in ({}, {'ec2_endpoint': 'http://127.0.0.1:1', 'ssh_host': '127.0.0.1',
                       'ssh_ports': {'x86_64': 2222}},
                  {'base_image': 'ubuntu-20.04'}, {'base_image': 'ubuntu-22.04'},
                  {'base_image': 'ubuntu-24.04', 'source_amis': {'arm64': 'ami-12345678'}},
                  {'subnet_filter': {'tag:Name': 'build'}, 'vpc_filter': {'tag:Name': 'build'},
                   'ami_regions': [COPY_REGION], 'kms_key_id': 'alias/images',
                   'region_kms_key_ids': {COPY_REGION: 'alias/images'},
                   'temporary_security_group_source_cidrs': ['192.0.2.0/24'],
                   'iam_instance_profile': 'read-cache', 'volume_type': 'gp2'}):
        proc = validate(tmp_path, dict(VALIDATE_VARS, **extra))
        assert proc.returncode == 0, show(proc)
    # one architecture alone, with only its pins
    proc = validate(tmp_path, dict(VALIDATE_VARS, pins={'arm64': {'postgres': STORE_PATH_ARM}}),
                    only='arm64')
    assert proc.returncode == 0, show(proc)
    # ... but not both with the pins of one
    proc = validate(tmp_path, dict(VALIDATE_VARS, pins={'arm64': {'postgres': STORE_PATH_ARM}}))
    output = ' '.join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0, show(proc)
    assert ('no pins for x86_64: add pins.x86_64 (or pins.x86_64-linux), or build arm64 alone '
            'with -only=amazon-ebs.arm64') in output, show(proc)
    # the pins, caches and keys are required
    missing = run_packer(['validate', TEMPLATE], str(tmp_path))
    assert missing.returncode != 0
    for name in ('pins', 'substituters', 'trusted_public_keys'):
        assert 'Unset variable "%s"' % name in missing.stdout + missing.stderr, show(missing)


def test_requirements_pin_this_release():
    """packer/requirements.yml installs the release this checkout is, not a branch."""
    import yaml
    with open(os.path.join(REPO, 'galaxy.yml')) as f:
        version = yaml.safe_load(f)['version']
    with open(os.path.join(REPO, 'packer', 'requirements.yml')) as f:
        (entry,) = yaml.safe_load(f)['collections']
    assert str(entry.get('version')) == version, entry


@pytest.mark.parametrize('name, value, expected', [
    # "e" is not in Nix's base32 alphabet
    ('pins', {'x86_64': {'postgres': STORE_PATH[:-33] + 'e' + STORE_PATH[-32:]}},
     "Nix's base32 (0123456789abcdfghijklmnpqrsvwxyz)"),
    ('pins', {'x86_64': {'postgres': STORE_PATH.replace('0c4v', '0c4')}}, '32-character hash'),
    ('pins', {'x86_64': {'postgres': '/usr/lib/postgresql'}}, 'must be store paths'),
    ('pins', {'x86_64': {'postgres': STORE_PATH, 'nix': 'nix-2.18'}}, 'must be store paths'),
    ('pins', {'x86_64': {'nix': STORE_PATH}}, 'must name a postgres store path'),
    ('pins', {'amd64': {'postgres': STORE_PATH}}, 'keyed by architecture (x86_64, arm64)'),
    ('substituters', ['ftp://cache.example.org'], 'starting with file://, http://, https://'),
    ('substituters', ['cache.example.org'], 'starting with file://, http://, https://'),
    ('substituters', [], 'starting with file://, http://, https://'),
    ('trusted_public_keys', ['cache.example.org-1'], 'name:base64 of a 32-byte key'),
    ('trusted_public_keys', [GOOD_KEY[:-2] + '='], 'name:base64 of a 32-byte key'),
    ('trusted_public_keys', ['cache example:' + GOOD_KEY.split(':')[1]],
     'name:base64 of a 32-byte key'),
    ('base_image', 'centos-7', 'one of debian-12, ubuntu-20.04, ubuntu-22.04, ubuntu-24.04'),
])
def test_validate_refuses_wrong_values(tmp_path, name, value, expected):
    """Each wrong value fails `packer validate`, naming the variable and what is expected."""
    _require_packer()
    proc = validate(tmp_path, dict(VALIDATE_VARS, **{name: value}))
    output = ' '.join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0, show(proc)
    assert expected in output, show(proc)
    assert 'The %s must' % name in output, show(proc)


def test_packer_build_refuses_other_architecture(aws_env, tmp_path, build_vars, moto,
                                                 packer_targets, aarch64_cache):
    """An aarch64 closure pinned for an x86_64 host fails before any profile switch, naming
    both architectures; the xz cache over HTTP needs nothing, so nothing is installed.
    (Runs first on its target: the two-architecture build installs boto3 there.)"""
    _require_packer()
    closure, url, public_key = aarch64_cache
    target = packer_targets['arm64']
    proc, manifest_path = packer_build(tmp_path, dict(
        build_vars, ami_name_prefix='nixtest-wrong-arch',
        pins={'arm64': {'postgres': closure.top}},
        substituters=[url], trusted_public_keys=[public_key]), only='arm64')
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, show(proc)
    assert 'is built for aarch64-linux' in output, show(proc)
    assert 'this host is x86_64-linux' in output, show(proc)
    assert closure.top in output, show(proc)
    # realised, refused, never made a profile
    program = target.path(closure.top + '/bin/aarch64-hello')
    assert os.path.exists(program)
    assert target.run('test -e /var/lib/postgresql/.nix-profile').returncode != 0
    assert not os.path.exists(manifest_path)
    assert moto.client('ec2').describe_images(Owners=['self'], Filters=[
        {'Name': 'name', 'Values': ['nixtest-wrong-arch-*']}])['Images'] == []
    # the caches needed nothing this host lacked: nothing was installed
    for package in ('zstd', 'python3-boto3', 'python3-brotli'):
        assert not installed(target, package), package
    # and the program the guard refused is a real aarch64 one: the kernel runs it through
    # qemu-user once binfmt_misc knows aarch64 (here in a private user namespace)
    assert run_through_binfmt(program) == 'hello from aarch64\n'


def test_packer_build_two_architectures(aws_env, tmp_path, build_vars, moto, packer_targets,
                                        s3_cache, caches, pg_closure, pg_closure_b):
    """Both architectures at once from a zstd cache in S3 on bare hosts: one AMI each,
    encrypted (as far as moto shows it), copied to a second region and tagged with its own pins; the receipts come
    back next to the manifest; the hosts got boto3 and nothing else (zstd goes through their libzstd)."""
    _require_packer()
    pins = {'x86_64': {'postgres': pg_closure.top}, 'aarch64-linux': {'postgres': pg_closure_b.top}}
    by_arch = {'x86_64': pg_closure, 'arm64': pg_closure_b}
    proc, manifest_path = packer_build(tmp_path, dict(
        build_vars, ami_name_prefix='nixtest-postgres', pins=pins,
        ami_regions=[COPY_REGION], tags={'team': 'databases'}, sbom_timestamp=SBOM_TIMESTAMP,
        substituters=[s3_cache], trusted_public_keys=[caches['zstd'].public_key]))
    assert proc.returncode == 0, show(proc)

    with open(manifest_path) as f:
        builds = {build['custom_data']['architecture']: build
                  for build in json.load(f)['builds']}
    assert sorted(builds) == sorted(ARCHITECTURES), builds
    ec2 = moto.client('ec2')
    for arch, closure in by_arch.items():
        build = builds[arch]
        closure_hash = os.path.basename(closure.top)[:32]
        assert build['custom_data']['postgres_store_path'] == closure.top, build
        assert build['custom_data']['closure_hash'] == closure_hash, build
        amis = dict(entry.split(':', 1) for entry in build['artifact_id'].split(','))
        assert sorted(amis) == sorted([REGION, COPY_REGION]), build

        # moto holds the AMI in both regions, named and tagged after its own pins
        for region, ami in amis.items():
            image = moto.client('ec2', region).describe_images(ImageIds=[ami])['Images'][0]
            assert image['Name'].startswith('nixtest-postgres-%s-%s-' % (arch, closure_hash))
            tags = tags_of(image)
            assert tags.get('nixcache:pin:postgres') == closure.top, (region, tags)
            assert tags.get('nixcache:architecture') == arch, tags
            assert tags.get('team') == 'databases', tags
        image = ec2.describe_images(ImageIds=[amis[REGION]])['Images'][0]
        assert image['Architecture'] == arch, image
        # started from the newest base image of its own architecture, on its instance type
        assert 'amazon-ebs.%s: Found Image ID: %s' % (arch, SOURCES[arch]) in proc.stdout
        instances = [instance for reservation in ec2.describe_instances(Filters=[
            {'Name': 'tag:nixcache:architecture', 'Values': [arch]},
            {'Name': 'tag:nixcache:pin:postgres', 'Values': [closure.top]}])['Reservations']
            for instance in reservation['Instances']]
        assert [i['InstanceType'] for i in instances] == [INSTANCE_TYPES[arch]], instances
        snapshots = [mapping['Ebs']['SnapshotId'] for mapping in image['BlockDeviceMappings']
                     if 'Ebs' in mapping]
        for snapshot in ec2.describe_snapshots(SnapshotIds=snapshots)['Snapshots']:
            assert tags_of(snapshot).get('nixcache:pin:postgres') == closure.top, snapshot
        # moto keeps no encryption flag on images and snapshots: see that Packer made the
        # encrypted copy and dropped the unencrypted one
        assert ('amazon-ebs.%s: Deregistering the AMI and deleting unencrypted temporary AMIs'
                % arch) in proc.stdout, show(proc)

        # the receipt came back next to the manifest
        receipt_file = os.path.join(build['custom_data']['receipts'],
                                    os.path.basename(closure.top) + '.json')
        with open(receipt_file) as f:
            receipt = json.load(f)
        assert closure.top in json.dumps(receipt), receipt
        assert BUCKET in json.dumps(receipt), receipt
        assert_image_sbom(build['custom_data']['sbom'], closure, SBOM_TIMESTAMP)

        # and the "instance" has PostgreSQL from the cache, and what the cache needed
        target = packer_targets[arch]
        version = target.run('/usr/lib/postgresql/bin/postgres --version', check=True).stdout
        assert closure.version in version, version
        assert target.run('readlink -f /var/lib/postgresql/.nix-profile',
                          check=True).stdout.strip() == closure.top
        # boto3 for the s3:// cache; zstd is read through the system's libzstd already
        assert installed(target, 'python3-boto3'), arch
        for package in ('zstd', 'python3-brotli', 'python3-zstandard', 'python3-apt'):
            assert not installed(target, package), (arch, package)


def test_packer_build_shows_progress_of_a_slow_realisation(
        aws_env, tmp_path, build_vars, moto, pg_cache_server, caches, pg_closure_b, packer_targets):
    """Inside Packer's provisioner, a realisation longer than 5 s prints progress lines.
    Runs after the two-architecture build: on the x86_64 host only the other top path of
    the Postgres closure is missing, and the cache holds its NAR back for 7 s."""
    _require_packer()
    pg_cache_server.fault('/xz/nar/*', delay=7, times=5)
    try:
        proc, manifest_path = packer_build(tmp_path, dict(
            build_vars, ami_name_prefix='nixtest-progress', pins={'x86_64': {'postgres': pg_closure_b.top}},
            substituters=[pg_cache_server.url_for('xz')],
            trusted_public_keys=[caches['xz'].public_key]), only='x86_64')
    finally:
        pg_cache_server.clear_faults()
    assert proc.returncode == 0, show(proc)
    lines = re.findall(r'amazon-ebs\.x86_64: realise \[[^]]+\]: (\d+)/(\d+) paths, ', proc.stdout)
    assert lines, show(proc)
    assert os.path.exists(manifest_path)


def test_packer_build_fails_on_untrusted_key(aws_env, tmp_path, build_vars, moto,
                                             pg_cache_server, nix_keys, small_closure):
    # A path no build here has realised, so the target has to fetch (and refuse) it.
    _require_packer()
    proc, manifest_path = packer_build(tmp_path, dict(
        build_vars,
        ami_name_prefix='nixtest-untrusted',
        pins={'x86_64': {'postgres': small_closure.top}},
        substituters=[pg_cache_server.url_for('xz')],
        trusted_public_keys=[nix_keys.untrusted.public]), only='x86_64')
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, show(proc)
    assert 'no signature' in output or 'UntrustedPath' in output, show(proc)
    assert small_closure.top in output, show(proc)
    # no AMI, no manifest, and the instance was cleaned up
    assert not os.path.exists(manifest_path)
    ec2 = moto.client('ec2')
    assert ec2.describe_images(Owners=['self'], Filters=[
        {'Name': 'name', 'Values': ['nixtest-untrusted-*']}])['Images'] == []
    running = ec2.describe_instances(Filters=[
        {'Name': 'tag:nixcache:store', 'Values': [small_closure.top]},
        {'Name': 'instance-state-name', 'Values': ['pending', 'running', 'stopped']}])
    assert running['Reservations'] == [], running['Reservations']
