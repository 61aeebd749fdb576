"""Check that galaxy.yml, every version_added and the changelog agree.

    versions.py check [--state released|development]
    versions.py release [--date YYYY-MM-DD]     (`make release`)

What the collection documents (plugins, roles and their entry points, options, suboptions and
return values) is read with ``ansible-doc --metadata-dump``, so every plugin type and every
plugin added later is covered.  ``tests/release/released.yaml`` records, for each release,
which of these items it had.  An item's version_added (its own, or else the one of what holds
it) must be the first release that had it; an item no release had yet must carry galaxy.yml's
version.

``release`` (re)makes galaxy.yml's version's release: it drops that release from
changelogs/changelog.yaml (keeping its date unless told another), lets ``antsibull-changelog
release`` add it again from every fragment no earlier release took and every plugin and role
with that version_added (fragments are kept: changelogs/config.yaml has keep_fragments), so a
re-run after more fragments and plugins were merged gives the whole release; it then records
the current items in released.yaml, and CHANGELOG.rst is written anew.

State ``released`` (what ``make sanity`` checks): galaxy.yml's version is a release in
changelogs/changelog.yaml that lists its new plugins and roles, no fragment is left
unreleased, the release's changes are what its fragments say now (none edited or removed since),
released.yaml records what the collection documents now and CHANGELOG.rst is the one
``antsibull-changelog generate`` writes.  State ``development``: galaxy.yml's
version is newer than every release and not released yet.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELEASED = os.path.join(REPO, 'tests', 'release', 'released.yaml')
CHANGELOG_YAML = os.path.join(REPO, 'changelogs', 'changelog.yaml')
FRAGMENTS = os.path.join(REPO, 'changelogs', 'fragments')
CHANGELOG = os.path.join(REPO, 'CHANGELOG.rst')
VERSION = re.compile(r'^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$')
DOCUMENTED = ('module', 'lookup', 'role', 'filter', 'test', 'inventory', 'callback',
              'connection', 'become', 'cache', 'cliconf', 'httpapi', 'netconf', 'shell',
              'strategy', 'vars')
# Where antsibull-changelog lists a new plugin or role of a type in changelog.yaml.
CHANGELOG_LISTS = {'module': ('modules',), 'role': ('objects', 'role')}

HEADER = '''\
# What each release of nixcache.closure documented: its plugins, roles (with their entry
# points), options and return values.  `make release` records galaxy.yml's version here
# (tests/release/versions.py record); `make sanity` checks every version_added against it.
# 0.1.0 is the tree of 2026-11-25 (commit a8d0577), the release changelog.yaml records; the
# fields of profile's closure_diff and generations results, which 0.1.0 returned and described
# in prose, are listed with it although their own entries were written later.
'''


class Version(tuple):
    def __new__(cls, text):
        match = VERSION.match(str(text))
        if not match:
            raise ValueError('%r is not a version X.Y.Z' % (text,))
        return super().__new__(cls, (int(part) for part in match.groups()))

    def __str__(self):
        return '.'.join(str(part) for part in self)


def load_yaml(path):
    with open(path, encoding='utf-8') as stream:
        return yaml.safe_load(stream)


def galaxy_version():
    return str(load_yaml(os.path.join(REPO, 'galaxy.yml'))['version'])


def venv_tool(name):
    tool = os.path.join(os.path.dirname(sys.executable), name)
    return tool if os.path.exists(tool) else name


def metadata_dump(collections_path=None):
    """ansible-doc's view of the collection: plugin type -> short name -> data.

    The repository's own, or the one installed under ``collections_path``."""
    galaxy = load_yaml(os.path.join(REPO, 'galaxy.yml'))
    namespace, name = galaxy['namespace'], galaxy['name']
    with tempfile.TemporaryDirectory(prefix='versions-') as tree:
        if collections_path is None:
            os.makedirs(os.path.join(tree, 'ansible_collections', namespace))
            os.symlink(REPO, os.path.join(tree, 'ansible_collections', namespace, name))
            collections_path = tree
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR='1')
        output = subprocess.run(
            [venv_tool('ansible-doc'), '--metadata-dump', '--no-fail-on-errors',
             '%s.%s' % (namespace, name)],
            env=env, cwd=tree, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    dump = json.loads(output)['all']
    prefix = '%s.%s.' % (namespace, name)
    return {kind: {full[len(prefix):]: data for full, data in dump[kind].items()
                   if full.startswith(prefix)}
            for kind in DOCUMENTED if dump.get(kind)}


def items(dump):
    """Every documented item: key -> (own version_added or None, key of its parent or None).

    Keys read as "module realise", "module realise option headers.name",
    "module profile return packages", "role nix_store entry cache_tools",
    "role nix_store entry cache_tools option nix_store_cache_paths".
    """
    found = {}
    errors = []

    def options(parent, section, specs, path=''):
        for name, spec in sorted((specs or {}).items()):
            key = '%s %s %s%s' % (parent, section, path, name)
            spec = spec or {}
            found[key] = (spec.get('version_added'), parent if not path else
                          '%s %s %s' % (parent, section, path.rstrip('.')))
            options(parent, section, spec.get('suboptions') or spec.get('contains'),
                    '%s%s.' % (path, name))

    for kind, plugins in sorted(dump.items()):
        for name, data in sorted(plugins.items()):
            plugin = '%s %s' % (kind, name)
            if data.get('error'):
                errors.append('%s: ansible-doc cannot read its documentation: %s'
                              % (plugin, data['error']))
                continue
            if kind == 'role':
                entries = data.get('entry_points') or {}
                found[plugin] = ((entries.get('main') or {}).get('version_added'), None)
                for entry, spec in sorted(entries.items()):
                    entry_key = '%s entry %s' % (plugin, entry)
                    found[entry_key] = (spec.get('version_added'), plugin)
                    options(entry_key, 'option', spec.get('options'))
                continue
            doc = data.get('doc') or {}
            found[plugin] = (doc.get('version_added'), None)
            options(plugin, 'option', doc.get('options'))
            options(plugin, 'return', data.get('return'))
    return found, errors


def effective(found, key):
    """An item's version_added: its own, else that of what holds it."""
    while key is not None:
        own, parent = found[key]
        if own is not None:
            return str(own), key
        key = parent
    return None, None


def first_release(released, key):
    versions = sorted((Version(version) for version, keys in released.items() if key in keys))
    return str(versions[0]) if versions else None


def check_version_added(found, released, current):
    errors = []
    for key in sorted(found):
        own, parent = found[key]
        if own is not None:
            try:
                if Version(own) > Version(current):
                    errors.append('%s: version_added %s is newer than galaxy.yml\'s version %s'
                                  % (key, own, current))
                    continue
            except ValueError as exc:
                errors.append('%s: version_added: %s' % (key, exc))
                continue
        elif parent is None:
            where = ('version_added of its main entry point (meta/argument_specs.yml)'
                     if key.startswith('role ') else 'version_added')
            errors.append('%s: no %s' % (key, where))
            continue
        value, source = effective(found, key)
        expected = first_release(released, key) or current
        if value != expected:
            inherited = '' if source == key else ' (from %s)' % source
            had = ('the first release that had it is %s' % expected
                   if first_release(released, key) else
                   'no release had it yet, so it is new in %s' % current)
            errors.append('%s: version_added is %s%s, but %s: set version_added: %s'
                          % (key, value, inherited, had, expected))
    return errors


def listed_in_changelog(release, kind):
    where = CHANGELOG_LISTS.get(kind, ('plugins', kind))
    entries = release
    for part in where:
        entries = (entries or {}).get(part) or {}
    return {entry['name'] for entry in entries or []}, '.'.join(where)


def check_changelog(found, changelog, current, state):
    errors = []
    releases = changelog.get('releases') or {}
    try:
        latest = max(Version(version) for version in releases) if releases else None
    except ValueError as exc:
        return ['changelogs/changelog.yaml: %s' % exc]
    taken = set()
    for release in releases.values():
        taken.update(release.get('fragments') or ())
    fragments = sorted(name for name in os.listdir(FRAGMENTS)
                       if name.endswith(('.yml', '.yaml')) and name not in taken
                       ) if os.path.isdir(FRAGMENTS) else []
    if state == 'released':
        if current not in releases:
            errors.append('galaxy.yml says %s, but changelogs/changelog.yaml has no release %s: '
                          'run `make release`' % (current, current))
        elif Version(current) != latest:
            errors.append('galaxy.yml says %s, but changelogs/changelog.yaml has a newer release %s'
                          % (current, latest))
        for name in fragments:
            errors.append('changelogs/fragments/%s is not released: run `make release` to add it '
                          'to %s' % (name, current))
    elif current in releases:
        errors.append('galaxy.yml says %s, which is already released: give the version being '
                      'developed' % current)
    elif latest is not None and Version(current) < latest:
        errors.append('galaxy.yml says %s, older than the latest release %s' % (current, latest))
    # New plugins and roles appear in the changelog of the release that added them.
    for key in sorted(found):
        kind, name = key.split(' ', 1)
        if ' ' in name or found[key][0] is None:
            continue
        version = str(found[key][0])
        if version in releases:
            names, where = listed_in_changelog(releases[version], kind)
            if name not in names:
                errors.append('changelogs/changelog.yaml: %s %s does not list %s, which has '
                              'version_added %s: run `make release`' % (version, where, key, version))
    for version, release in sorted(releases.items()):
        for kind in set(key.partition(' ')[0] for key in found) | {'module', 'role'}:
            names, where = listed_in_changelog(release, kind)
            for name in sorted(names):
                key = '%s %s' % (kind, name)
                if key not in found:
                    errors.append('changelogs/changelog.yaml: %s %s lists %s, which the '
                                  'collection does not have' % (version, where, key))
                elif str(found[key][0]) != version:
                    errors.append('changelogs/changelog.yaml: %s %s lists %s as new, but its '
                                  'version_added is %s' % (version, where, key, found[key][0]))
    return errors


def fragment_changes(names):
    """What the fragments ``names`` say, as changelog.yaml records a release's changes:
    section -> sorted entries (the release summary as it is); trivial entries are left out."""
    changes = {}
    for name in names:
        for section, entries in (load_yaml(os.path.join(FRAGMENTS, name)) or {}).items():
            if section == 'trivial':
                continue
            if isinstance(entries, str):
                changes[section] = entries
            else:
                changes.setdefault(section, []).extend(entries or ())
    return {section: entries if isinstance(entries, str) else sorted(entries)
            for section, entries in changes.items()}


def check_release_changes(changelog, current):
    """The release of galaxy.yml's version says what its fragments say now (one edited after
    the release was made would otherwise go unnoticed)."""
    release = (changelog.get('releases') or {}).get(current) or {}
    names = release.get('fragments') or ()
    gone = [name for name in names if not os.path.exists(os.path.join(FRAGMENTS, name))]
    if gone:
        return ['changelogs/fragments/%s, which %s was made from, is gone: run `make release`'
                % (name, current) for name in gone]
    wanted = fragment_changes(names)
    have = {section: entries if isinstance(entries, str) else sorted(entries)
            for section, entries in (release.get('changes') or {}).items()}
    if have != wanted:
        differ = sorted(section for section in set(have) | set(wanted)
                        if have.get(section) != wanted.get(section))
        return ['changelogs/changelog.yaml: %s says other %s than its fragments now say: run '
                '`make release`' % (current, ', '.join(differ))]
    return []


def check_changelog_file():
    tool = venv_tool('antsibull-changelog')
    with tempfile.TemporaryDirectory(prefix='changelog-') as scratch:
        expected = os.path.join(scratch, 'CHANGELOG.rst')
        subprocess.run([tool, 'generate', '--output', expected, '--output-format', 'rst'],
                       cwd=REPO, check=True)
        with open(expected, encoding='utf-8') as stream:
            want = stream.read()
    try:
        with open(CHANGELOG, encoding='utf-8') as stream:
            have = stream.read()
    except FileNotFoundError:
        return ['CHANGELOG.rst is missing: run `make release`']
    if have != want:
        return ['CHANGELOG.rst is not what changelogs/changelog.yaml gives: run `make release`']
    return []


def load_released():
    released = load_yaml(RELEASED) if os.path.exists(RELEASED) else {}
    return {str(version): set(keys or ()) for version, keys in (released or {}).items()}


def check(state):
    current = galaxy_version()
    try:
        Version(current)
    except ValueError as exc:
        return ['galaxy.yml version: %s' % exc]
    found, errors = items(metadata_dump())
    released = load_released()
    errors += check_version_added(found, released, current)
    changelog = load_yaml(CHANGELOG_YAML) or {}
    errors += check_changelog(found, changelog, current, state)
    if state == 'released':
        recorded = released.get(current)
        if recorded is None:
            errors.append('tests/release/released.yaml does not record %s: run `make release`'
                          % current)
        elif recorded != set(found):
            for key in sorted(set(found) - recorded):
                errors.append('%s is not recorded as part of %s in tests/release/released.yaml: '
                              'run `make release`' % (key, current))
            for key in sorted(recorded - set(found)):
                errors.append('tests/release/released.yaml records %s in %s, which the '
                              'collection no longer documents: run `make release`' % (key, current))
        errors += check_release_changes(changelog, current)
        errors += check_changelog_file()
    return errors


def release(date):
    """(Re)make galaxy.yml's version's release from all its fragments and plugins."""
    current = galaxy_version()
    Version(current)
    changelog = load_yaml(CHANGELOG_YAML) or {}
    releases = changelog.get('releases') or {}
    if current in releases:
        date = date or str(releases[current].get('release_date') or '')
        del releases[current]
        with open(CHANGELOG_YAML, 'w', encoding='utf-8') as stream:
            stream.write('---\n')
            yaml.safe_dump(changelog, stream, default_flow_style=False, width=100)
    date = date or str(datetime.date.today())
    # antsibull-changelog runs ansible-doc: the one beside this Python first.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    subprocess.run([venv_tool('antsibull-changelog'), 'release', '--version', current,
                    '--date', date, '--reload-plugins'], cwd=REPO, env=env, check=True)
    print('versions: released %s (%s) from %s' % (current, date, 'changelogs/fragments'))
    return record()


