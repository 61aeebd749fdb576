"""Write the docs site's guide pages from the README's sections.

    docs_pages.py write      (re)write docs/docsite/rst/guide_*.rst and docs/docsite/extra-docs.yml
    docs_pages.py check      fail when they are not what the README gives

The README stays the one place the guides are written; PAGES says which of its ``##`` sections
make which page of the docs site (antsibull-docs "extra docs").  Every ``##`` section must be
on a page or in LEFT_OUT, so a section added later is not silently missing from the site.  The
upgrades page takes every section about upgrades that no other page took ("Minor upgrades
...", "Major upgrades ...", "Upgrade ..."), after an introduction of its own that points to the
day 2 guide; with no such section in the README it is that introduction alone.

The README uses a small part of Markdown (headings, paragraphs, lists, fenced code, pipe
tables, code spans, bold, links); this turns exactly that into reStructuredText.
"""

import collections
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(REPO, 'README.md')
DOCSITE = os.path.join(REPO, 'docs', 'docsite')
LABEL = 'ansible_collections.nixcache.closure.docsite.%s'

# page name, title, the README "##" sections it takes (by the start of their heading, or
# every section whose heading matches a pattern that no other page took), and an introduction
# in reStructuredText that opens the page (None: none, and the page needs its sections).
Page = collections.namedtuple('Page', 'name title wanted intro')
UPGRADES = re.compile(r'upgrad|\bmajor\b', re.I)
PAGES = [Page(*page) for page in [
    ('guide_install', 'Install and supported platforms',
     ['Install', 'Supported platforms'], None),
    ('guide_realise', 'Realise closures and keep profiles',
     ['Realise a closure', 'Profiles and receipts'], None),
    ('guide_roles', 'Roles: a drop-in for the apt install',
     ['Roles: a drop-in for the apt install'], None),
    ('guide_packer', 'Packer: AMIs in two stages or one', ['AMIs with Packer', 'One-stage AMIs'],
     None),
    ('guide_sbom', 'SBOMs: what is on the image', ['SBOMs'], None),
    ('guide_upgrades', 'Upgrades of PostgreSQL', UPGRADES,
     'Moving a host to another build of PostgreSQL is a change of its pin '
     '(``postgres_store_path``): the new closure is realised next to the old one, the profile '
     'gets a new generation, and the old generation stays for a rollback. The whole cycle '
     '(upgrade, roll back, collect, inspect) is in :ref:`%s`; where pins come from is in '
     ':ref:`%s`.' % (LABEL % 'guide_day2', LABEL % 'guide_caches')),
    ('guide_day2', 'Day 2: upgrade, roll back, collect, inspect', ['Day 2'], None),
    ('guide_optimise', 'Deduplicated stores', ['Deduplicated stores'], None),
    ('guide_caches', 'Caches, lookups and pins',
     ['Look up a cache from the controller', 'Pins', 'Caches as you run them',
      'Set the cache options once'], None),
    ('guide_fleet', 'Many hosts, and hosts that cannot reach the cache',
     ['Many hosts at once', 'Push mode'], None),
    ('guide_reliability', 'Reliability, safety and speed',
     ['Reliability and safety', 'Speed'], None),
]]
# Sections about working on the repository itself.
LEFT_OUT = ['Two commands', 'Development']

HEADER = '''\
..
  Generated from README.md by tests/release/docs_pages.py (make docs-pages): edit the README.

'''
UNDERLINES = '=-~^'


def sections(text):
    """The README's "##" sections: heading -> body lines (below the heading)."""
    found, heading, body, fenced = {}, None, [], False
    for line in text.split('\n'):
        if line.startswith('```'):
            fenced = not fenced
        if not fenced and line.startswith('## '):
            if heading is not None:
                found[heading] = body
            heading, body = line[3:].strip(), []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        found[heading] = body
    return found


# ---------------------------------------------------------------- inline markup

BEFORE = set(' \t-:/\'"<([{')
AFTER = set(' \t-.,:;!?\\/\'")]}>')
INLINE = re.compile(r'`([^`]+)`|\*\*(.+?)\*\*|\[([^\]]+)\]\(([^)\s]+)\)')


def escape(text):
    text = text.replace('\\', '\\\\')
    for char in '*|`':
        text = text.replace(char, '\\' + char)
    # a word ending in "_" is a reference in reStructuredText
    return re.sub(r'(?<=\w)_(?=\W|$)', r'\\_', text)


def inline(text):
    out, position = [], 0
    for match in INLINE.finditer(text):
        out.append(escape(text[position:match.start()]))
        code, bold, label, url = match.groups()
        if code is not None:
            token = '``%s``' % code.strip()
        elif bold is not None:
            # no markup nests in reStructuredText: bold text with code in it stays plain
            token = inline(bold) if '`' in bold else '**%s**' % escape(bold)
        else:
            token = '`%s <%s>`__' % (escape(label), url)
        before = text[match.start() - 1] if match.start() else ' '
        after = text[match.end()] if match.end() < len(text) else ' '
        if before not in BEFORE:
            token = '\\ ' + token
        if after not in AFTER:
            token += '\\ '
        out.append(token)
        position = match.end()
    out.append(escape(text[position:]))
    return ''.join(out)


# ---------------------------------------------------------------- blocks

LIST_ITEM = re.compile(r'^(-|\d+\.) +')
LEXERS = {'sh': 'shell', 'yaml': 'yaml', 'json': 'json', 'hcl': 'text', '': 'text'}


def is_block_start(line):
    return (line.startswith(('```', '|', '#')) or LIST_ITEM.match(line) is not None)


def indented(lines, width):
    return [(' ' * width + line) if line else '' for line in lines]


