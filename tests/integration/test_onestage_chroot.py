"""The one-stage image build's chroot step, for real, on a volume of its own.

``packer/scripts/surrogate-build.sh`` is what the surrogate instance runs in
``packer/postgres-ami-surrogate.pkr.hcl``.  Here this machine is the surrogate and the
"attached volume" is an image file: the script partitions it (GPT), formats it (vfat for
EFI, ext4 for the root), attaches the partitions as loop devices, unpacks the
debootstrap'd Debian root into it, bind-mounts /dev, /proc and /sys, installs this
collection from its Galaxy tarball (community.general, for its chroot connection, comes
from ``make collections-extra``) and runs the installed collection's playbook
(``nixcache.closure.postgres``, that is ``playbooks/postgres.yml``) with ``-c community.general.chroot -i '<mount>,'``.
Each run is in a private mount namespace, so nothing can leak into the machine's mount
table even if the script misbehaved; inside it the test still checks that the script
unmounted everything itself and detached its loop devices, also when the playbook fails.

The result is judged from outside, as the AMI's first boot would see the volume: its root
partition mounted again, real ``nix-store --store ROOT --verify --check-contents``, and
Postgres started from the root (``chroot ROOT`` as the postgres user: initdb, pg_ctl start,
rows written and read back with psql).
"""
import json
import os
import subprocess

import pytest

from nixtest import BUILD_DIR, REPO, fixtures
from nixtest.ansible import CALLBACK_DIR, ansible_bin
from nixtest.http import CacheServer
from nixtest.packer import collection_tarball, show
from nixtest.target import base_tarball
from nixtest.volume import assert_postgres_on, loops_of, new_volume

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(REPO, 'packer', 'scripts', 'surrogate-build.sh')
PLAYBOOK = os.path.join(REPO, 'playbooks', 'postgres.yml')
COLLECTIONS_EXTRA = os.path.join(BUILD_DIR, 'collections-extra')
COMMUNITY_GENERAL = os.path.join(COLLECTIONS_EXTRA, 'ansible_collections', 'community', 'general')

# Runs in the private mount namespace: the script, then whether it left anything mounted.
_BUILD = r'''
bash "$SCRIPT"; rc=$?
if findmnt -rn -R "$NIXCACHE_MOUNT" >/dev/null; then
    echo "LEFT MOUNTED: $(findmnt -rn -o TARGET -R "$NIXCACHE_MOUNT" | tr '\n' ' ')"
fi
exit $rc
'''


def _require_tools():
    for tool in ('/usr/sbin/sfdisk', '/usr/sbin/mkfs.vfat', '/usr/sbin/debootstrap'):
        if not os.path.exists(tool):
            pytest.fail('%s is missing: run `make deps`' % tool, pytrace=False)
    if not os.path.isdir(COMMUNITY_GENERAL):
        pytest.fail('community.general is missing: run `make collections-extra`', pytrace=False)


@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
    """This collection's Galaxy artifact, as ``ansible-galaxy collection build`` makes it:
    what the surrogate installs.  (community.general, for the chroot connection, comes from
    ``make collections-extra``: the wheel's copy lacks files its FILES.json lists, so it
    makes no installable artifact.)"""
    _require_tools()
    return collection_tarball(str(tmp_path_factory.mktemp('tarball')))


@pytest.fixture(scope='module')
def cache_vars(caches, pg_closure):
    """The zstd Postgres cache and a cache of Nix itself over HTTP on loopback (the
    chroot shares the machine's network), as the playbook's variables."""
    keys = fixtures.keys()
    nix_closure = fixtures.nix_closure()
    nix_caches = fixtures.caches(keys, [nix_closure], root=os.path.join(
        fixtures.FIXTURES_BUILD_DIR, 'caches-nix'), compressions=('xz',))
    with CacheServer(caches.root) as pg_server, CacheServer(nix_caches.root) as nix_server:
        yield {'postgres_store_path': pg_closure.top, 'nix_store_path': nix_closure.top,
               'substituters': [pg_server.url_for('zstd'), nix_server.url_for('xz')],
               'trusted_public_keys': [keys.trusted.public]}


