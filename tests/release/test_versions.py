"""galaxy.yml, every version_added and the changelog agree (`make sanity` checks the repository
itself); the check names each disagreement; `make release`, re-run after more fragments and
options arrive, gives the whole release."""
import os
import re

import yaml

from nixtest.release import REPO, VENV_BIN, run, tool, working_copy

versions = tool('versions')
PYTHON = os.path.join(VENV_BIN, 'python')


def check(copy, *args):
    return run([PYTHON, os.path.join(copy, 'tests', 'release', 'versions.py'), 'check'] + list(args))


def edit(path, old, new):
    with open(path, encoding='utf-8') as stream:
        text = stream.read()
    assert old in text, (path, old)
    with open(path, 'w', encoding='utf-8') as stream:
        stream.write(text.replace(old, new, 1))


def test_galaxy_version_is_released_in_the_changelog():
    with open(os.path.join(REPO, 'galaxy.yml'), encoding='utf-8') as stream:
        version = str(yaml.safe_load(stream)['version'])
    with open(os.path.join(REPO, 'changelogs', 'changelog.yaml'), encoding='utf-8') as stream:
        releases = yaml.safe_load(stream)['releases']
    assert version == '0.2.0'
    assert version in releases
    with open(os.path.join(REPO, 'CHANGELOG.rst'), encoding='utf-8') as stream:
        assert 'v%s\n' % version in stream.read()


def test_every_item_with_its_version(source_items):
    """Plugins of 0.1.0 say 0.1.0, those added since 0.2.0, and every option and return value
    has the version of what holds it unless it came later."""
    found = source_items
    assert versions.effective(found, 'module realise')[0] == '0.1.0'
    assert versions.effective(found, 'module realise option paths')[0] == '0.1.0'
    assert versions.effective(found, 'module realise option progress_file')[0] == '0.2.0'
    assert versions.effective(found, 'module closure_arch')[0] == '0.2.0'
    assert versions.effective(found, 'role postgres entry main option postgres_layout')[0] == '0.2.0'
    assert versions.effective(found, 'role postgres entry main option postgres_store_path')[0] == '0.1.0'
    assert all(versions.effective(found, key)[0] in ('0.1.0', '0.2.0') for key in found)


def test_disagreements_are_named(tmp_path):
    copy = working_copy(str(tmp_path / 'repo'))
    realise = os.path.join(copy, 'plugins', 'modules', 'realise.py')
    edit(realise, '\nattributes:', '\n  brand_new:\n    description: An option added later.\n'
                                   '    type: str\nattributes:')
    edit(os.path.join(copy, 'plugins', 'modules', 'gc.py'),
         'version_added: 0.2.0', 'version_added: 0.3.0')
    with open(os.path.join(copy, 'changelogs', 'fragments', '99-later.yml'), 'w',
              encoding='utf-8') as stream:
        stream.write('---\nminor_changes:\n  - realise - a change merged after the release.\n')
    with open(os.path.join(copy, 'CHANGELOG.rst'), 'a', encoding='utf-8') as stream:
        stream.write('edited by hand\n')
    edit(os.path.join(copy, 'changelogs', 'fragments', '20-release.yml'),
         'is generated from the changelog fragments', 'is written from the changelog fragments')
    os.remove(os.path.join(copy, 'changelogs', 'fragments', '9-hardening.yml'))
    result = check(copy)
    assert result.returncode == 1, result.stdout
    for expected in (
            'module realise option brand_new: version_added is 0.1.0 (from module realise), '
            'but no release had it yet, so it is new in 0.2.0: set version_added: 0.2.0',
            "module gc: version_added 0.3.0 is newer than galaxy.yml's version 0.2.0",
            'changelogs/fragments/99-later.yml is not released: run `make release`',
            'module realise option brand_new is not recorded as part of 0.2.0',
            'CHANGELOG.rst is not what changelogs/changelog.yaml gives',
            'changelogs/fragments/9-hardening.yml, which 0.2.0 was made from, is gone'):
        assert expected in result.stdout, result.stdout

    os.rename(os.path.join(copy, 'changelogs', 'fragments', '99-later.yml'),
              os.path.join(copy, 'changelogs', 'fragments', '9-hardening.yml'))
    result = check(copy)
    assert ('changelogs/changelog.yaml: 0.2.0 says other bugfixes, minor_changes than its '
            'fragments now say: run `make release`' in result.stdout), result.stdout

    edit(os.path.join(copy, 'galaxy.yml'), 'version: 0.2.0', 'version: 0.2.1')
    result = check(copy)
    assert result.returncode == 1
    assert ('galaxy.yml says 0.2.1, but changelogs/changelog.yaml has no release 0.2.1'
            in result.stdout), result.stdout


def test_release_rerun_takes_later_fragments_and_plugins(tmp_path):
    """What `make release` does after other branches are merged: their fragments, options and
    plugins land in the same release, whose date stays."""
    copy = working_copy(str(tmp_path / 'repo'))
    edit(os.path.join(copy, 'plugins', 'modules', 'realise.py'), '\nattributes:',
         '\n  brand_new:\n    description: An option added later.\n    type: str\n'
         '    version_added: 0.2.0\nattributes:')
    with open(os.path.join(copy, 'plugins', 'lookup', 'pins.py'), encoding='utf-8') as stream:
        lookup = stream.read()
    lookup = re.sub(r'^name: pins$', 'name: later', lookup, flags=re.M)
    lookup = lookup.replace('short_description: ', 'short_description: A lookup merged later; ', 1)
    with open(os.path.join(copy, 'plugins', 'lookup', 'later.py'), 'w', encoding='utf-8') as stream:
        stream.write(lookup)
    with open(os.path.join(copy, 'changelogs', 'fragments', '99-later.yml'), 'w',
              encoding='utf-8') as stream:
        stream.write('---\nminor_changes:\n  - realise - a change merged after the release.\n')
    run(['git', '-C', copy, 'add', '-A'])
    result = run([PYTHON, os.path.join(copy, 'tests', 'release', 'versions.py'), 'release'])
    assert result.returncode == 0, result.stdout
    result = check(copy)
    assert result.returncode == 0, result.stdout
    with open(os.path.join(copy, 'CHANGELOG.rst'), encoding='utf-8') as stream:
        changelog = stream.read()
    release = changelog.split('\nv0.1.0\n')[0]
    assert 'realise - a change merged after the release.' in release
    assert 'later - A lookup merged later;' in release
    assert changelog.count('realise - a change merged after the release.') == 1
    with open(os.path.join(copy, 'changelogs', 'changelog.yaml'), encoding='utf-8') as stream:
        releases = yaml.safe_load(stream)['releases']
    with open(os.path.join(REPO, 'changelogs', 'changelog.yaml'), encoding='utf-8') as stream:
        before = yaml.safe_load(stream)['releases']
    assert releases['0.2.0']['release_date'] == before['0.2.0']['release_date']
    assert '99-later.yml' in releases['0.2.0']['fragments']
    assert releases['0.1.0'] == before['0.1.0']


def test_the_sboms_name_the_collection_version():
    """The tool version our SBOMs record is the collection's (galaxy.yml)."""
    with open(os.path.join(REPO, 'galaxy.yml'), encoding='utf-8') as stream:
        version = str(yaml.safe_load(stream)['version'])
    with open(os.path.join(REPO, 'plugins', 'module_utils', 'sbom.py'), encoding='utf-8') as stream:
        recorded = re.search(r"^TOOL_VERSION = '([^']+)'", stream.read(), re.M)
    assert recorded and recorded.group(1) == version, (recorded and recorded.group(1), version)
