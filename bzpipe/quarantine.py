"""Quarantine of bad input granules: ``quarantine/<granule file stem>.json`` in the store
(:func:`bzpipe.store.layout.quarantine_key`).

A granule that cannot be used (truncated / not HDF4, damaged bytes, values no
CPR produces, a missing SDS, only fill values, another product release) gets a
record naming the file, the error class and a short reason category, so scanners
skip it and a person can look at it.  The record is written atomically; nothing
else of the granule is touched.

The record also holds the sha256 of the staged copy that failed and the version
(size + mtime, or ETag on S3) of the file it was staged from, so a scanner skips
the granule only while its file is unchanged (:func:`unchanged_since`): a fixed
replacement is announced again, and a good read of it lifts the quarantine
(:func:`release`).
"""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime
from typing import Any

from bzpipe.checksums import sha256_file
from bzpipe.errors import (
    CorruptFileError,
    EmptyDataError,
    ImplausibleDataError,
    InputFileError,
    MissingVariableError,
    WrongReleaseError,
)
from bzpipe.store import Store, file_version
from bzpipe.store.layout import QUARANTINE_PREFIX, quarantine_key

_CATEGORIES: tuple[tuple[type[BaseException], str], ...] = (
    (WrongReleaseError, "wrong release"),
    (ImplausibleDataError, "implausible values (damaged data)"),
    (CorruptFileError, "corrupt or truncated file"),
    (MissingVariableError, "missing variable (SDS)"),
    (EmptyDataError, "only fill values"),
    (InputFileError, "unusable input file"),
)


def category(error: BaseException) -> str:
    """Short reason category of an input error (``"wrong release"``, ``"only fill values"``, ...)."""
    for cls, text in _CATEGORIES:
        if isinstance(error, cls):
            return text
    return type(error).__name__


def quarantine(store: Store, name_or_uri: str, error: BaseException, **extra: Any) -> dict[str, Any]:
    """Record ``error`` for the granule; returns the record.

    With ``store_key`` (the staged granule in ``store``) in ``extra``, the record takes the sha256
    of that copy and the source / source_version its staging recorded (see :func:`unchanged_since`).
    """
    staged = store.entry(extra["store_key"]) if extra.get("store_key") else None
    rec: dict[str, Any] = {
        "granule": posixpath.basename(str(name_or_uri).rstrip("/")),
        "source": str(name_or_uri),
        "category": category(error),
        "error": type(error).__name__,
        "reason": str(error),
        "problem": getattr(error, "problem", str(error)),
        "file": getattr(error, "path", str(name_or_uri)),
        "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if staged is not None:
        rec.update(sha256=staged.sha256, staged_from=staged.producer.get("source", ""),
                   source_version=staged.producer.get("source_version", ""))
    elif extra.get("store_key") and store.exists(extra["store_key"]):   # put there without staging
        with store.local_path(extra["store_key"]) as path:
            rec.update(sha256=sha256_file(path), source_version=file_version(store.uri(extra["store_key"])))
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


def unchanged_since(record: dict[str, Any], version: str, sha256: str | None = None) -> bool:
    """Whether the file now at the granule's source is the one that was quarantined.

    ``version`` is the source's current version (:func:`bzpipe.infer.batch.file_version`); when the
    record has none to compare with, the file's ``sha256`` (if given) is compared with the staged
    copy's.  A record with neither stays in force until it is released by hand.
    """
    if record.get("source_version") and version:
        return bool(record["source_version"] == version)
    if record.get("sha256") and sha256:
        return bool(record["sha256"] == sha256)
    return True


def quarantined(store: Store) -> dict[str, dict[str, Any]]:
    """All quarantine records, by granule stem."""
    out = {}
    for key in store.list(QUARANTINE_PREFIX, suffix=".json"):
        out[posixpath.basename(key)[:-5]] = store.read_json(key)
    return out


def release(store: Store, name_or_uri: str) -> None:
    """Lift the quarantine of a granule (e.g. after replacing the file)."""
    store.remove(quarantine_key(name_or_uri))
