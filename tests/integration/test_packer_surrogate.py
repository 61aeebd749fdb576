"""The one-stage template builds an AMI offline, as far as moto's EC2 goes.

Debian's Packer 1.6.6 runs ``packer/postgres-ami-surrogate.pkr.hcl`` with its
amazon-ebssurrogate builder against moto's EC2 on loopback, through a small proxy that
records each EC2 call.  The builder launches the surrogate with the build volume in its
block device mappings; its SSH goes to a private sshd on this machine, which stands in for
the surrogate: the file provisioners upload the collection's Galaxy tarball and the
scripts, surrogate-tools.sh finds nothing missing, and surrogate-build.sh builds the
image's root for real on an image file standing in for the attached volume (in a private
mount namespace, through the template's ``execute_command``), with the roles run through
the chroot connection.  moto then stops the instance, snapshots the volume and registers
the AMI; the test judges both sides: the EC2 calls (the volume launched at /dev/xvdf, its
snapshot registered as the AMI's /dev/xvda, hvm, ENA, the architecture), what came back
to the artifacts directory (the receipts of the closure and the image's SBOM, validated by
cyclonedx-python-lib and spdx-tools, at the pinned time) and the volume's root (real
``nix-store --verify --check-contents``, its store deduplicated in ``.links``, Postgres
started in it).

Not covered, because moto does not do it: moto keeps no block device mapping, root device,
architecture or ENA flag on a registered image (its RegisterImage takes the name only, so
they are checked in the request), its volumes hold no data (the image file stands in for
the snapshot's contents), and no instance boots from the AMI.  Not run here either:
chroot-boot.sh (kernel, GRUB, cloud-init from the Debian mirror; no boot to test it with),
debootstrap from the mirror (the root comes from the tests' debootstrap'd tarball),
surrogate-tools.sh's installs (this machine has the tools), and finding the volume's NVMe
name on a Nitro instance.
"""
import json
import os
import threading
import urllib.parse
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nixtest import BUILD_DIR, REPO
from nixtest.ansible import ansible_bin
from nixtest.http import CacheServer
from nixtest.packer import PACKER, collection_tarball, REGION, Moto, run_packer, show, var_args
from nixtest.sbom import assert_image_sbom
from nixtest.sshd import Sshd
from nixtest.target import base_tarball
from nixtest.volume import assert_postgres_on, loops_of, new_volume, store_links

pytestmark = pytest.mark.slow

TEMPLATE = os.path.join(REPO, 'packer', 'postgres-ami-surrogate.pkr.hcl')
KEY_NAME = 'nixcache-surrogate-test'
SURROGATE_AMI = 'ami-0de0000000000a0d1'
IMAGES = [(SURROGATE_AMI, 'debian-12-amd64-20260101-1', 'x86_64', '2026-01-01T00:00:00.000Z')]
COLLECTIONS_EXTRA = os.path.join(BUILD_DIR, 'collections-extra')
STORE_PATH = '/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8'
SBOM_TIMESTAMP = '2026-01-31T00:00:00Z'


class RecordingProxy:
    """Forwards every request to ``upstream`` (moto) and keeps the form of each EC2 call:
    ``calls(action)`` lists the parameters of each call of that action."""

    def __init__(self, upstream):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.forms = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                owner.forms.append({k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()})
                connection = HTTPConnection(owner.upstream.hostname, owner.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != 'host'}
                connection.request('POST', self.path, body, headers)
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ('content-length', 'transfer-encoding', 'connection'):
                        self.send_header(key, value)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls(self, action):
        return [form for form in self.forms if form.get('Action') == action]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope='module')
def ec2(tmp_path_factory):
    pytest.importorskip('boto3')
    pytest.importorskip('moto.server')
    with Moto(str(tmp_path_factory.mktemp('moto')), IMAGES).start() as moto:
        proxy = RecordingProxy(moto.endpoint)
        try:
            yield moto, proxy
        finally:
            proxy.close()


