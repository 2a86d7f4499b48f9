"""One granule from the store to its output: idempotent, atomic, quarantining bad input.

:func:`process_granule` is what a Dask worker (or a Prefect task) runs for one
granule key: it skips a granule whose output for this model is complete, reads
and checks the granule (bad ones are quarantined with the reason), reads its
atmospheric state (:func:`atmosphere_inputs`: the ECMWF-AUX companion, a bad one
quarantined; stored ERA-5), fills the blind zone and writes the Zarr output and its
curtain PNG, recording provenance.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from bzpipe.config import InferConfig
from bzpipe.errors import InputFileError
from bzpipe.infer.fill import channels_of, fill_granule
from bzpipe.infer.output import curtain_png, write_output
from bzpipe.infer.predict import cached_model
from bzpipe.infer.staging import era5_keys_for, granule_id_of, load_era5, read_checked
from bzpipe.provenance import provenance_record
from bzpipe.quarantine import category, is_quarantined, quarantine, release
from bzpipe.store import ManifestEntry, Store
from bzpipe.store.layout import output_key, png_key
from bzpipe.store.replace import finish_replacement

log = logging.getLogger(__name__)



@dataclass
class GranuleResult:
    """What happened to one granule: ``done``, ``skipped`` (output complete), ``quarantined`` or
    ``failed``."""

    granule: str
    status: str
    granule_id: str = ""
    model_id: str = ""
    output_key: str = ""
    plot_key: str = ""
    reason: str = ""
    category: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    n_profiles: int = 0
    n_filled_bins: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def atmosphere_inputs(store: Store, granule_key: str, ds: xr.Dataset, cfg: InferConfig, meta: dict[str, Any],
                      model_id: str, inputs: dict[str, str], era5_keys: Sequence[str] | None = None
                      ) -> tuple[xr.Dataset | None, list[xr.Dataset] | None,
                                 tuple[nn.Module, dict[str, Any]] | None]:
    """The granule's ECMWF-AUX companion (checked; a bad one is quarantined), the stored ERA-5 (site
    months and the granule's track boxes; ``era5_keys`` overrides) and the radar-only model, as
    ``infer.atmosphere_sources`` and ``infer.radar_only_run`` ask; their checksums go into ``inputs``."""
    from bzpipe.infer.companion import load_companion, track_era5_keys

    aux = None
    if "ecmwf_aux" in cfg.atmosphere_sources:
        aux, aux_key, aux_sha = load_companion(store, granule_key, ds, model_id=model_id)
        if aux is not None:
            inputs[store.uri(aux_key)] = aux_sha
    era5 = None
    if "era5" in cfg.atmosphere_sources:
        keys = list(era5_keys) if era5_keys is not None else (
            era5_keys_for(store, cfg.sites, ds["time"].values)
            + track_era5_keys(store, str(ds.attrs.get("granule_id", ""))))
        era5 = load_era5(store, keys) or None
        for k in keys:
            e = store.entry(k)
            inputs[store.uri(k)] = e.sha256 if e else ""
    radar_only = None
    if cfg.radar_only_run and channels_of(meta) == 5:
        ro_model, ro_meta, ro_id = cached_model(store.root, cfg.radar_only_run, cfg.which, cfg.device)
        inputs[str(ro_meta.get("checkpoint_uri", ""))] = str(ro_meta.get("checkpoint_sha256", ""))
        radar_only = (ro_model, ro_meta)
    return aux, era5, radar_only


def fill_and_write(store: Store, ds: xr.Dataset, model: nn.Module, meta: dict[str, Any], cfg: InferConfig, *,
                   model_id: str, inputs: dict[str, str], era5: Sequence[xr.Dataset] | None = None,
                   reflectivity: np.ndarray | None = None, timings: dict[str, float] | None = None,
                   aux: xr.Dataset | None = None, radar_only: tuple[nn.Module, dict[str, Any]] | None = None,
                   **provenance_extra: Any) -> tuple[str, ManifestEntry, xr.Dataset]:
    """Fill ``ds`` and write ``outputs/cloudsat/<model_id>-<settings id>/<granule_id>.zarr`` (+ the PNG when
    ``cfg.plot``); the settings id is :meth:`~bzpipe.config.InferConfig.settings_id`.

    ``inputs`` maps input URIs to their sha256 (granule, checkpoint, ERA-5 files) for the
    provenance record.  Returns ``(output key, manifest entry, output Dataset)``.
    """
    timings = timings if timings is not None else {}
    gid = str(ds.attrs.get("granule_id", ""))
    out = fill_granule(ds, model, meta, cfg, era5=era5, model_id=model_id, timings=timings,
                       reflectivity=reflectivity, aux=aux, radar_only=radar_only)
    t0 = time.perf_counter()
    key = output_key(model_id, cfg.settings_id(), gid)
    prov = provenance_record(cfg, inputs=inputs, stage="infer", granule_id=gid, settings_id=cfg.settings_id(),
                             granule_source=ds.attrs.get("source_file", ""), model_id=model_id,
                             model_checkpoint=meta.get("checkpoint_uri", ""),
                             model_checkpoint_sha256=meta.get("checkpoint_sha256", ""), **provenance_extra)
    entry = write_output(store, key, out, prov)
    if cfg.plot:
        store.write_bytes(png_key(key), curtain_png(out), producer={"stage": "infer", "of": key,
                                                                     "model_id": model_id})
    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
    return key, entry, out


def process_granule(store_root: str, granule_key: str, cfg: InferConfig, *, model_id: str | None = None,
                    era5_keys: Sequence[str] | None = None, force: bool = False) -> GranuleResult:
    """Fill one stored granule with the configured model; never raises for a bad input file.

    Args:
        store_root: the store (local folder or s3://...).
        granule_key: key of the granule file in the store (e.g. ``raw/cloudsat/<name>.hdf``).
        cfg: the inference config (run_name / which choose the model).
        model_id: the model id the caller planned with (checked against the checkpoint).
        era5_keys: ERA-5 files for 5-channel models (default: the configured sites' months
            found in the store).
        force: recompute even when the output is complete.

    Returns a :class:`GranuleResult`; input errors (corrupt, missing SDS, all fill, wrong
    release, bad name) quarantine the granule and return ``status="quarantined"``.
    Other errors (store, model) propagate.
    """
    t_start = time.perf_counter()
    store = Store(store_root)
    name = posixpath.basename(granule_key)
    res = GranuleResult(granule=name, status="failed")
    model, meta, mid = cached_model(store.root, cfg.run_name, cfg.which, cfg.device, expected_id=model_id)
    res.model_id = mid
    try:
        res.granule_id = granule_id_of(name)
        out_key = output_key(mid, cfg.settings_id(), res.granule_id)
        res.output_key = out_key
        finish_replacement(store, out_key)          # a rewrite killed while it was being swapped in
        if not force and store.is_complete(out_key):
            res.status, res.reason = "skipped", "output for this model and these settings is complete"
            res.seconds = time.perf_counter() - t_start
            return res
        t0 = time.perf_counter()
        ds, digest = read_checked(store, granule_key, cfg.expected_release)
        res.timings["read"] = time.perf_counter() - t0
    except InputFileError as e:
        rec = quarantine(store, granule_key, e, model_id=mid, store_key=granule_key)
        log.warning("quarantined %s: %s", name, e)
        res.status, res.reason, res.category = "quarantined", str(e), rec["category"]
        res.seconds = time.perf_counter() - t_start
        return res
    inputs = {store.uri(granule_key): digest,
              str(meta.get("checkpoint_uri", "")): str(meta.get("checkpoint_sha256", ""))}
    t0 = time.perf_counter()
    aux, era5, radar_only = atmosphere_inputs(store, granule_key, ds, cfg, meta, mid, inputs, era5_keys)
    res.timings["read"] += time.perf_counter() - t0
    try:
        key, entry, out = fill_and_write(store, ds, model, meta, cfg, model_id=mid, inputs=inputs, era5=era5,
                                         timings=res.timings, granule_sha256=digest, aux=aux,
                                         radar_only=radar_only)
    except InputFileError as e:   # e.g. no valid heights at all
        quarantine(store, granule_key, e, model_id=mid, store_key=granule_key)
        log.warning("quarantined %s: %s", name, e)
        res.status, res.reason, res.category = "quarantined", str(e), category(e)
        res.seconds = time.perf_counter() - t_start
        return res
    if is_quarantined(store, granule_key):         # a replaced file that reads well now
        release(store, granule_key)
        log.info("%s reads well now: quarantine lifted", name)
    res.status = "done"
    res.plot_key = png_key(key) if cfg.plot else ""
    res.n_profiles = int(out.sizes["profile"])
    res.n_filled_bins = int(out["filled_flag"].values.sum())
    res.seconds = time.perf_counter() - t_start
    log.info("%s -> %s (%.1f s)", name, store.uri(key), res.seconds)
    return res
