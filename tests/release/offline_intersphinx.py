"""Point the docs site's intersphinx at a local inventory, so that Sphinx fetches nothing.

    offline_intersphinx.py SITE      (SITE: the directory antsibull-docs sphinx-init wrote)

The pages antsibull-docs generates refer to a few labels of the Ansible documentation
(``common_return_values`` below every module's return values, ...).  They are written to
SITE/ansible.inv as a Sphinx inventory pointing at the Ansible docs, and conf.py's
intersphinx_mapping reads only that file.  A label missing here fails the build as an
undefined label: add it to LABELS with its page and title.
"""

import os
import re
import sys
import zlib

ANSIBLE_DOCS = 'https://docs.ansible.com/projects/ansible/devel/'
LABELS = {
    'action_plugins': ('plugins/action.html', 'Action plugins'),
    'ansible_configuration_settings': ('reference_appendices/config.html',
                                       'Ansible Configuration Settings'),
    'collections_installing': ('collections_guide/collections_installing.html',
                               'Installing collections'),
    'common_return_values': ('reference_appendices/common_return_values.html',
                             'Return Values'),
    'module_defaults': ('playbook_guide/playbooks_module_defaults.html', 'Module defaults'),
}


def write_inventory(path):
    lines = ''.join('%s std:label -1 %s#%s %s\n' % (label, page, label.replace('_', '-'), title)
                    for label, (page, title) in sorted(LABELS.items()))
    with open(path, 'wb') as stream:
        stream.write(b'# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n'
                     b'# The remainder of this file is compressed using zlib.\n')
        stream.write(zlib.compress(lines.encode('utf-8')))


def main():
    site = os.path.abspath(sys.argv[1])
    inventory = os.path.join(site, 'ansible.inv')
    write_inventory(inventory)
    path = os.path.join(site, 'conf.py')
    with open(path, encoding='utf-8') as stream:
        conf = stream.read()
    mapping = 'intersphinx_mapping = {%r: (%r, %r)}\n' % ('ansible_devel', ANSIBLE_DOCS, inventory)
    conf, count = re.subn(r'^intersphinx_mapping = \{.*?^\}\n', mapping, conf, flags=re.M | re.S)
    if count != 1:
        sys.exit('offline_intersphinx: no intersphinx_mapping in %s' % path)
    with open(path, 'w', encoding='utf-8') as stream:
        stream.write(conf)
    return 0


if __name__ == '__main__':
    sys.exit(main())
