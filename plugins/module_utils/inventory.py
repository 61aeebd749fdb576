# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a store holds: its valid paths, profiles and their generations, garbage-collector
roots and receipts, and whether the disk and the database agree.  Reads only."""

import datetime
import json
import os
from typing import Any, Dict, Iterable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils import gc
from ansible_collections.nixcache.closure.plugins.module_utils.errors import InvalidStorePath
from ansible_collections.nixcache.closure.plugins.module_utils.hashes import format_base32
from ansible_collections.nixcache.closure.plugins.module_utils.nar import nar_hash
from ansible_collections.nixcache.closure.plugins.module_utils.profiles import PROFILES_DIR
from ansible_collections.nixcache.closure.plugins.module_utils.receipts import RECEIPTS_DIR
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root
from ansible_collections.nixcache.closure.plugins.module_utils.storepath import StorePath


def describe(store: Any, only: Optional[Iterable[StorePath]] = None, check_contents: bool = False, runtime_roots: bool = True) -> Dict[str, Any]:
    """A dict describing ``store`` (opened, possibly read-only); ``only``: StorePaths
    whose closure alone is listed."""
    graph = store.graph()
    listed = sorted(store.closure(only) if only is not None else graph)
    paths = [dict(path=str(path), nar_size=graph[path][0],
                  registered_at=_iso(graph[path][1]),
                  references=[str(ref) for ref in sorted(graph[path][3])])
             for path in listed]
    roots = gc.find_roots(store, runtime=runtime_roots) if os.path.isdir(store.state_dir) \
        else gc.Roots()
    return dict(
        paths=paths,
        path_count=len(paths),
        nar_bytes=sum(entry['nar_size'] or 0 for entry in paths),
        store_nar_bytes=sum(info[0] or 0 for info in graph.values()),
        profiles=list_profiles(store.root),
        gc_roots=sorted((dict(path=str(path), roots=sorted(reasons))
                         for path, reasons in roots.paths.items()), key=lambda r: r['path']),
        receipts=list_receipts(store.root),
        consistency=check(store, graph, listed if only is not None else None, check_contents),
    )


def list_profiles(root: str) -> List[Dict[str, Any]]:
    """Every profile under /nix/var/nix/profiles with its generations."""
    found = []
    for profile in gc.profiles(root, PROFILES_DIR):
        current = profile.current()
        generations = []
        for number, target in sorted(profile.generations().items()):
            link = os.path.join(profile.real_directory, profile.generation_link(number))
            generations.append(dict(number=number, path=target, current=number == current,
                                    created_at=_iso(os.lstat(link).st_mtime)))
        found.append(dict(profile=profile.path, current=current, generations=generations))
    return found


def list_receipts(root: str) -> List[Dict[str, Any]]:
    """The receipts ``realise`` left: requested path, paths and bytes of its closure."""
    directory = under_root(root, RECEIPTS_DIR)
    found = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return found
    for name in names:
        if not name.endswith('.json'):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path) as handle:
                receipt = json.load(handle)
            found.append(dict(file=os.path.join(RECEIPTS_DIR, name),
                              requested=receipt.get('requested'), paths=receipt.get('paths'),
                              nar_bytes=receipt.get('nar_bytes'),
                              written_at=receipt.get('written_at')))
        except (OSError, ValueError) as error:
            found.append(dict(file=os.path.join(RECEIPTS_DIR, name), error=str(error)))
    return found


def check(store: Any, graph: Dict[StorePath, Any], listed: Optional[Iterable[StorePath]] = None, check_contents: bool = False) -> Dict[str, Any]:
    """Whether disk and database agree: valid paths missing on disk, store entries the
    database does not know (leftovers), and with ``check_contents`` paths whose contents
    no longer hash to their NarHash (what ``nix-store --verify --check-contents`` finds)."""
    wanted = graph if listed is None else listed
    missing = sorted(str(path) for path in wanted if not store.exists(path))
    unregistered = []
    if listed is None and os.path.isdir(store.real_store_dir):
        for name in sorted(os.listdir(store.real_store_dir)):
            if name == '.links' or name.endswith('.lock'):
                continue
            try:
                known = StorePath.from_base(name) in graph
            except InvalidStorePath:
                known = False
            if not known:
                unregistered.append(name)
    modified = []
    if check_contents:
        for path in sorted(wanted):
            if str(path) in missing:
                continue
            digest, size = nar_hash(store.real_path(path))
            info = store.path_info(path)
            if info['nar_hash'] != format_base32(digest) or (info['nar_size'] or size) != size:
                modified.append(str(path))
    return dict(ok=not (missing or unregistered or modified), missing=missing,
                unregistered=unregistered, modified=modified, contents_checked=check_contents)


def _iso(seconds):
    if seconds is None:
        return None
    return datetime.datetime.utcfromtimestamp(int(seconds)).strftime('%Y-%m-%dT%H:%M:%SZ')
