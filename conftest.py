"""Make the repository importable as ``ansible_collections.nixcache.closure`` for pytest.

The collection's own modules import each other by their full collection name, as
Ansible does on a managed host.  A symlink tree under ``build/collections`` gives
pytest (and ansible-playbook, through ANSIBLE_COLLECTIONS_PATH) the same view.
"""
import os
import sys

REPO = os.path.dirname(os.path.abspath(__file__))
COLLECTIONS_PATH = os.path.join(REPO, 'build', 'collections')


def _link_collection():
    namespace_dir = os.path.join(COLLECTIONS_PATH, 'ansible_collections', 'nixcache')
    link = os.path.join(namespace_dir, 'closure')
    os.makedirs(namespace_dir, exist_ok=True)
    if not os.path.islink(link):
        os.symlink(REPO, link)
    if COLLECTIONS_PATH not in sys.path:
        sys.path.insert(0, COLLECTIONS_PATH)


_link_collection()

# Shared test helpers live in tests/nixtest (fixture builders, loopback servers, runners).
TESTS_DIR = os.path.join(REPO, 'tests')
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
