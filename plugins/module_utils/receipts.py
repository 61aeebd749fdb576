# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Receipts: what a realised closure put on a host, as JSON, for SBOMs and audits.

One file per requested store path, ``ROOT/nix/var/nixcache/receipts/<hash>-<name>.json``,
listing every path of its closure with NarHash, NarSize, references, signatures and the
cache it came from.  The facts come from the Nix database once the paths are valid; the
source cache of a path fetched by an earlier run is kept from the earlier receipt.  A
receipt is rewritten only when the closure or a source changes, so re-runs leave it be.
"""

import json
import os
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional

from ansible_collections.nixcache.closure.plugins.module_utils.errors import file_errors
from ansible_collections.nixcache.closure.plugins.module_utils.rootfs import under_root

RECEIPTS_DIR = '/nix/var/nixcache/receipts'
FORMAT = 1


def receipt_path(root: str, store_path: Any) -> str:
    return os.path.join(under_root(root, RECEIPTS_DIR), store_path.base + '.json')


def build_receipt(store: Any, requested: Any, sources: Dict[str, str], previous: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The receipt of ``requested`` (a valid StorePath); ``sources`` maps path text to cache."""
    old_entries = dict((entry['path'], entry) for entry in (previous or {}).get('closure', []))
    entries = []
    closure = store.closure([requested])
    infos = store.path_infos(closure)
    for path in sorted(closure):
        info = infos[path]
        text = str(path)
        entries.append(dict(
            path=text,
            nar_hash=info['nar_hash'],
            nar_size=info['nar_size'],
            references=[str(ref) for ref in info['references']],
            signatures=info['sigs'],
            deriver=info['deriver'],
            cache=sources.get(text) or old_entries.get(text, {}).get('cache'),
            registered_at=_iso(info['registration_time']),
        ))
    return dict(format=FORMAT, requested=str(requested), closure=entries,
                paths=len(entries), nar_bytes=sum(entry['nar_size'] or 0 for entry in entries),
                written_at=(previous or {}).get('written_at') or _iso(time.time()))


def write_receipts(store: Any, requested_paths: Iterable[Any], sources: Dict[str, str], root: str = '/', check_mode: bool = False) -> List[str]:
    """Write (or leave) the receipt of every requested path; returns the changed files."""
    changed = []
    for requested in requested_paths:
        path = receipt_path(root, requested)
        previous = _load(path)
        receipt = build_receipt(store, requested, sources, previous)
        if previous is not None and _same(previous, receipt):
            continue
        changed.append(path)
        if not check_mode:
            with file_errors('cannot write the receipt', path):
                _write_atomically(path, receipt)
    return changed


def _same(old, new):
    ignore = ('written_at',)
    return (dict((k, v) for k, v in old.items() if k not in ignore)
            == dict((k, v) for k, v in new.items() if k not in ignore))


def _load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (IOError, OSError, ValueError):
        return None


def _write_atomically(path, receipt):
    text = json.dumps(receipt, indent=2, sort_keys=True) + '\n'
    write_file_atomically(path, text.encode('utf-8'), prefix='.receipt-')


def write_file_atomically(path: str, data: bytes, prefix: str = '.tmp-') -> None:
    """Replace ``path`` by ``data`` in one rename (a reader sees the old file or the new
    one), world-readable like the Nix database; its directory is created if need be."""
    directory = os.path.dirname(path)
    os.makedirs(directory, 0o755, exist_ok=True)   # concurrent runs may create it too
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(handle, 'wb') as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)   # nothing secret in it
        os.rename(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def recorded_receipts(root: str) -> List[Dict[str, Any]]:
    """Every receipt under ``root`` that can be read, in the order of their file names."""
    directory = under_root(root, RECEIPTS_DIR)
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith('.json'))
    except OSError:
        return []
    found = [_load(os.path.join(directory, name)) for name in names]
    return [receipt for receipt in found if isinstance(receipt, dict)]


def recorded_sources(receipts: Iterable[Dict[str, Any]]) -> Dict[str, str]:
    """Path text -> the cache that served it, as the receipts recorded it."""
    sources = {}
    for receipt in receipts:
        for entry in receipt.get('closure') or []:
            if isinstance(entry, dict) and entry.get('path') and entry.get('cache'):
                sources.setdefault(entry['path'], entry['cache'])
    return sources


def _iso(seconds):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(seconds)) if seconds else None