@pytest.fixture(scope='module')
def surrogate(ec2):
    """This machine over SSH as root, with its key imported into moto."""
    moto, _proxy = ec2
    with Sshd() as sshd:
        with open(sshd.private_key + '.pub', 'rb') as f:
            moto.client('ec2').import_key_pair(KeyName=KEY_NAME, PublicKeyMaterial=f.read())
        yield sshd


@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
    """This collection's Galaxy artifact, which the surrogate installs."""
    return collection_tarball(str(tmp_path_factory.mktemp('tarball')))


def _require():
    if not os.path.exists(PACKER):
        pytest.fail('packer is missing: run `make deps`', pytrace=False)
    if not os.path.isdir(os.path.join(COLLECTIONS_EXTRA, 'ansible_collections', 'community', 'general')):
        pytest.fail('community.general is missing: run `make collections-extra`', pytrace=False)


def test_surrogate_template_validates(tmp_path):
    _require()
    tarball = tmp_path / 'c.tar.gz'
    tarball.write_bytes(b'')
    common = {'substituters': ['https://cache.example.org'],
              'trusted_public_keys': ['cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY='],
              'collection_tarballs': [str(tarball)],
              'artifacts_dir': str(tmp_path / 'artifacts'), 'sbom_timestamp': SBOM_TIMESTAMP,
              'optimise_store': False}
    for arch, pins in (('x86_64', {'x86_64': {'postgres': STORE_PATH}}),
                       ('arm64', {'aarch64-linux': {'postgres': STORE_PATH}})):
        proc = run_packer(['validate'] + var_args(dict(common, architecture=arch, pins=pins))
                          + [TEMPLATE], str(tmp_path))
        assert proc.returncode == 0, show(proc)
    proc = run_packer(['validate'] + var_args(dict(common, architecture='arm64',
                                                   pins={'x86_64': {'postgres': STORE_PATH}}))
                      + [TEMPLATE], str(tmp_path))
    output = ' '.join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0 and 'no pins for arm64: add pins.arm64 (or pins.aarch64-linux)' in output, \
        show(proc)
    proc = run_packer(['validate'] + var_args(dict(common, architecture='ppc64le', pins={}))
                      + [TEMPLATE], str(tmp_path))
    assert proc.returncode != 0 and 'architecture must be x86_64 or arm64' in proc.stdout + proc.stderr


