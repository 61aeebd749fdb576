"""The collection artifact: the same bytes from two clones, only what users need in it, and it
installs from the tarball and from a git URL into a clean path where ansible-doc renders every
plugin and role."""
import fnmatch
import hashlib
import os
import subprocess
import tarfile
import time

import pytest

from nixtest.release import REPO, VENV_BIN, run, tool

artifact = tool('artifact')
versions = tool('versions')
GALAXY = os.path.join(VENV_BIN, 'ansible-galaxy')
ANSIBLE_DOC = os.path.join(VENV_BIN, 'ansible-doc')

# What the artifact may hold: the collection's own directories and files for users.
SHIPPED = ['MANIFEST.json', 'FILES.json', 'README.md', 'CHANGELOG.rst', 'COPYING',
           'changelogs', 'changelogs/changelog.yaml', 'changelogs/config.yaml',
           'docs', 'docs/docsite', 'docs/docsite/*.yml', 'docs/docsite/rst', 'docs/docsite/rst/*.rst',
           'meta', 'meta/*', 'plugins', 'plugins/*', 'roles', 'roles/*',
           'playbooks', 'playbooks/*', 'packer', 'packer/*']
# Never, wherever it is.
NEVER = ['*/__pycache__', '*.pyc', '*/.*', '.*', '*.tar.gz', 'tests', 'tests/*', 'build',
         'build/*', 'benchmarks*', 'changelogs/fragments*', '*.plugin-cache.yaml']


def head():
    return subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], check=True,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()


@pytest.fixture(scope='module')
def clone(tmp_path_factory):
    """A fresh clone of the repository's HEAD: other checkout times, a file system order of
    its own."""
    path = str(tmp_path_factory.mktemp('clone') / 'closure')
    subprocess.run(['git', 'clone', '-q', '--no-hardlinks', REPO, path], check=True)
    subprocess.run(['git', '-C', path, 'checkout', '-q', head()], check=True)
    return path


@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
    path = artifact.build(str(tmp_path_factory.mktemp('dist')))[0]
    return path


def digest(path):
    with open(path, 'rb') as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def test_same_bytes_from_two_clones(tarball, clone, tmp_path):
    again, commit = artifact.build(str(tmp_path / 'again'), ref=head(), repo=clone)
    assert commit == head()
    assert os.path.basename(again) == os.path.basename(tarball) == 'nixcache-closure-0.2.0.tar.gz'
    assert digest(again) == digest(tarball)


def test_plain_builds_hold_the_same_files(tmp_path, clone):
    """ansible-galaxy itself stamps the build time (see artifact.py): two of its builds differ in
    those bytes only; names, modes and every file's contents are the same, and the same as in
    the reproducible artifact."""
    built = []
    for number in (1, 2):
        out = str(tmp_path / str(number))
        result = run([GALAXY, 'collection', 'build', '--output-path', out, clone])
        assert result.returncode == 0, result.stdout
        built.append(os.path.join(out, 'nixcache-closure-0.2.0.tar.gz'))
        time.sleep(1.1)
    first, second = (artifact.content(path) for path in built)
    assert first == second
    assert digest(built[0]) != digest(built[1])     # the time stamps, as artifact.py says


def test_only_what_users_need(tarball):
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    unwanted = [name for name in names
                if any(fnmatch.fnmatch(name, pattern) for pattern in NEVER)
                or not any(fnmatch.fnmatch(name, pattern) for pattern in SHIPPED)]
    assert unwanted == []
    tracked = subprocess.run(['git', '-C', REPO, 'ls-files', 'plugins', 'roles', 'meta',
                              'docs/docsite', 'playbooks', 'packer'], check=True,
                             stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    assert set(tracked) - set(names) == set()
    for needed in ('MANIFEST.json', 'FILES.json', 'README.md', 'CHANGELOG.rst',
                   'changelogs/changelog.yaml', 'meta/runtime.yml', 'docs/docsite/extra-docs.yml'):
        assert needed in names


def install(source, tmp_path):
    home = tmp_path / 'home'
    collections = tmp_path / 'collections'
    home.mkdir()
    result = run([GALAXY, 'collection', 'install', '--offline', '-p', str(collections), source],
                 cwd=str(tmp_path), env={'HOME': str(home),
                                         'ANSIBLE_COLLECTIONS_PATH': str(collections)})
    assert result.returncode == 0, result.stdout
    assert 'nixcache.closure:0.2.0 was installed successfully' in result.stdout
    return str(collections), str(home)


@pytest.mark.parametrize('kind', ['tarball', 'git'])
def test_installed_collection_documents_every_plugin(kind, tarball, clone, tmp_path, source_items):
    source = tarball if kind == 'tarball' else 'git+file://%s,%s' % (clone, head())
    collections, home = install(source, tmp_path)
    installed = os.path.join(collections, 'ansible_collections', 'nixcache', 'closure')
    assert not os.path.exists(os.path.join(installed, 'tests'))
    # the installed collection documents all the source documents, options and all
    dump = versions.metadata_dump(collections)
    found, errors = versions.items(dump)
    assert errors == []
    assert found == source_items
    env = {'HOME': home, 'ANSIBLE_COLLECTIONS_PATH': collections}
    for kind_of_plugin, plugins in sorted(dump.items()):
        names = ['nixcache.closure.' + name for name in sorted(plugins)]
        result = run([ANSIBLE_DOC, '-t', kind_of_plugin] + names, cwd=str(tmp_path), env=env)
        assert result.returncode == 0, result.stdout
        assert '[ERROR]' not in result.stdout and '[WARNING]' not in result.stdout, result.stdout
        for name in names:
            if kind_of_plugin == 'role':
                assert '> ROLE: *%s* (%s)' % (name, installed) in result.stdout
                assert 'ENTRY POINT: *main*' in result.stdout
            else:
                assert '> %s %s (%s/plugins/' % (kind_of_plugin.upper(), name, installed) in result.stdout
        if kind_of_plugin != 'role':
            assert result.stdout.count('EXAMPLES:') == len(names)
