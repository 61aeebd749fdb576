"""The docs site: built with antsibull-docs and Sphinx (warnings as errors, offline) from the
collection, with the README's guides, and rendered by a real browser (headless Chromium)."""
import html
import os
import re
import shutil
import subprocess

import pytest

from nixtest.release import HERE, REPO, run, tool

docs_pages = tool('docs_pages')
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
PAGE_SUFFIX = {'module': 'module', 'lookup': 'lookup', 'role': 'role'}


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    dest = tmp_path_factory.mktemp('docs')
    result = run(['bash', os.path.join(HERE, 'build-docs.sh'), str(dest)])
    assert result.returncode == 0, result.stdout
    return str(dest / 'site' / 'build' / 'html')


def chromium(tmp_path, url, *extra):
    if not os.path.exists(CHROMIUM):
        pytest.fail('chromium is missing: run `make deps`', pytrace=False)
    profile = tmp_path / 'profile'
    command = [CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
               '--no-first-run', '--disable-background-networking', '--disable-component-update',
               '--disable-sync', '--user-data-dir=%s' % profile, '--window-size=1280,1600']
    result = subprocess.run(command + list(extra) + [url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def text_of(dom):
    return html.unescape(re.sub(r'<[^>]+>', '', dom))


def test_guide_pages_are_what_the_readme_gives():
    files, errors = docs_pages.wanted_files()
    assert errors == []
    stale = []
    for path, text in files.items():
        with open(path, encoding='utf-8') as stream:
            if stream.read() != text:
                stale.append(path)
    assert stale == [], 'run `make docs-pages`'


def test_index_lists_every_plugin_and_guide(site, tmp_path, source_items):
    dom = chromium(tmp_path, 'file://%s/index.html' % site, '--dump-dom')
    assert re.search(r'<title>[^<]*nixcache\.closure', dom)
    plugins = [key.split(' ') for key in source_items if key.count(' ') == 1]
    assert len(plugins) >= 13
    for kind, name in plugins:
        page = '%s_%s.html' % (name, PAGE_SUFFIX.get(kind, kind))
        assert 'href="%s"' % page in dom, page
        assert os.path.exists(os.path.join(site, page))
    for name, title in ((page.name, page.title) for page in docs_pages.PAGES):
        assert 'href="docsite/%s.html"' % name in dom, name
        with open(os.path.join(site, 'docsite', name + '.html'), encoding='utf-8') as stream:
            assert '<h1>%s' % html.escape(title, quote=False) in stream.read()


def test_module_page_renders_title_options_and_examples(site, tmp_path, source_items):
    url = 'file://%s/realise_module.html' % site
    dom = chromium(tmp_path, url, '--dump-dom')
    assert '<h1>nixcache.closure.realise module' in dom
    text = text_of(dom)
    assert 'New in nixcache.closure 0.1.0' in text
    # the options table: a row per option, with its type
    assert re.search(r'<table[^>]*>.*?Parameter.*?Comments', dom, re.S)
    options = [key.rsplit(' ', 1)[1] for key in source_items
               if key.startswith('module realise option ') and '.' not in key]
    assert 'paths' in options and 'progress_file' in options
    for option in options:
        assert 'id="parameter-%s"' % option in dom, option
    assert 'added in nixcache.closure 0.2.0' in text      # progress_file
    # the examples, highlighted, with the module's full name
    examples = dom[dom.index('id="examples"'):]
    assert 'class="highlight' in examples
    assert 'nixcache.closure.realise' in text_of(examples)
    screenshot = tmp_path / 'realise.png'
    chromium(tmp_path, url, '--screenshot=%s' % screenshot)
    with open(str(screenshot), 'rb') as stream:
        png = stream.read()
    assert png.startswith(b'\x89PNG') and len(png) > 50000


def test_readme_sections_all_on_the_site():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as stream:
        headings = docs_pages.sections(stream.read())
    placed = {heading for chosen in docs_pages.choose(headings).values() for heading in chosen}
    left = {heading for heading in headings
            if any(heading.startswith(start) for start in docs_pages.LEFT_OUT)}
    assert placed | left == set(headings)
    assert 'Day 2: upgrade, roll back, collect, inspect' in placed


def test_upgrades_page_takes_every_upgrade_section():
    """The upgrades page opens with its introduction; it then takes the README's sections about
    upgrades that no other page took, and is the introduction alone while there are none."""
    readme = ('## Day 2: upgrade, roll back, collect, inspect\n\nThe cycle.\n\n'
              '## Pins: the store paths\n\nPins.\n')
    chosen = docs_pages.choose(docs_pages.sections(readme))
    assert chosen['guide_upgrades'] == []
    assert chosen['guide_day2'] == ['Day 2: upgrade, roll back, collect, inspect']
    intro = next(page.intro for page in docs_pages.PAGES if page.name == 'guide_upgrades')
    text = docs_pages.page('guide_upgrades', 'Upgrades of PostgreSQL', [], intro, {})[0]
    assert intro in text and ':ref:`%s`' % (docs_pages.LABEL % 'guide_day2') in text

    readme += ('## Minor upgrades with automatic rollback\n\nRestart, check, roll back.\n\n'
               '### A rolling upgrade of a fleet\n\nserial: 1\n\n'
               '## Upgrade to a new major version\n\npg_upgrade.\n'
               '## Major versions side by side\n\nTwo clusters.\n')
    found = docs_pages.sections(readme)
    chosen = docs_pages.choose(found)
    assert chosen['guide_upgrades'] == ['Minor upgrades with automatic rollback',
                                        'Upgrade to a new major version',
                                        'Major versions side by side']
    text = docs_pages.page('guide_upgrades', 'Upgrades of PostgreSQL',
                           chosen['guide_upgrades'], intro, found)[0]
    assert text.index(intro) < text.index('Minor upgrades with automatic rollback\n---')
    assert 'A rolling upgrade of a fleet\n~~~' in text
    assert 'Upgrade to a new major version\n---' in text
