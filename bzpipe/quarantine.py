"""Quarantine of bad input granules: ``quarantine/<granule file stem>.json`` in the store.

A granule that cannot be used (truncated / not HDF4, a missing SDS, only fill
values, another product release) gets a record naming the file, the error class
and a short reason category, so scanners skip it and a person can look at it.
The record is written atomically; nothing else of the granule is touched.
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from typing import Any

from bzpipe.errors import CorruptFileError, EmptyDataError, InputFileError, MissingVariableError, \
    WrongReleaseError
from bzpipe.store import Store

PREFIX = "quarantine"

_CATEGORIES: tuple[tuple[type[BaseException], str], ...] = (
    (WrongReleaseError, "wrong release"),
    (CorruptFileError, "corrupt or truncated file"),
    (MissingVariableError, "missing variable (SDS)"),
    (EmptyDataError, "only fill values"),
    (InputFileError, "unusable input file"),
)


def granule_stem(name_or_uri: str) -> str:
    """``2019...F03`` from a granule name, path or URI (the file name without ``.hdf``)."""
    base = posixpath.basename(str(name_or_uri).rstrip("/"))
    return base[:-4] if base.lower().endswith(".hdf") else base


def quarantine_key(name_or_uri: str) -> str:
    return f"{PREFIX}/{granule_stem(name_or_uri)}.json"


def category(error: BaseException) -> str:
    """Short reason category of an input error (``"wrong release"``, ``"only fill values"``, ...)."""
    for cls, text in _CATEGORIES:
        if isinstance(error, cls):
            return text
    return type(error).__name__


def quarantine(store: Store, name_or_uri: str, error: BaseException, **extra: Any) -> dict[str, Any]:
    """Record ``error`` for the granule; returns the record."""
    rec: dict[str, Any] = {
        "granule": posixpath.basename(str(name_or_uri).rstrip("/")),
        "source": str(name_or_uri),
        "category": category(error),
        "error": type(error).__name__,
        "reason": str(error),
        "problem": getattr(error, "problem", str(error)),
        "file": getattr(error, "path", str(name_or_uri)),
        "quarantined_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    rec.update(extra)
    store.write_json(quarantine_key(name_or_uri), rec)
    return rec


def quarantine_record(store: Store, name_or_uri: str) -> dict[str, Any] | None:
    """The quarantine record of a granule, or None."""
    try:
        return store.read_json(quarantine_key(name_or_uri))
    except FileNotFoundError:
        return None


def is_quarantined(store: Store, name_or_uri: str) -> bool:
    return store.exists(quarantine_key(name_or_uri))


def quarantined(store: Store) -> dict[str, dict[str, Any]]:
    """All quarantine records, by granule stem."""
    out = {}
    for key in store.list(PREFIX, suffix=".json"):
        out[posixpath.basename(key)[:-5]] = store.read_json(key)
    return out


def release(store: Store, name_or_uri: str) -> None:
    """Lift the quarantine of a granule (e.g. after replacing the file)."""
    store.remove(quarantine_key(name_or_uri))
