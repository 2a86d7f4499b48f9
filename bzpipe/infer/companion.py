"""A granule's companions in the store: its ECMWF-AUX granule and the ERA-5 boxes along its track.

* ECMWF-AUX (:func:`companion_key`, :func:`stage_companion`, :func:`load_companion`): the file of
  product ``ECMWF-AUX`` with the same granule id (``YYYYDDDHHMMSS_NNNNN``), found beside the
  2B-GEOPROF granule (landing area or ``raw/cloudsat/``) and staged with it.  One that does not
  belong to the granule (another orbit, another profile count: :func:`check_companion`) or cannot be
  read is quarantined with the reason, and the granule is filled without it.
* ERA-5 track boxes (:func:`track_era5_keys`, :func:`fetch_track_era5`): for the profiles that
  neither an ECMWF-AUX nor a stored ERA-5 site box covers, boxes along the track
  (:func:`bzpipe.infer.era5_track.track_boxes`) requested from the CDS through the ingest stage's
  cdsapi path, stored as ``raw/era5/track/<granule id>/era5_track_<k>.nc``.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.checksums import sha256_file
from bzpipe.config import InferConfig, IngestConfig
from bzpipe.errors import InputFileError
from bzpipe.quarantine import is_quarantined, quarantine
from bzpipe.store import Store
from bzpipe.store.layout import CLOUDSAT_RAW_PREFIX, era5_track_key, era5_track_prefix

log = logging.getLogger(__name__)

AUX_PRODUCT = "ECMWF-AUX"


def _granule_id(name: str) -> str:
    from bzpipe.sources.cloudsat import granule_info

    return granule_info(name).granule_id


def is_companion(name: str) -> bool:
    """True for an ECMWF-AUX file name (landing scans skip these: they are not granules to fill)."""
    from bzpipe.sources.cloudsat import granule_info

    try:
        return granule_info(name).product == AUX_PRODUCT
    except InputFileError:
        return False


def companion_key(store: Store, granule_key: str) -> str | None:
    """Key of the ECMWF-AUX granule beside ``granule_key`` (same folder, same granule id), or None."""
    try:
        gid = _granule_id(posixpath.basename(granule_key))
    except InputFileError:   # not a CloudSat name: it has no companion (and is quarantined)
        return None
    found = _aux_in(store, posixpath.dirname(granule_key), gid)
    return found[-1] if found else None


def _aux_in(store: Store, folder: str, gid: str) -> list[str]:
    """Keys of the ECMWF-AUX files of granule ``gid`` directly in ``folder``."""
    head = f"{gid}_CS_{AUX_PRODUCT}_"
    return [k for k in store.list(folder, suffix=".hdf")
            if posixpath.dirname(k) == folder.strip("/") and posixpath.basename(k).startswith(head)]


def stage_companion(store: Store, granule_uri: str) -> str | None:
    """Stage the ECMWF-AUX companion found beside ``granule_uri`` into ``raw/cloudsat/``; its key or None."""
    from bzpipe.infer.staging import landing_store, stage_granule

    uri = granule_uri.removeprefix("file://")
    folder, name = posixpath.split(uri.rstrip("/"))
    try:
        gid = _granule_id(name)
    except InputFileError:
        return None
    src_store, prefix = landing_store(store, folder)
    matches = _aux_in(src_store, prefix, gid)
    if not matches:
        return None
    key = stage_granule(store, src_store.uri(matches[-1]))
    return key if key.startswith(CLOUDSAT_RAW_PREFIX + "/") else None


def load_companion(store: Store, granule_key: str, ds: xr.Dataset, *, model_id: str = ""
                   ) -> tuple[xr.Dataset | None, str, str]:
    """``(aux, key, sha256)`` of the granule's ECMWF-AUX companion, checked against ``ds``; ``(None, key
    or "", "")`` when there is none, it is quarantined, or it is bad (then quarantined here, with the reason).
    """
    from bzpipe.sources.cloudsat import check_companion, read_ecmwf_aux

    key = companion_key(store, granule_key)
    if key is None:
        return None, "", ""
    if is_quarantined(store, key):
        log.warning("%s is quarantined: %s is filled without it", key, ds.attrs.get("granule_id", ""))
        return None, key, ""
    try:
        entry = store.entry(key)
        with store.local_path(key) as path:
            digest = entry.sha256 if entry is not None else sha256_file(path)
            aux = read_ecmwf_aux(path, source=store.uri(key)).load()
        check_companion(ds, aux)
    except InputFileError as e:
        quarantine(store, key, e, model_id=model_id, store_key=key, granule=ds.attrs.get("granule_id", ""))
        log.warning("quarantined %s: %s", posixpath.basename(key), e)
        return None, key, ""
    return aux, key, digest


# --------------------------------------------------------------------------- ERA-5 along the track


def track_era5_keys(store: Store, granule_id: str) -> list[str]:
    """The stored ERA-5 track boxes of a granule."""
    return sorted(k for k in store.list(era5_track_prefix(granule_id), suffix=".nc") if store.is_complete(k))


def fetch_track_era5(store: Store, cfg: InferConfig, granule_key: str, creds: Any) -> list[str]:
    """Request from the CDS the ERA-5 boxes along the track of ``granule_key`` that nothing covers yet.

    Nothing is requested when the granule has a good ECMWF-AUX companion listed before ``era5`` in
    ``cfg.atmosphere_sources`` (it covers every profile), when ``era5`` is not a source, or when
    ``cfg.era5_track_boxes`` is off.  Profiles inside a stored ERA-5 site box are not requested
    again.  Returns the keys of the stored boxes.
    """
    from bzpipe.infer.era5_track import coverage, track_boxes
    from bzpipe.infer.staging import era5_keys_for, load_era5, read_checked
    from bzpipe.ingest import StoreJobBook
    from bzpipe.sources.era5.download import DATASET, download_request, era5_box_request

    sources = list(cfg.atmosphere_sources)
    if "era5" not in sources or not cfg.era5_track_boxes:
        return []
    ds, _ = read_checked(store, granule_key, cfg.expected_release, require_reflectivity=False)
    gid = str(ds.attrs["granule_id"])
    if "ecmwf_aux" in sources and sources.index("ecmwf_aux") < sources.index("era5"):
        aux, _, _ = load_companion(store, granule_key, ds)
        if aux is not None:
            return track_era5_keys(store, gid)
    need = np.isfinite(ds["latitude"].values) & np.isfinite(ds["longitude"].values)
    for e5 in load_era5(store, era5_keys_for(store, cfg.sites, ds["time"].values)) \
            + load_era5(store, track_era5_keys(store, gid)):
        need &= ~coverage(e5, ds["latitude"].values, ds["longitude"].values)
    levels = IngestConfig(**cfg.era5_ingest).era5_levels_hpa
    ing = IngestConfig(**cfg.era5_ingest)
    for k, box in enumerate(track_boxes(ds["latitude"].values, ds["longitude"].values, ds["time"].values,
                                        need)):
        key = era5_track_key(gid, k)
        if store.is_complete(key):
            continue
        request = era5_box_request(box["area"], box["days"], box["hours"], levels)
        with tempfile.TemporaryDirectory(prefix="bzpipe-era5-track-") as d:
            path = download_request(creds, request, Path(d) / posixpath.basename(key),
                                    f"{DATASET} track box {k} of granule {gid}",
                                    timeout_s=ing.request_timeout_s, poll_max_s=ing.cds_poll_max_s,
                                    job_book=StoreJobBook(store, f"track-{gid}-{k}"))
            store.put_file(path, key, producer={"stage": "infer-era5-track", "granule_id": gid,
                                                "request": request, "source": "cds",
                                                "service": getattr(creds, "url", "")})
        log.info("ERA-5 track box %d of %s: %s (%d profiles)", k, gid, box["area"],
                 box["profiles"][1] - box["profiles"][0] + 1)
    return track_era5_keys(store, gid)