def test_surrogate_build_registers_the_volume_as_the_ami(tmp_path, ec2, surrogate, tarball,
                                                         caches, pg_closure):
    _require()
    moto, proxy = ec2
    workdir = str(tmp_path)
    volume = new_volume(tmp_path)
    manifest = os.path.join(workdir, 'manifest.json')
    artifacts = os.path.join(workdir, 'artifacts')
    home = os.path.join(workdir, 'surrogate-home')
    os.makedirs(home)
    # As root, in a private mount namespace, with community.general where ansible sees it.
    execute = ("unshare --mount --propagation private -- env HOME=%s ANSIBLE_COLLECTIONS_PATH=%s "
               "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=False sh -c '. {{ .EnvVarFile }} && {{ .Path }}'"
               % (home, COLLECTIONS_EXTRA))
    with CacheServer(caches.root) as server:
        cache_url = server.url_for('zstd')
        proc = run_packer(['build', '-color=false', '-on-error=cleanup'] + var_args({
            'region': REGION, 'ec2_endpoint': proxy.url, 'instance_types': {'x86_64': 't3.micro'},
            'surrogate_ami': SURROGATE_AMI,
            'ssh_host': '127.0.0.1', 'ssh_port': surrogate.port, 'surrogate_ssh_username': 'root',
            'ssh_keypair_name': KEY_NAME, 'ssh_private_key_file': surrogate.private_key,
            'execute_command': execute,
            'volume_path': volume, 'mount_point': os.path.join(workdir, 'mnt'),
            'rootfs': base_tarball(), 'boot_script': False,
            'work_dir': os.path.join(workdir, 'work'),
            'ansible_dir': os.path.dirname(os.path.dirname(ansible_bin())),
            'collection_tarballs': [tarball],
            'pins': {'x86_64': {'postgres': pg_closure.top}},
            'substituters': [cache_url],
            'trusted_public_keys': [caches['zstd'].public_key],
            'manifest_path': manifest, 'artifacts_dir': artifacts, 'tags': {'team': 'databases'},
            'sbom_timestamp': SBOM_TIMESTAMP,
        }) + [TEMPLATE], workdir)
    assert proc.returncode == 0, show(proc)
    assert 'surrogate-tools: installing' not in proc.stdout + proc.stderr, show(proc)
    assert 'nothing is mounted' in proc.stdout + proc.stderr, show(proc)
    assert loops_of(volume) == []

    # the manifest and moto's image
    with open(manifest) as f:
        (build,) = json.load(f)['builds']
    region, ami = build['artifact_id'].split(':')
    assert region == REGION and build['custom_data']['pipeline'] == 'one-stage', build
    client = moto.client('ec2')
    image = client.describe_images(ImageIds=[ami])['Images'][0]
    tags = {tag['Key']: tag['Value'] for tag in image.get('Tags', [])}
    assert tags['nixcache:pin:postgres'] == pg_closure.top and tags['team'] == 'databases', tags

    # the surrogate was launched with the build volume at /dev/xvdf ...
    (run,) = proxy.calls('RunInstances')
    devices = {run[key]: key.rsplit('.', 1)[0] for key in run if key.endswith('.DeviceName')}
    assert sorted(devices) == ['/dev/xvda', '/dev/xvdf'], run
    assert run[devices['/dev/xvdf'] + '.Ebs.VolumeSize'] == '10', run
    # ... that volume was snapshotted ...
    snapshots = proxy.calls('CreateSnapshot')
    assert len(snapshots) == 1, snapshots
    volumes = client.describe_snapshots(OwnerIds=['self'])['Snapshots']
    snapshot = [s for s in volumes if s['VolumeId'] == snapshots[0]['VolumeId']]
    assert len(snapshot) == 1, volumes
    # ... and registered as the AMI's root device, with what EC2 needs to boot it
    (register,) = proxy.calls('RegisterImage')
    assert register['RootDeviceName'] == '/dev/xvda', register
    assert register['BlockDeviceMapping.1.DeviceName'] == '/dev/xvda', register
    assert register['BlockDeviceMapping.1.Ebs.SnapshotId'] == snapshot[0]['SnapshotId'], register
    assert register['Architecture'] == 'x86_64', register
    assert register['VirtualizationType'] == 'hvm', register
    assert register['EnaSupport'] == 'true' and register['SriovNetSupport'] == 'simple', register
    assert register['Name'] == image['Name'], register

    # the receipts and the SBOM of the new root came back, where the manifest says
    assert build['custom_data']['receipts'] == os.path.join(artifacts, 'x86_64', 'receipts'), build
    assert build['custom_data']['sbom'] == os.path.join(artifacts, 'x86_64', 'sbom'), build
    assert os.listdir(build['custom_data']['receipts']) == [os.path.basename(pg_closure.top) + '.json']
    with open(os.path.join(build['custom_data']['receipts'], os.path.basename(pg_closure.top) + '.json')) as f:
        receipt = json.load(f)
    assert receipt['requested'] == pg_closure.top, receipt
    assert sorted(entry['path'] for entry in receipt['closure']) == sorted(pg_closure.paths), receipt
    assert {entry['cache'] for entry in receipt['closure']} == {cache_url}, receipt
    assert sorted(os.listdir(build['custom_data']['sbom'])) == ['image.cdx.json', 'image.spdx.json']
    assert_image_sbom(build['custom_data']['sbom'], pg_closure, SBOM_TIMESTAMP)

    # the volume (what the snapshot holds) has Postgres from the cache, a good store ...
    found = assert_postgres_on(volume, tmp_path, pg_closure)
    # ... deduplicated as the roles filled it (optimise_store's default): every .links entry
    # is a store file's, and some are shared by several files
    entries, linked, shared = store_links(found)
    assert entries > 0 and linked == entries and shared > 0, found['LINKS']
