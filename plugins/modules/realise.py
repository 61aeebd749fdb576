#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r'''
module: realise
short_description: Put the closure of Nix store paths on a host from a binary cache, without Nix
version_added: 0.1.0
description:
  - Given store paths, walks their closure through the caches' C(.narinfo) files, checks that
    every path is signed by a trusted key, streams each NAR (download, decompress, hash, unpack
    in one pass), checks C(NarHash) and C(NarSize), moves each path into the store atomically
    and registers the paths in the Nix database, so that a C(nix) installed later sees them
    as valid.
  - No C(nix) binary is needed on the host. The host's Python standard library is enough for
    C(xz), C(bzip2), C(gzip) and uncompressed caches, and for C(zstd) caches where the
    system's zstd library is installed (C(libzstd1) on Debian and Ubuntu, which apt itself
    needs); else they need the C(zstandard) Python package or the C(zstd) program.
  - A path is either fully valid in the store or absent. When something fails, paths that are
    complete together with their references stay registered, and nothing else is left behind.
  - Paths already valid in the store are not fetched again, so a re-run reports no change.
author:
  - nixcache.closure maintainers (@nixcache)
requirements:
  - Python 3.8 or newer on the managed host (tested on CPython 3.8 to 3.13); its standard
    library is enough for C(file://), C(http://) and C(https://) caches compressed with C(xz),
    C(bzip2), C(gzip) or nothing.
  - C(boto3) for C(s3://) caches.
  - For C(zstd) caches, the system's C(libzstd.so.1), C(zstandard) (Python) or the C(zstd)
    program.
extends_documentation_fragment:
  - nixcache.closure.attributes
  - nixcache.closure.attributes.action_group
  - nixcache.closure.cache
options:
  paths:
    description:
      - Store paths to realise, for example C(/nix/store/<hash>-postgresql-and-plugins-15.8).
        Their whole closure is realised.
      - An empty list only prepares the store (C(ROOT/nix/store), the database and the
        C(gcroots), C(profiles) and C(temproots) directories), as a first Nix run would.
    type: list
    elements: str
    required: true
  receipt:
    description:
      - Write a JSON receipt for each path of O(paths) to
        C(ROOT/nix/var/nixcache/receipts/<hash>-<name>.json) listing every path of its closure
        with C(nar_hash), C(nar_size), C(references), C(signatures), C(deriver), the C(cache) it
        came from and when it was registered; usable as SBOM input and to tell what is on an
        image. Rewritten only when the closure changes. Needs O(register).
    type: bool
    default: true
  root:
    description:
      - Alternate root directory. The store goes to C(ROOT/nix/store) and the database to
        C(ROOT/nix/var/nix/db), as with C(nix --store ROOT). Use it to fill a mounted volume
        (for example an AMI's root being built) from the machine it is mounted on, over SSH
        or the local connection.
      - Leave it unset under the chroot connection (C(community.general.chroot),
        C(-i '/mnt,')). There the module already runs inside the new root, and
        O(root=/mnt) would write C(/mnt/mnt/nix).
    type: path
    default: /
  jobs:
    description:
      - How many NARs to fetch and unpack at the same time.
      - For a closure of 8 paths or more from C(file://), C(http(s)://) or pushed caches,
        each job runs in a worker process of its own, forked from the module's, so that
        decompressing, hashing and unpacking many small NARs use every core (Python threads
        would take turns). Otherwise, and if the host allows no more processes, threads of
        the module's process do the work.
    type: int
    default: 4
  register:
    description:
      - Register the realised paths in the Nix database. Without it, the paths are only
        placed in the store, and a path counts as present when it exists there.
    type: bool
    default: true
  optimise:
    description:
      - Hard-link the files of the paths this run fetches to identical files already in
        the store, right after they become valid, as Nix's C(auto-optimise-store) does.
        Each file is named in C(ROOT/nix/store/.links) by the hash of its NAR
        serialisation, so real Nix and M(nixcache.closure.gc) understand the links.
      - Paths that were valid before are not touched; M(nixcache.closure.optimise)
        deduplicates a whole store. Needs O(register).
    type: bool
    default: false
    version_added: 0.2.0
  fetch_on:
    description:
      - Where the NARs are fetched from the caches.
      - V(host) (the default) has the host read the caches itself.
      - V(controller) has the collection's action plugin read the narinfos and NARs on the
        controller, once per run for all hosts, into O(controller_cache_dir), and send the
        NARs a host lacks over that host's own Ansible connection (one tar for the small
        ones). For hosts that cannot reach the cache (private subnets, a cache on the
        operator's machine). The host checks every signature against its trusted keys and
        every NAR against its signed NarHash again, exactly as for a cache; the controller
        is trusted no more than a cache.
      - The caches and the cache options are those of the task, read on the controller
        (with the controller's C(nix.conf) where O(use_nix_conf) fills them in); the
        trusted keys are checked on both sides.
      - Not with C(async).
    type: str
    choices: [host, controller]
    default: host
    version_added: 0.2.0
  controller_cache_dir:
    description:
      - With O(fetch_on=controller), the directory on the controller that keeps verified
        narinfos and NARs (NARs by NarHash) for all hosts and later runs.
      - Defaults to C(~/.cache/nixcache/controller) (C($XDG_CACHE_HOME/nixcache/controller)).
    type: path
    version_added: 0.2.0
  controller_cache_max_mb:
    description:
      - With O(fetch_on=controller), the most MiB of NARs O(controller_cache_dir) keeps. The
        least recently used NARs go first, never those used in the last hour; a closure
        that cannot fit fails the task before anything is downloaded.
    type: int
    default: 10240
    version_added: 0.2.0
  pushed:
    description:
      - Set by the action plugin in push mode (O(fetch_on=controller)) to the narinfos the
        controller read and the directory on the host it sent the NARs to. Do not set it
        by hand.
    type: dict
    version_added: 0.2.0
  progress_file:
    description:
      - A file the module rewrites with its progress while it fetches (paths and bytes done
        and to do, as JSON) and removes when it ends.
      - The collection's action plugin sets it under C(ROOT/nix/var/nixcache/progress/) and
        prints the progress in the C(ansible-playbook) output at least every 5 seconds
        while a realisation takes longer than that (with C(-v), a line per fetched path).
        There is no need to set it by hand.
    type: path
    version_added: 0.2.0
attributes:
  action:
    description: An action plugin prints progress on the controller while the module runs.
    support: full
  async:
    description: Runs asynchronously (then without progress lines).
    support: full
  check_mode:
    support: full
    details: Fetches the C(.narinfo) files only and returns the plan (paths, download and unpacked sizes).
  diff_mode:
    support: full
    details: The store paths fetched (in check mode, to fetch) with their download and unpacked sizes.
  idempotent:
    support: full
notes:
  - Refuses to start when the free space under the store is less than the unpacked size of the
    paths to fetch.
  - Takes the Nix database's shared lock and Nix's per-path locks, so it can run beside a Nix
    daemon using the same store.
seealso:
  - name: Nix binary cache format
    description: How Nix describes and signs store paths in a binary cache.
    link: https://nix.dev/manual/nix/stable/package-management/binary-cache-substituter
'''

EXAMPLES = r'''
- name: Put PostgreSQL's closure on this host
  nixcache.closure.realise:
    paths:
      - /nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8
    substituters:
      - https://cache.example.org
      - file:///var/cache/nix
    trusted_public_keys:
      - cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=

- name: See what would be downloaded, without changing anything
  nixcache.closure.realise:
    paths: "{{ postgres_store_path }}"
    substituters: "{{ nix_caches }}"
    trusted_public_keys: "{{ nix_trusted_keys }}"
  check_mode: true
  register: plan

- name: Fetch on the controller and send to a host that cannot reach the cache
  nixcache.closure.realise:
    paths: "{{ postgres_store_path }}"
    substituters: "{{ nix_caches }}"
    trusted_public_keys: "{{ nix_trusted_keys }}"
    fetch_on: controller

- name: Fill the store of a volume mounted at /mnt (an image being built)
  nixcache.closure.realise:
    paths: "{{ postgres_store_path }}"
    root: /mnt
    substituters: "{{ nix_caches }}"
    trusted_public_keys: "{{ nix_trusted_keys }}"
    jobs: 8

- name: Realise, hard-linking files identical to ones already in the store
  nixcache.closure.realise:
    paths: "{{ postgres_store_path }}"
    substituters: "{{ nix_caches }}"
    trusted_public_keys: "{{ nix_trusted_keys }}"
    optimise: true
  register: realised

- name: Show what deduplication saved
  ansible.builtin.debug:
    msg: "{{ realised.optimised.mb_saved }} MiB saved by linking {{ realised.optimised.files_linked }} files"
'''

RETURN = r'''
closure:
  description: Every path of the closure, with what happened to it.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The store path.
      type: str
      sample: /nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8
    state:
      description: C(fetched), C(valid) (already there) or C(would fetch) (check mode).
      type: str
      sample: fetched
    nar_size:
      description: Unpacked size (NarSize) in bytes.
      type: int
      sample: 52117816
    download_size:
      description: Bytes downloaded (or, in check mode, the compressed size the cache announces).
      type: int
      sample: 11234567
    cache:
      description: The cache the path came from; null for paths that were already valid.
      type: str
      sample: https://cache.example.org
    signed_by:
      description: Name of the trusted key whose signature was verified.
      type: str
      sample: cache.example.org-1
requested:
  description: The store paths asked for.
  returned: always
  type: list
  elements: str
fetched:
  description: Store paths fetched by this run.
  returned: always
  type: list
  elements: str
to_fetch:
  description: In check mode, the store paths that would be fetched.
  returned: always
  type: list
  elements: str
download_bytes:
  description: Bytes downloaded (in check mode, bytes that would be downloaded).
  returned: always
  type: int
unpacked_bytes:
  description: Bytes written to the store (in check mode, bytes that would be written).
  returned: always
  type: int
download_mb:
  description: RV(download_bytes) in MiB.
  returned: always
  type: float
unpacked_mb:
  description: RV(unpacked_bytes) in MiB.
  returned: always
  type: float
receipts:
  description: Receipt files written or updated by this run (see O(receipt)).
  returned: always
  type: list
  elements: str
  sample: [/nix/var/nixcache/receipts/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8.json]
optimised:
  description:
    - What O(optimise) saved on the paths fetched. In check mode nothing is fetched,
      so every figure is 0.
  returned: when O(optimise) is true
  type: dict
  contains:
    files_linked:
      description: Files replaced by a hard link to an identical file.
      type: int
      sample: 412
    bytes_saved:
      description: Their sizes in bytes, as C(nix-store --optimise) counts what it frees.
      type: int
      sample: 35123456
    mb_saved:
      description: RV(optimised.bytes_saved) in MiB.
      type: float
      sample: 33.5
    links_created:
      description: New entries in C(ROOT/nix/store/.links).
      type: int
    kept_at_link_limit:
      description: Files kept as copies because the file system's link limit was reached.
      type: int
    skipped_writable:
      description: Files left alone because their owner may write them.
      type: int
    paths:
      description: Store paths deduplicated.
      type: int
  version_added: 0.2.0
seconds:
  description: Wall-clock time the module spent.
  returned: always
  type: float
worker_processes:
  description:
    - How many worker processes fetched the NARs; 0 when threads of the module's own process
      did (fewer than 8 paths to fetch, O(jobs=1), an C(s3://) cache, or nothing to fetch).
  returned: always
  type: int
  sample: 4
  version_added: 0.2.0
push:
  description: In push mode (O(fetch_on=controller)), what the controller did for this host.
  returned: when O(fetch_on=controller)
  type: dict
  contains:
    controller_cache:
      description: The controller cache directory.
      type: str
    cache_bytes_read:
      description: Bytes this host's worker read from the caches (NARs other hosts of the run fetched first are not counted again).
      type: int
    sent_bytes:
      description: Bytes sent to the host over its connection.
      type: int
    sent_files:
      description: NARs sent to the host.
      type: int
  version_added: 0.2.0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nixcache.closure.plugins.module_utils.common import (
    cache_argument_spec,
    caches_from_options,
    module_errors,
    parse_store_paths,
)
from ansible_collections.nixcache.closure.plugins.module_utils.progress import Progress
from ansible_collections.nixcache.closure.plugins.module_utils.realise import MIB, realise_closure
from ansible_collections.nixcache.closure.plugins.module_utils.signing import TrustedKeys
from ansible_collections.nixcache.closure.plugins.module_utils.substituters import url_secrets


def main():
    module = AnsibleModule(
        argument_spec=cache_argument_spec(
            paths=dict(type='list', elements='str', required=True),
            root=dict(type='path', default='/'),
            jobs=dict(type='int', default=4),
            register=dict(type='bool', default=True),
            receipt=dict(type='bool', default=True),
            progress_file=dict(type='path'),
            optimise=dict(type='bool', default=False),
            fetch_on=dict(type='str', choices=['host', 'controller'], default='host'),
            controller_cache_dir=dict(type='path'),
            controller_cache_max_mb=dict(type='int', default=10240),
            pushed=dict(type='dict'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    progress = Progress()
    # a password in a cache URL is masked in everything the module returns
    module.no_log_values.update(url_secrets(params['substituters']))
    try:
        with module_errors(module):
            requested = parse_store_paths(params['paths'])
            check_mode = module.check_mode
            if params['pushed'] is not None:   # push mode: what the controller sent
                from ansible_collections.nixcache.closure.plugins.module_utils.pushed import pushed_from_options
                caches, trusted_keys, plan_only = pushed_from_options(params, root=params['root'])
                check_mode = check_mode or plan_only
            elif params['fetch_on'] == 'controller':
                module.fail_json(msg='fetch_on: controller is done by the collection\'s action '
                                     'plugin, which does not run it asynchronously (async)')
            elif requested:
                caches, trusted_keys = caches_from_options(params, root=params['root'])
            else:  # only prepare the store
                caches, trusted_keys = [], TrustedKeys()
            progress = Progress(params['progress_file'])
            report = realise_closure(
                params['root'], requested, caches, trusted_keys,
                require_sigs=params['require_sigs'], jobs=params['jobs'],
                register=params['register'], receipts=params['receipt'], progress=progress,
                check_mode=check_mode, optimise=params['optimise'])
    finally:
        progress.remove()
    result = report.as_dict()
    for warning in report.optimised.warnings if report.optimised is not None else ():
        module.warn(warning)
    result['diff'] = fetch_diff(report.added())
    module.exit_json(**result)


def fetch_diff(added):
    """Diff mode: one line a store path added to the store, with its sizes."""
    lines = ['%s (%.2f MiB download, %.2f MiB unpacked)'
             % (entry['path'], (entry['download_size'] or 0) / MIB, (entry['nar_size'] or 0) / MIB)
             for entry in sorted(added, key=lambda entry: entry['path'])]
    return dict(before='', after=''.join(line + '\n' for line in lines))


if __name__ == '__main__':
    main()