def record():
    current = galaxy_version()
    Version(current)
    found, errors = items(metadata_dump())
    if errors:
        return errors
    released = load_released()
    released[current] = set(found)
    with open(RELEASED, 'w', encoding='utf-8') as stream:
        stream.write(HEADER)
        yaml.safe_dump({version: sorted(keys) for version, keys in
                        sorted(released.items(), key=lambda pair: Version(pair[0]))},
                       stream, default_flow_style=False, width=100)
    print('versions: recorded %d documented items of %s in %s'
          % (len(found), current, os.path.relpath(RELEASED, REPO)))
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    sub = parser.add_subparsers(dest='command', required=True)
    check_parser = sub.add_parser('check', help='fail naming each disagreement')
    check_parser.add_argument('--state', choices=('released', 'development'), default='released')
    release_parser = sub.add_parser('release', help="(re)make galaxy.yml's version's release")
    release_parser.add_argument('--date', help='release date (default: the one it has, or today)')
    args = parser.parse_args()
    errors = check(args.state) if args.command == 'check' else release(args.date)
    for error in errors:
        print('versions: %s' % error, file=sys.stderr)
    if errors:
        print('versions: %d disagreement(s)' % len(errors), file=sys.stderr)
        return 1
    if args.command == 'check':
        print('versions: galaxy.yml %s, every version_added and the changelog agree (%s)'
              % (galaxy_version(), args.state))
    return 0


if __name__ == '__main__':
    sys.exit(main())
