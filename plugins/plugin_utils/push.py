# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Push mode of ``realise`` (``fetch_on: controller``), on the controller.

1. Plan the whole closure from the caches, on the controller: every narinfo is read once
   for all hosts (through the ControllerCache) and its signature checked.
2. Ask the host what it lacks: the module plans from these narinfos (sent in its
   arguments) against its own store and trusted keys, as in check mode.  A check-mode task
   ends here, having sent no file.
3. Fetch the NARs the host lacks into the ControllerCache (each verified, once per run).
4. Send them over the host's own connection: the small ones in one uncompressed tar, the
   large ones each as its own file (compressed NARs gain nothing from compressing again).
5. Run the module on what was sent: it checks every signature and hash again, unpacks,
   registers and writes receipts, with progress, as when it pulls.
"""

import concurrent.futures
import os
import tarfile
import tempfile
from typing import Any, Callable, Dict, List

from ansible_collections.nixcache.closure.plugins.module_utils.closure import plan_closure
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.nixcache.closure.plugins.module_utils.common import (
    CACHE_ARGUMENT_SPEC,
    cache_argument_spec,
    caches_from_options,
    parse_store_paths,
)
from ansible_collections.nixcache.closure.plugins.module_utils.pushed import BUNDLE, LARGE_NAR
from ansible_collections.nixcache.closure.plugins.module_utils.realise import MIB
from ansible_collections.nixcache.closure.plugins.plugin_utils.controller_cache import (
    ControllerCache,
    default_directory,
)

# What the host keeps of the cache options in push mode: whom to trust.
TRUST_OPTIONS = ('trusted_public_keys', 'require_sigs', 'use_nix_conf')
DEFAULT_MAX_MB = 10240
REMOTE_DIR = 'nixcache-push'
# The options (with their aliases) that reach caches: used on the controller only, never
# sent to the host, which needs no credentials.
CACHE_ACCESS_OPTIONS = set()
for _name, _option in CACHE_ARGUMENT_SPEC.items():
    if _name not in TRUST_OPTIONS:
        CACHE_ACCESS_OPTIONS.add(_name)
        CACHE_ACCESS_OPTIONS.update(_option.get('aliases', ()))


class Transport(object):
    """What push mode needs from the action plugin: run the module, make a directory on
    the host, send a file there, and say something in the output."""

    def __init__(self, execute: Callable, execute_with_progress: Callable, remote_dir: Callable,
                 send: Callable, say: Callable) -> None:
        self.execute = execute                        # module args -> result
        self.execute_with_progress = execute_with_progress
        self.remote_dir = remote_dir                  # name -> remote path (made)
        self.send = send                              # (local, remote path) -> None
        self.say = say                                # text -> None


def push(args: Dict[str, Any], transport: Transport, check_mode: bool, local_tmp: str) -> Dict[str, Any]:
    """Run ``realise`` in push mode with the task's ``args``; returns the module's result
    with a ``push`` entry (what the controller read from the caches and sent)."""
    options, errors = _controller_options(args)
    if errors:
        return dict(failed=True, msg='; '.join(errors))
    requested = parse_store_paths(options['paths'])
    if not requested:      # only the store to prepare: nothing to fetch anywhere
        return transport.execute_with_progress(_module_args(args, [], None))
    if options['controller_cache_max_mb'] <= 0:
        return dict(failed=True, msg='controller_cache_max_mb must be a positive number of MiB')
    cache = ControllerCache(options['controller_cache_dir'] or default_directory(),
                            options['controller_cache_max_mb'] * int(MIB))
    caches, trusted_keys = caches_from_options(options)
    jobs = max(1, options['jobs'])
    plan = plan_closure(requested, cache.wrap(caches), trusted_keys,
                        require_sigs=options['require_sigs'], jobs=max(jobs, 8))
    items = dict((item.store_path, item) for item in plan.to_fetch)

    planned = transport.execute(_module_args(args, _entries(plan.to_fetch, {}), None, plan=True))
    if planned.get('failed') or check_mode:
        return _with_push(planned, cache, 0, 0)
    missing = [items[path] for path in parse_store_paths(planned.get('to_fetch') or [])
               if path in items]
    if not missing and not planned.get('changed'):
        planned['to_fetch'] = []    # the real run's report: nothing to do
        return _with_push(planned, cache, 0, 0)

    cache.check_room(missing)
    if missing:
        transport.say('fetching %d NAR(s), %.1f MiB, on the controller'
                      % (len(missing), sum(i.narinfo.file_size or 0 for i in missing) / MIB))
    files = _fetch(cache, missing, jobs)
    remote, sent = None, 0
    if files:
        remote = transport.remote_dir(REMOTE_DIR)
        sent = _send(files, remote, transport, local_tmp)
    names = dict((path, os.path.basename(local)) for path, local in files.items())
    result = transport.execute_with_progress(
        _module_args(args, _entries(plan.to_fetch, names), remote))
    return _with_push(result, cache, sent, len(files))


def _controller_options(args):
    """(the options push mode reads on the controller, validated as the module would
    validate them: types, aliases, defaults; error messages)."""
    spec = cache_argument_spec(
        paths=dict(type='list', elements='str', required=True),
        jobs=dict(type='int', default=4),
        controller_cache_dir=dict(type='path'),
        controller_cache_max_mb=dict(type='int', default=DEFAULT_MAX_MB))
    known = set(spec)
    for option in spec.values():
        known.update(option.get('aliases', ()))
    validated = ArgumentSpecValidator(spec).validate(
        dict((name, value) for name, value in args.items() if name in known))
    return validated.validated_parameters, list(validated.error_messages)


def _module_args(args, entries, directory, plan=False):
    """The module's arguments in push mode: no cache and no credentials (the host reads
    no cache), the trust options as given, and what was pushed."""
    module_args = dict((name, value) for name, value in args.items()
                       if name not in CACHE_ACCESS_OPTIONS)
    module_args['substituters'] = []
    module_args['pushed'] = dict(entries=entries, directory=directory, plan=plan)
    return module_args


def _entries(items, names):
    """What the module is sent for each path: its narinfo, its cache, its pushed file."""
    return [dict(narinfo=item.narinfo.to_text(item.cache.store_dir), cache=item.cache.url,
                 file=names.get(item.store_path)) for item in items]


def _fetch(cache: ControllerCache, items: List[Any], jobs: int) -> Dict[Any, str]:
    """StorePath -> the verified NAR file in the controller cache, fetched if need be."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = dict((item.store_path, pool.submit(cache.nar, item)) for item in items)
        return dict((path, future.result()) for path, future in futures.items())


