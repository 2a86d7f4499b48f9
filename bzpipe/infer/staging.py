"""A granule's inputs: staged into the store, read back checked, and the ERA-5 site boxes it needs.

:func:`stage_granule` copies a granule (or its ECMWF-AUX companion) from wherever it arrives into
``raw/cloudsat/`` with its checksum; :func:`read_checked` reads one and checks its release;
:func:`era5_keys_for` and :func:`load_era5` find and read the stored ERA-5 months of the sites.
:mod:`bzpipe.infer.granule` (one granule) and :mod:`bzpipe.infer.companion` (the ECMWF-AUX and the
ERA-5 track boxes) both build on these.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.checksums import sha256_file
from bzpipe.config import resolve_site
from bzpipe.errors import StoreError
from bzpipe.store import Store, file_version, url_fs
from bzpipe.store.layout import CLOUDSAT_RAW_PREFIX, cloudsat_raw_key, era5_key


def landing_store(store: Store, landing: str) -> tuple[Store, str]:
    """``(store, prefix)`` to list: the main store + a relative prefix, or a store at a landing URI."""
    if landing.startswith("s3://") or landing.startswith("file://") or os.path.isabs(landing):
        return Store(landing), ""
    return store, landing.strip("/")



def granule_id_of(name_or_uri: str) -> str:
    """``YYYYDDDHHMMSS_NNNNN`` from a granule file name (raises InputFileError for other names)."""
    from bzpipe.sources.cloudsat import granule_info

    return granule_info(name_or_uri).granule_id


def stage_granule(store: Store, uri: str) -> str:
    """The store key of a granule under ``raw/cloudsat/``, recorded with its sha256.

    A granule already there is used as is (its manifest entry is renewed when the file changed
    since it was recorded).  One elsewhere (the landing area, another bucket, a local folder) is
    copied to ``raw/cloudsat/<name>`` atomically, with its sha256, its source and the source's
    version (:func:`~bzpipe.store.file_version`) in the manifest, unless the copy there has the same
    sha256: a replaced file of the same size is staged again.  A remote source whose version (its
    ETag, a content hash) is the recorded one is not downloaded again.
    """
    inside = ""
    with contextlib.suppress(StoreError):
        inside = store.key_of(uri)
    if inside.startswith(CLOUDSAT_RAW_PREFIX + "/") and store.exists(inside):
        _renew_entry(store, inside, uri)
        return inside
    name = posixpath.basename(str(uri).rstrip("/"))
    key = cloudsat_raw_key(name)
    fs, path = url_fs(uri)
    producer = {"stage": "stage", "source": uri, "source_version": file_version(uri)}
    entry = store.entry(key) if store.exists(key) else None
    local = fs.protocol in ("file", ("file", "local"))
    if entry is not None and not local and entry.producer.get("source_version") == producer["source_version"]:
        return key
    with tempfile.TemporaryDirectory(prefix="bzpipe-stage-") as d:
        src = path if local else str(Path(d) / name)
        if not local:
            fs.get_file(path, src)
        digest = sha256_file(src)
        if entry is not None and entry.sha256 == digest:
            if entry.producer.get("source_version") != producer["source_version"]:
                store.record(key, sha256=digest, size=entry.size, producer={**entry.producer, **producer})
            return key
        store.put_file(src, key, producer=producer, sha256=digest)
    return key


def _renew_entry(store: Store, key: str, uri: str) -> None:
    """Re-record a granule put straight into ``raw/cloudsat/`` when its file is not the recorded one."""
    entry = store.entry(key)
    version = file_version(store.uri(key))
    if entry is not None and entry.producer.get("source_version") == version:
        return
    with store.local_path(key) as path:
        digest, size = sha256_file(path), path.stat().st_size
    producer = {**(entry.producer if entry else {}), "source": uri, "source_version": version}
    store.record(key, sha256=digest, size=size, producer=producer)


def read_checked(store: Store, key: str, expected_release: str | None,
                 require_reflectivity: bool = True) -> tuple[xr.Dataset, str]:
    """Read a granule from the store, check its release; returns ``(ds, sha256 of the file)``.

    Raises the reader's :class:`~bzpipe.errors.InputFileError` subclasses (naming the file).
    """
    from bzpipe.sources.cloudsat import check_release, read_granule

    entry = store.entry(key)
    with store.local_path(key) as path:
        digest = entry.sha256 if entry is not None else sha256_file(path)
        ds = read_granule(path, require_reflectivity=require_reflectivity, source=store.uri(key))
        ds.load()
    if expected_release:
        check_release(ds, expected_release)
    return ds, digest


def era5_keys_for(store: Store, sites: Sequence[Any], times: np.ndarray) -> list[str]:
    """Keys of the stored ERA-5 site-months (``raw/era5/<site>/era5_<site>_<YYYYMM>.nc``) for the
    months the profile ``times`` span; only those present in the store."""
    t = np.asarray(times).astype("datetime64[M]")
    months = sorted({str(m) for m in np.unique(t)})
    keys = []
    for s in sites:
        name = resolve_site(s).name
        for m in months:
            key = era5_key(name, m)
            if store.is_complete(key):
                keys.append(key)
    return keys


def load_era5(store: Store, keys: Sequence[str]) -> list[xr.Dataset]:
    """Read stored ERA-5 files into memory (:func:`bzpipe.sources.era5.read_era5`)."""
    from bzpipe.sources.era5 import read_era5

    out = []
    for key in keys:
        with store.local_path(key) as path:
            out.append(read_era5(path).load())
    return out