def surrogate_build(workdir, volume, extra_vars, **settings):
    """Run the script as the surrogate would (as root), in a private mount namespace;
    the CompletedProcess and the task results the playbook recorded."""
    workdir = str(workdir)
    mount = os.path.join(workdir, 'mnt')
    vars_file = os.path.join(workdir, 'vars.json')
    with open(vars_file, 'w') as f:
        json.dump(extra_vars, f)
    results = os.path.join(workdir, 'results.jsonl')
    home = os.path.join(workdir, 'home')
    os.makedirs(home, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'NIXCACHE_'))}
    env.update({
        'PATH': os.path.dirname(ansible_bin()) + os.pathsep + env.get('PATH', '/usr/bin:/bin'),
        'HOME': home, 'ANSIBLE_HOME': os.path.join(home, '.ansible'),
        'ANSIBLE_COLLECTIONS_SCAN_SYS_PATH': 'False', 'ANSIBLE_NOCOLOR': '1',
        'ANSIBLE_CALLBACK_PLUGINS': CALLBACK_DIR, 'ANSIBLE_CALLBACKS_ENABLED': 'nixtest_record',
        'NIXTEST_RESULTS_FILE': results,
        'ANSIBLE_COLLECTIONS_PATH': COLLECTIONS_EXTRA,
        'SCRIPT': SCRIPT,
        'NIXCACHE_VOLUME': volume, 'NIXCACHE_MOUNT': mount,
        'NIXCACHE_ROOTFS': base_tarball(), 'NIXCACHE_PLAYBOOK': 'nixcache.closure.postgres',
        'NIXCACHE_EXTRA_VARS': vars_file, 'NIXCACHE_WORK': os.path.join(workdir, 'work'),
    })
    env.update(settings)
    proc = subprocess.run(['unshare', '--mount', '--propagation', 'private', '--',
                           'bash', '-c', _BUILD], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1500, check=False)
    events = []
    if os.path.exists(results):
        with open(results) as f:
            events = [record for record in map(json.loads, f) if record['kind'] == 'task']
    return proc, events


@pytest.fixture
def volume(tmp_path):
    path = new_volume(tmp_path)
    yield path
    for loop in loops_of(path):  # only if the script failed to: the test then fails too
        subprocess.run(['losetup', '-d', loop], check=False)


def test_chroot_build_puts_postgres_on_the_volume(tmp_path, volume, tarball, cache_vars,
                                                  pg_closure):
    host_profile = '/var/lib/postgresql/.nix-profile'
    host_had_profile = os.path.lexists(host_profile)
    proc, events = surrogate_build(tmp_path, volume, cache_vars,
                                   NIXCACHE_COLLECTIONS=tarball)
    assert proc.returncode == 0, show(proc)
    assert 'LEFT MOUNTED' not in proc.stdout, show(proc)
    assert loops_of(volume) == [], show(proc)
    assert 'nothing is mounted' in proc.stderr, show(proc)

    # every module ran in the chroot with its own Python, never with root: set
    assert events, show(proc)
    assert {e['host'] for e in events} == {os.path.join(str(tmp_path), 'mnt')}, events[:3]
    interpreters = {e['result']['ansible_facts']['discovered_interpreter_python']
                    for e in events if 'discovered_interpreter_python'
                    in e['result'].get('ansible_facts', {})}
    # (the chroot's own Debian Python, found by discovery inside it, not the controller's)
    assert len(interpreters) == 1 and interpreters.pop().startswith('/usr/bin/python3'), events
    realised = [e for e in events if e['action'] == 'nixcache.closure.realise']
    assert realised and all(e['status'] == 'ok' for e in realised), realised
    assert any(pg_closure.top in json.dumps(e['result']) for e in realised), realised
    version = [e for e in events if e['task'] == 'Show the version']
    assert version and pg_closure.version in version[0]['result']['msg'], version
    # ... and nothing of it landed on the surrogate
    assert os.path.lexists(host_profile) == host_had_profile
    # but the receipts and the SBOM came out of the volume, for Packer to download
    artifacts = tmp_path / 'work' / 'artifacts'
    assert sorted(os.listdir(artifacts / 'receipts')) == sorted(
        os.path.basename(path) + '.json' for path in (pg_closure.top, cache_vars['nix_store_path']))
    assert sorted(os.listdir(artifacts / 'sbom')) == ['image.cdx.json', 'image.spdx.json']
    with open(artifacts / 'sbom' / 'image.cdx.json') as f:
        components = {c['bom-ref'] for c in json.load(f)['components']}
    assert set(pg_closure.paths) | {cache_vars['nix_store_path']} <= components

    assert_postgres_on(volume, tmp_path, pg_closure)


