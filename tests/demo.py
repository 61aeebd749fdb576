"""`make demo`: the whole story on one machine, in about a minute.

1. build a working PostgreSQL closure with real Nix,
2. publish it as a signed binary cache (xz, as most caches are written),
3. serve the cache over HTTP on loopback,
4. realise the closure with ansible-playbook and ``nixcache.closure.realise`` into a
   scratch root (``build/demo/root``), as a fresh host would get it,
5. start the realised PostgreSQL from that root and print ``select version()``.
"""
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import conftest  # noqa: E402,F401  (links the collection under build/collections)
from nixtest import fixtures, nix  # noqa: E402
from nixtest.ansible import run_playbook  # noqa: E402
from nixtest.http import CacheServer  # noqa: E402
from nixtest.postgres import run_postgres_smoke  # noqa: E402

PLAY = '''
- name: Put PostgreSQL on this host from the Nix cache
  hosts: all
  gather_facts: false
  tasks:
    - name: Realise the PostgreSQL closure
      nixcache.closure.realise:
        paths: ["{{ postgres }}"]
        root: "{{ root }}"
        substituters: ["{{ cache }}"]
        trusted_public_keys: ["{{ key }}"]
      register: realised
'''


def step(text):
    print('\n==> %s' % text, flush=True)


def main():
    root = os.path.join(conftest.REPO, 'build', 'demo', 'root')
    step('building the PostgreSQL closure with Nix')
    keys = fixtures.keys()
    postgres = fixtures.pg_closure('a')
    print('    %s (%d paths, %.1f MiB)'
          % (postgres.top, len(postgres.paths), postgres.nar_size / 1048576.0))
    step('publishing a signed xz cache')
    caches = fixtures.caches(keys, [postgres], root=os.path.join(conftest.REPO, 'build', 'demo', 'caches'),
                             compressions=('xz',))
    print('    %s, signed by %s' % (caches['xz'].directory, keys.trusted.name))
    if os.path.exists(root):
        shutil.rmtree(root)  # root may delete in read-only store directories
    os.makedirs(root)
    with CacheServer(caches.root) as server:
        url = server.url_for('xz')
        step('realising it with ansible-playbook from %s into %s' % (url, root))
        result = run_playbook(PLAY, extra_vars=dict(postgres=postgres.top, root=root, cache=url,
                                                    key=keys.trusted.public))
        result.assert_ok()
        realised = result.registered('realised')
    print('    fetched %d paths: %.1f MiB downloaded, %.1f MiB unpacked in %.1f s' % (
        len(realised['fetched']), realised['download_mb'], realised['unpacked_mb'],
        realised['seconds']))
    step('checking the root with nix-store --verify --check-contents')
    nix.verify_store(root)
    print('    ok')
    step('select version() from the realised PostgreSQL')
    print('    ' + run_postgres_smoke(root, postgres.top))


if __name__ == '__main__':
    main()