def blocks(lines, level):
    """reStructuredText lines for Markdown lines (no indentation), headings from ``level``."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith('#'):
            marks, title = line.split(' ', 1)
            depth = level + len(marks) - 2
            title = inline(title.strip())
            out += [title, UNDERLINES[depth] * len(title), '']
            i += 1
        elif line.startswith('```'):
            language = line[3:].strip()
            end = i + 1
            while not lines[end].startswith('```'):
                end += 1
            out += ['.. code-block:: %s' % LEXERS.get(language, 'text'), '']
            out += indented(lines[i + 1:end], 4) + ['']
            i = end + 1
        elif line.startswith('|'):
            end = i
            while end < len(lines) and lines[end].startswith('|'):
                end += 1
            out += table(lines[i:end]) + ['']
            i = end
        elif LIST_ITEM.match(line):
            bullet = LIST_ITEM.match(line)
            width = len(bullet.group(0))
            item = [line[width:]]
            i += 1
            while i < len(lines):
                following = lines[i]
                if following.startswith(' ' * width) or not following.strip():
                    if not following.strip():
                        rest = [later for later in lines[i:] if later.strip()]
                        if not rest or not rest[0].startswith(' ' * width):
                            break
                    item.append(following[width:])
                    i += 1
                else:
                    break
            marker = '-' if bullet.group(1) == '-' else '#.'
            body = blocks(item, level)
            while body and not body[-1]:
                body.pop()
            pad = len(marker) + 1
            out.append('%s %s' % (marker, body[0]))
            out += indented(body[1:], pad)
            # a list ends where its last item ends, or at the next non-item line
            if i >= len(lines) or not lines[i].strip() or not LIST_ITEM.match(lines[i]):
                out.append('')
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not (
                    paragraph and is_block_start(lines[i])):
                paragraph.append(lines[i].strip())
                i += 1
            out += [inline(' '.join(paragraph)), '']
    return out


def table(lines):
    rows = [[cell.strip() for cell in row.strip().strip('|').split('|')] for row in lines]
    rows = [row for row in rows if not all(re.fullmatch(r':?-+:?', cell) for cell in row)]
    out = ['.. list-table::', '   :header-rows: 1', '']
    for row in rows:
        for number, cell in enumerate(row):
            text = inline(cell)
            out.append(('   * - ' if number == 0 else '     - ') + text if text else
                       ('   * -' if number == 0 else '     -'))
    return out


# ---------------------------------------------------------------- pages

def by_start(wanted, found):
    """The headings of ``found`` that start with one of ``wanted``, in that order."""
    return [heading for start in wanted for heading in found if heading.startswith(start)]


def choose(found):
    """Page name -> the README headings on it: pages that name the start of their sections
    first, then those with a pattern take, in README order, the matching sections left."""
    chosen = {page.name: by_start(page.wanted, found) for page in PAGES
              if isinstance(page.wanted, list)}
    taken = {heading for headings in chosen.values() for heading in headings}
    for page in PAGES:
        if not isinstance(page.wanted, list):
            chosen[page.name] = [heading for heading in found
                                 if heading not in taken and page.wanted.search(heading)]
            taken.update(chosen[page.name])
    return chosen


def page(name, title, chosen, intro, found):
    out = ['.. _%s:' % (LABEL % name), '', title, '=' * len(title), '']
    if intro:
        out += [intro, '']
    if len(chosen) == 1 and title == chosen[0] and not intro:
        out += blocks(found[chosen[0]], 0)
    else:
        for heading in chosen:
            out += blocks(['## ' + heading] + found[heading], 1)
    while out and not out[-1]:
        out.pop()
    return HEADER + '\n'.join(out) + '\n', chosen


def extra_docs():
    lines = ['---', '# Generated by tests/release/docs_pages.py (make docs-pages).', 'sections:',
             '  - title: Guides', '    toctree:']
    lines += ['      - %s' % page.name for page in PAGES]
    return '\n'.join(lines) + '\n'


def wanted_files():
    """Path -> content of every generated file, and the errors of the README's coverage."""
    with open(README, encoding='utf-8') as stream:
        found = sections(stream.read())
    files, placed, errors = {}, set(), []
    headings = choose(found)
    for name, title, wanted, intro in PAGES:
        text, chosen = page(name, title, headings[name], intro, found)
        if not chosen and intro is None:
            errors.append('README.md has no section starting with %s for docs page %s'
                          % (' or '.join(repr(start) for start in wanted), name))
        placed.update(chosen)
        files[os.path.join(DOCSITE, 'rst', name + '.rst')] = text
    files[os.path.join(DOCSITE, 'extra-docs.yml')] = extra_docs()
    for heading in found:
        if heading not in placed and not any(heading.startswith(start) for start in LEFT_OUT):
            errors.append('README.md section "## %s" is on no docs page: add it to PAGES in '
                          'tests/release/docs_pages.py (or to LEFT_OUT)' % heading)
    return files, errors


def main():
    command = sys.argv[1] if len(sys.argv) == 2 else None
    if command not in ('write', 'check'):
        print(__doc__, file=sys.stderr)
        return 2
    files, errors = wanted_files()
    if command == 'write':
        for path, text in files.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w', encoding='utf-8') as stream:
                stream.write(text)
        print('docs pages: wrote %d files from README.md' % len(files))
    else:
        for path, text in sorted(files.items()):
            try:
                with open(path, encoding='utf-8') as stream:
                    current = stream.read()
            except FileNotFoundError:
                current = None
            if current != text:
                errors.append('%s is not what README.md gives: run `make docs-pages`'
                              % os.path.relpath(path, REPO))
    for error in errors:
        print('docs pages: %s' % error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