def test_refuses_a_volume_that_holds_data(tmp_path, volume, tarball, cache_vars):
    """A volume with a partition table is not overwritten unless NIXCACHE_WIPE=yes."""
    subprocess.run(['sfdisk', '--quiet', '--label', 'gpt', volume], input='type=L\n',
                   text=True, check=True, capture_output=True)
    with open(volume, 'rb') as f:
        before = f.read(1024 * 1024)
    proc, events = surrogate_build(tmp_path, volume, cache_vars,
                                   NIXCACHE_COLLECTIONS=tarball)
    assert proc.returncode != 0, show(proc)
    assert 'already holds a partition table or file system; set NIXCACHE_WIPE=yes' \
        in proc.stderr, show(proc)
    assert events == []
    with open(volume, 'rb') as f:
        assert f.read(1024 * 1024) == before
    assert loops_of(volume) == []


def test_failed_playbook_leaves_nothing_mounted(tmp_path, volume, tarball, cache_vars,
                                                nix_keys):
    """A closure no trusted key signs fails the playbook; the script still unmounts
    /dev, /proc, /sys and the volume and detaches its loop devices, and says so."""
    untrusted = dict(cache_vars, trusted_public_keys=[nix_keys.untrusted.public],
                     nix_store_path='')
    proc, events = surrogate_build(tmp_path, volume, untrusted, NIXCACHE_WIPE='yes',
                                   NIXCACHE_COLLECTIONS=tarball)
    assert proc.returncode != 0, show(proc)
    failed = [e for e in events if e['status'] == 'failed']
    assert [e['action'] for e in failed] == ['nixcache.closure.cache_needs'] or \
        [e['action'] for e in failed] == ['nixcache.closure.realise'], failed
    assert 'everything mounted or attached was undone' in proc.stderr, show(proc)
    assert 'LEFT MOUNTED' not in proc.stdout, show(proc)
    assert loops_of(volume) == [], show(proc)


def test_script_refuses_bad_settings(tmp_path):
    """Missing or wrong settings stop the script before it touches anything."""
    env = {'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'}
    for settings, message in (
            ({}, 'NIXCACHE_VOLUME is not set'),
            ({'NIXCACHE_VOLUME': '/dev/xvdf', 'NIXCACHE_PLAYBOOK': '/nonexistent.yml'},
             'no playbook at /nonexistent.yml')):
        proc = subprocess.run(['bash', SCRIPT], env=dict(env, **settings), capture_output=True,
                              text=True, check=False, timeout=60)
        assert proc.returncode != 0 and message in proc.stderr, (settings, show(proc))
    mount = tmp_path / 'busy'
    mount.mkdir()
    (mount / 'file').write_text('x')
    proc = subprocess.run(['bash', SCRIPT], env=dict(
        env, NIXCACHE_VOLUME=new_volume(tmp_path), NIXCACHE_PLAYBOOK=PLAYBOOK,
        NIXCACHE_MOUNT=str(mount), NIXCACHE_ROOTFS=PLAYBOOK,
        ANSIBLE_PLAYBOOK='true', ANSIBLE_GALAXY='true'),
        capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode != 0 and 'is not empty' in proc.stderr, show(proc)
    mount = tmp_path / 'empty'
    mount.mkdir()
    proc = subprocess.run(['bash', SCRIPT], env=dict(
        env, NIXCACHE_VOLUME=new_volume(tmp_path), NIXCACHE_PLAYBOOK=PLAYBOOK,
        NIXCACHE_MOUNT=str(mount), NIXCACHE_ROOTFS=PLAYBOOK,
        NIXCACHE_ARTIFACTS=str(mount / 'artifacts'),
        ANSIBLE_PLAYBOOK='true', ANSIBLE_GALAXY='true'),
        capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode != 0 and 'must be outside' in proc.stderr, show(proc)
