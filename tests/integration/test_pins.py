"""``nixcache.closure.pins``: store paths per system from a JSON release manifest in a file,
behind HTTPS (a private CA) or in S3 (moto on loopback), through ansible-playbook."""
import json
import os
import platform

import pytest

from nixtest.ansible import run_playbook
from nixtest.http import CacheServer, make_pki, tls_context

X86 = '/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8'
ARM = '/nix/store/1d5w1hqic2hm3yq1gz7gcch7qz2c3cz3-postgresql-and-plugins-15.8'
PROVE = '/nix/store/3m6ld6a0fkvq1bxr7gqmfd4y8cq9hgb1-pg_prove-3.36'
MANIFEST = {'version': 1, 'packages': {
    'psql_15': {'x86_64-linux': X86, 'aarch64-linux': ARM},
    'pg_prove': {'x86_64-linux': PROVE},
}}

PLAY = '''
- hosts: localhost
  gather_facts: %(facts)s
  tasks:
    - name: Look up
      ansible.builtin.set_fact:
        found: "{{ query('nixcache.closure.pins', *names, manifest=manifest, **options) }}"
      register: looked_up
      ignore_errors: true
'''


def pins(manifest, names, facts=False, env=None, **options):
    result = run_playbook(PLAY % {'facts': 'true' if facts else 'false'},
                          extra_vars=dict(manifest=manifest, names=names, options=options),
                          env=env)
    result.assert_ok()
    return result.registered('looked_up')


@pytest.fixture(scope='module')
def manifest_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp('releases')
    (directory / 'pins.json').write_text(json.dumps(MANIFEST))
    (directory / 'broken.json').write_text(json.dumps(
        {'version': 1, 'packages': {'psql_15': {'x86_64-linux': '/nix/store/not-a-path'}}}))
    return directory


def test_pins_from_a_file_for_the_host_and_for_another_system(manifest_dir):
    manifest = str(manifest_dir / 'pins.json')
    if platform.machine() == 'x86_64':
        host = pins(manifest, ['psql_15', 'pg_prove'], facts=True)
        assert host['ansible_facts']['found'] == [X86, PROVE]
    arm = pins('file://' + manifest, ['psql_15'], system='aarch64-linux')
    assert arm['ansible_facts']['found'] == [ARM]

    missing = pins(manifest, ['pg_prove'], system='aarch64-linux')
    assert 'no aarch64-linux build of pg_prove' in missing['msg']
    assert 'found: x86_64-linux' in missing['msg']
    unknown = pins(manifest, ['groonga'], system='x86_64-linux')
    assert 'no package groonga' in unknown['msg'] and 'pg_prove, psql_15' in unknown['msg']
    no_system = pins(manifest, ['psql_15'])
    assert 'Task failed' in no_system['msg'] and 'set system' in no_system['msg']
    broken = pins(str(manifest_dir / 'broken.json'), ['psql_15'], system='x86_64-linux')
    assert 'Task failed' in broken['msg'] and 'is not a store path' in broken['msg']
    absent = pins(str(manifest_dir / 'absent.json'), ['psql_15'], system='x86_64-linux')
    assert 'Task failed' in absent['msg'] and 'does not exist' in absent['msg']


def test_pins_over_https_with_a_private_ca(manifest_dir, tmp_path):
    pki = make_pki(tmp_path)
    with CacheServer(str(manifest_dir), tls=tls_context(pki, client_certificates=False)) as server:
        url = server.url + '/pins.json'
        assert url.startswith('https://127.0.0.1:')
        found = pins(url, ['psql_15'], system='aarch64-linux', ca_path=str(pki / 'ca.pem'))
        assert found['ansible_facts']['found'] == [ARM]
        refused = pins(url, ['psql_15'], system='aarch64-linux', retries=0)
        assert 'Task failed' in refused['msg'] and 'CERTIFICATE_VERIFY_FAILED' in refused['msg']


def test_pins_from_s3(manifest_dir, tmp_path, monkeypatch):
    boto3 = pytest.importorskip('boto3')
    moto_server = pytest.importorskip('moto.server')
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    try:
        endpoint = '127.0.0.1:%d' % server.get_host_and_port()[1]
        for name in list(os.environ):  # nothing of the machine's AWS settings
            if name.startswith('AWS_'):
                monkeypatch.delenv(name)
        env = {'AWS_CONFIG_FILE': str(tmp_path / 'none'), 'AWS_SHARED_CREDENTIALS_FILE':
               str(tmp_path / 'none'), 'AWS_EC2_METADATA_DISABLED': 'true'}
        client = boto3.session.Session(aws_access_key_id='k', aws_secret_access_key='s',
                                       region_name='us-east-1').client(
            's3', endpoint_url='http://' + endpoint)
        client.create_bucket(Bucket='releases')
        client.upload_file(str(manifest_dir / 'pins.json'), 'releases', 'postgres/15.8/pins.json')
        url = 's3://releases/postgres/15.8/pins.json?region=us-east-1&endpoint=%s&scheme=http' \
            % endpoint
        found = pins(url, ['psql_15', 'pg_prove'], system='x86_64-linux', env=env,
                     access_key='k', secret_key='s')
        assert found['ansible_facts']['found'] == [X86, PROVE]
        absent = pins(url.replace('15.8', '16.4'), ['psql_15'], system='x86_64-linux', env=env,
                      access_key='k', secret_key='s')
        assert 'Task failed' in absent['msg'] and 'does not exist' in absent['msg']
    finally:
        server.stop()