def _send(files: Dict[Any, str], remote: str, transport: Transport, local_tmp: str) -> int:
    """Send the NAR files to the host's directory ``remote``: small ones in one tar, large
    ones as they are.  Returns the bytes sent."""
    small = [local for local in files.values() if os.path.getsize(local) < LARGE_NAR]
    large = [local for local in files.values() if os.path.getsize(local) >= LARGE_NAR]
    sent = 0
    total = sum(os.path.getsize(local) for local in files.values())
    transport.say('sending %d NAR(s), %.1f MiB, in %d transfer(s)'
                  % (len(files), total / MIB, len(large) + (1 if small else 0)))
    if small:
        handle, bundle = tempfile.mkstemp(dir=local_tmp, prefix='nixcache-bundle-', suffix='.tar')
        os.close(handle)
        try:
            with tarfile.open(bundle, 'w', format=tarfile.PAX_FORMAT) as archive:
                for local in sorted(set(small)):
                    archive.add(local, arcname=os.path.basename(local), recursive=False,
                                filter=_plain_member)
            transport.send(bundle, remote + '/' + BUNDLE)
            sent += os.path.getsize(bundle)
        finally:
            os.unlink(bundle)
    for local in sorted(set(large)):
        transport.send(local, remote + '/' + os.path.basename(local))
        sent += os.path.getsize(local)
    return sent


def _plain_member(member):
    member.uid = member.gid = 0
    member.uname = member.gname = ''
    member.mode = 0o644
    return member


def _with_push(result, cache, sent_bytes, sent_files):
    result['push'] = dict(controller_cache=cache.directory,
                          cache_bytes_read=cache.bytes_from_caches,
                          sent_bytes=sent_bytes, sent_files=sent_files)
    return result
