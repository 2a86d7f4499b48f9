"""Replace a complete folder object (a Zarr store) without ever losing the complete one.

A Zarr store is many objects, so it cannot be rewritten in one atomic step.  Instead the new
version is written aside, under a hidden sibling key (:func:`aside_key`, never listed), and only
once it is complete is it swapped in (:func:`replace`), in steps recorded in a journal
``state/replacing/<key>.json`` (:func:`bzpipe.store.layout.journal_key`):

1. ``ready``: the new version is complete at the aside key.  The manifest entry of ``key`` is
   dropped, so from here on the old version no longer counts as complete, and the old folder is
   moved out of the way (renamed to a hidden sibling locally; deleted on S3).
2. ``cleared``: the new version is moved in (one rename locally; a copy on S3).
3. ``moved``: the manifest entry of the new version is written; the leftovers and the journal
   are removed.

A process killed at any point leaves either the old version complete (before step 1 ends), or a
journal that :func:`finish_replacement` rolls forward: each step is safe to run again.  The new
version exists complete at all times from the journal's creation on, so nothing complete is lost;
and ``key`` is never reported complete while it holds anything but a whole version.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bzpipe.errors import StoreError
from bzpipe.store.layout import aside_key, aside_name_prefix, journal_key, manifest_key

if TYPE_CHECKING:
    from bzpipe.store import ManifestEntry, Store

log = logging.getLogger(__name__)


def replacement_pending(store: Store, key: str) -> bool:
    """True while a swap into ``key`` was started and not finished (a killed writer)."""
    return store.exists(journal_key(key))


def replace(store: Store, src: str, key: str, *, sha256: str, size: int,
            producer: dict[str, Any] | None = None) -> ManifestEntry:
    """Swap the complete object at ``src`` in as ``key`` and record it in the manifest."""
    if not store.exists(src):
        raise StoreError(f"{store.uri(src)}: nothing to swap in")
    j = {"src": src, "key": key, "trash": aside_key(key, "old-" + uuid.uuid4().hex[:8]), "stage": "ready",
         "sha256": sha256, "size": size, "producer": producer or {}}
    store.write_json(journal_key(key), j, manifest=False)
    entry = finish_replacement(store, key)
    assert entry is not None
    return entry


def finish_replacement(store: Store, key: str) -> ManifestEntry | None:
    """Roll forward an interrupted :func:`replace` of ``key``; None when none is pending."""
    try:
        j = store.read_json(journal_key(key))
    except FileNotFoundError:
        return None
    src, trash = j["src"], j["trash"]
    if j["stage"] == "ready":
        _drop_entry(store, key)
        if store.exists(key):
            if store.is_local:
                _rm(store, trash)
                Path(store.uri(key)).rename(store.uri(trash))
            else:
                _rm(store, key)
        j = _advance(store, key, j, "cleared")
    if j["stage"] == "cleared":
        if store.exists(src):              # not moved yet (locally a rename either happened or not)
            _rm(store, key)                # a copy cut short (S3)
            if store.is_local:
                Path(store.uri(key)).parent.mkdir(parents=True, exist_ok=True)
                Path(store.uri(src)).rename(store.uri(key))
            else:
                store.fs.copy(store.uri(src), store.uri(key), recursive=True)
        elif not store.exists(key):
            raise StoreError(f"{store.uri(key)}: the replacement at {store.uri(src)} vanished before it was "
                             f"swapped in; rebuild it (journal {store.uri(journal_key(key))})")
        j = _advance(store, key, j, "moved")
    entry = store.entry(key)
    if entry is None or entry.sha256 != j["sha256"]:
        entry = store.record(key, sha256=j["sha256"], size=int(j["size"]), producer=j["producer"])
    _rm(store, src)
    _rm(store, trash)
    _rm(store, journal_key(key))
    log.info("%s: new version swapped in (sha256 %s)", store.uri(key), j["sha256"][:12])
    return entry


def sweep_aside(store: Store, key: str, min_age_s: float = 3600.0) -> list[str]:
    """Remove hidden siblings of ``key`` left by writers killed over ``min_age_s`` ago; returns their keys.

    The age keeps a writer that is still busy with its own aside copy safe; a pending swap's
    source is never removed.
    """
    parent = posixpath.dirname(key.strip("/"))
    prefix = aside_name_prefix(key)
    pending = set()
    with contextlib.suppress(FileNotFoundError):
        j = store.read_json(journal_key(key))
        pending = {j["src"], j["trash"]}
    base = store.uri(parent)
    if not store.fs.exists(base):
        return []
    removed = []
    for p in store.fs.ls(base, detail=False):
        k = posixpath.join(parent, posixpath.basename(str(p).rstrip("/")))
        if not posixpath.basename(k).startswith(prefix) or k in pending:
            continue
        if time.time() - _mtime(store, k) >= min_age_s:
            _rm(store, k)
            removed.append(k)
    return removed


def _mtime(store: Store, key: str) -> float:
    """Last modification of a file or folder object (newest of its files on S3), seconds since the epoch."""
    if store.is_local:
        return Path(store.uri(key)).stat().st_mtime
    times = [info.get("LastModified") for info in store.fs.find(store.uri(key), detail=True).values()]
    stamps = [t.timestamp() for t in times if t is not None]
    return max(stamps) if stamps else time.time()


def _advance(store: Store, key: str, j: dict[str, Any], stage: str) -> dict[str, Any]:
    j = {**j, "stage": stage}
    store.write_json(journal_key(key), j, manifest=False)
    return j


def _drop_entry(store: Store, key: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(store.uri(manifest_key(key)))


def _rm(store: Store, key: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if store.fs.exists(store.uri(key)):
            store.fs.rm(store.uri(key), recursive=True)
