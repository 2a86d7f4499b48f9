"""Fill the blind zone of one granule (in memory): the output Dataset.

:func:`fill_granule` takes a schema granule Dataset (``bzpipe.sources.cloudsat``),
a model with its checkpoint metadata, an :class:`~bzpipe.config.InferConfig` and,
for 5-channel models, an ERA-5 Dataset covering the track; it returns the output
described in :data:`OUTPUT_VARIABLES`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from bzpipe.config import InferConfig
from bzpipe.errors import EmptyDataError
from bzpipe.infer.curtain import Curtain, to_cpr_bins, to_model_grid
from bzpipe.infer.era5_track import colocate_many, normalize_era5
from bzpipe.infer.geometry import ModelGrid, grid_settings
from bzpipe.infer.predict import predict_curtain, resolve_device
from bzpipe.schema import DBZ_MAX, DBZ_MIN, ERA5_VARIABLES, NORM_HI, NORM_LO, dbz_to_norm, norm_to_dbz

#: dB per normalized unit: converts an MC spread of the normalized output to dB.
DB_PER_NORM = (DBZ_MAX - DBZ_MIN) / (NORM_HI - NORM_LO)

OUTPUT_VARIABLES: dict[str, str] = {
    "reflectivity_observed": "(profile, bin) dBZ, the granule's reflectivity as read",
    "reflectivity_filled": "(profile, bin) dBZ, observed; blind-zone bins replaced by the MC mean "
                           "regridded back (linear Z); NaN = no echo",
    "reflectivity_std": "(profile, bin) dB, MC-dropout spread in the filled bins (NaN elsewhere)",
    "filled_flag": "(profile, bin) int8, 1 where the bin was filled",
    "grid_observed": "(profile, height) dBZ, observed echo on the model grid (NaN = none / unobserved)",
    "mc_mean": "(profile, height) dBZ, observation above the blind zone, MC-dropout mean inside it",
    "mc_std": "(profile, height) dB, MC-dropout spread (0 above the blind zone)",
    "mc_quantiles": "(quantile, profile, height) dBZ, MC-dropout quantiles",
    "grid_filled_flag": "(profile, height) int8, 1 in the predicted rows of valid profiles",
}


def model_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """Grid, patch width and channels of a model (:func:`~bzpipe.infer.geometry.grid_settings`).

    When the checkpoint metadata lacks the grid, the root attributes (and ``height``
    coordinate) of the training dataset it names (``meta["dataset"]["uri"]``) fill in.
    """
    try:
        return grid_settings(meta)
    except KeyError:
        uri = (meta.get("dataset") or {}).get("uri") if isinstance(meta.get("dataset"), dict) else None
        if not uri:
            raise
    return grid_settings(meta, _dataset_attrs(str(uri)))


@functools.lru_cache(maxsize=8)
def _dataset_attrs_cached(uri: str) -> str:
    import zarr

    from bzpipe.store import s3_storage_options

    opts = s3_storage_options() if uri.startswith("s3://") else None
    root = zarr.open_group(uri, mode="r", storage_options=opts)
    attrs = dict(root.attrs)
    heights = None
    for path in ("height", "train/height"):
        try:
            heights = np.asarray(root[path][:], np.float64)
            break
        except KeyError:
            continue
    if heights is not None and heights.size > 1:
        dz = float(np.median(np.diff(heights)))
        attrs.setdefault("n_heights", int(heights.size))
        attrs.setdefault("top_m", float(heights[-1] + dz / 2))
    for split in ("train", "val", "test"):          # last resort for the patch width: x (N, C, H, W)
        try:
            attrs.setdefault("patch_width", int(root[f"{split}/x"].shape[-1]))
            break
        except KeyError:
            continue
    return json.dumps(attrs, default=str)


def _dataset_attrs(uri: str) -> dict[str, Any]:
    return json.loads(_dataset_attrs_cached(uri))


def channels_of(meta: dict[str, Any]) -> int:
    """Input channels (1 or 5, without the mask channel) of a model from its metadata."""
    ch = meta.get("channels", meta.get("channel_set"))
    if isinstance(ch, (list, tuple)):
        return len(ch)
    if ch in ("3+_1", 1, "1"):
        return 1
    if ch in ("3+_5", 5, "5"):
        return 5
    mc = meta.get("model") or meta.get("model_config") or {}
    if isinstance(mc, dict) and "in_channels" in mc:
        return int(mc["in_channels"]) - 1
    raise KeyError(f"model metadata says neither its channels nor the model's in_channels (got {ch!r})")


def model_inputs(curtain: Curtain, grid: ModelGrid, n_channels: int, ds: xr.Dataset,
                 era5: xr.Dataset | Sequence[xr.Dataset] | None,
                 normalization: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """The normalized model input curtain and the ERA-5 coverage.

    Returns ``(x, era5_covered)``: ``x`` (C, H, P) float32, row 0 = surface; channel 0
    reflectivity (``dbz_to_norm``; no echo and unobserved rows -> -1), channels 1-4
    ERA-5 t, q, u, v along the track standardised with the training mean / std.
    Profiles outside every ERA-5 box get the training mean (0) in channels 1-4 and
    ``era5_covered`` False.  For 1-channel models ``era5_covered`` is all True.
    """
    refl = dbz_to_norm(np.where(curtain.observed, curtain.dbz, np.nan))          # (P, H)
    chans = [refl.T]
    covered = np.ones(refl.shape[0], bool)
    if n_channels == 5:
        if era5 is None:
            raise ValueError("a 5-channel model needs ERA-5 along the track (era5=...)")
        if not normalization:
            raise KeyError("model metadata has no ERA-5 normalization (mean/std)")
        era5s = [era5] if isinstance(era5, xr.Dataset) else list(era5)
        fields, covered = colocate_many(era5s, ds["time"].values, ds["latitude"].values,
                                        ds["longitude"].values, curtain.ground_m, grid.centres(),
                                        ERA5_VARIABLES)
        fields = normalize_era5(fields, normalization)
        chans += [np.nan_to_num(fields[v], nan=0.0).T for v in ERA5_VARIABLES]
    elif n_channels != 1:
        raise ValueError(f"models take 1 or 5 channels, not {n_channels}")
    return np.ascontiguousarray(np.stack(chans).astype(np.float32)), covered


def fill_granule(ds: xr.Dataset, model: nn.Module, meta: dict[str, Any], cfg: InferConfig, *,
                 era5: xr.Dataset | Sequence[xr.Dataset] | None = None, model_id: str = "", timings: dict[str, float] | None = None,
                 reflectivity: np.ndarray | None = None) -> xr.Dataset:
    """Fill the blind zone of a granule; returns the output Dataset (see :data:`OUTPUT_VARIABLES`).

    Args:
        ds: schema granule Dataset, dims (profile, bin), bin 0 = top.
        model, meta: the model and its checkpoint metadata (grid, patch width, channels,
            normalization).
        cfg: blind zone depth, window overlap, MC passes, quantiles, batch size, device.
        era5: ERA-5 pressure-level Dataset(s) covering the track (5-channel models).
        model_id: recorded in the attributes.
        timings: if given, seconds spent in ``regrid`` and ``inference`` are added to it.
        reflectivity: (P, B) dBZ to use instead of the granule's (e.g. geometry-only products).
    """
    timings = timings if timings is not None else {}
    settings = model_settings(meta)
    grid = ModelGrid(int(settings["n_heights"]), float(settings["top_m"]))
    width = int(settings["width"])
    blind_rows = grid.blind_rows(cfg.blind_zone_m)
    if cfg.max_profiles is not None:
        ds = ds.isel(profile=slice(0, cfg.max_profiles))
        if reflectivity is not None:
            reflectivity = reflectivity[: cfg.max_profiles]
    if reflectivity is None and "reflectivity" not in ds:
        raise ValueError(f"{ds.attrs.get('source_file', 'granule')}: no reflectivity to fill")
    src = ds.attrs.get("source_file", "<granule>")

    t0 = time.perf_counter()
    curtain = to_model_grid(ds, grid, cfg.blind_zone_m, cloud_mask_min=cfg.cloud_mask_min,
                            dbz=reflectivity)
    if not curtain.valid.any():
        raise EmptyDataError(src, "no profile has valid heights: nothing to fill")
    x, era5_covered = model_inputs(curtain, grid, channels_of(meta), ds, era5, meta.get("normalization"))
    t1 = time.perf_counter()
    overlap = min(cfg.window_overlap, width - 1)
    device = next(model.parameters()).device if any(True for _ in model.parameters()) \
        else resolve_device(cfg.device)
    pred = predict_curtain(model, x, width=width, overlap=overlap, blind_rows=blind_rows,
                           n_passes=cfg.mc_passes, quantiles=cfg.quantiles, batch_size=cfg.batch_size,
                           device=device, generator_seed=cfg.seed, active=curtain.valid)
    t2 = time.perf_counter()

    valid = curtain.valid
    grid_obs = np.where(curtain.observed, curtain.dbz, np.nan).astype(np.float32)  # (P, H) dBZ
    mean_dbz = norm_to_dbz(pred["mean"]).T                                         # (P, H)
    std_db = (pred["std"] * DB_PER_NORM).T.astype(np.float32)
    q_dbz = np.stack([norm_to_dbz(q).T for q in pred["quantiles"]])               # (Q, P, H)
    # above the blind zone the fields are the observation itself (not a dBZ -> norm -> dBZ round trip)
    mean_dbz[:, blind_rows:] = grid_obs[:, blind_rows:]
    q_dbz[:, :, blind_rows:] = grid_obs[None, :, blind_rows:]
    grid_flag = np.zeros(mean_dbz.shape, np.int8)
    grid_flag[:, :blind_rows] = 1
    grid_flag[~valid] = 0
    for a in (mean_dbz, std_db):
        a[~valid] = np.nan
    q_dbz[:, ~valid] = np.nan

    # back to CloudSat's bins: only blind-zone bins change
    refl_obs = ds["reflectivity"].values.astype(np.float32) if reflectivity is None \
        else np.asarray(reflectivity, np.float32)
    filled_bins = curtain.blind_bins
    back = to_cpr_bins(mean_dbz, grid, curtain)
    back_std = np.sqrt(to_cpr_bins(std_db.astype(np.float64) ** 2, grid, curtain, linear_z=False))
    refl_filled = np.where(filled_bins, back, refl_obs).astype(np.float32)
    refl_std = np.where(filled_bins, back_std, np.nan).astype(np.float32)
    t3 = time.perf_counter()
    timings["regrid"] = timings.get("regrid", 0.0) + (t1 - t0) + (t3 - t2)
    timings["inference"] = timings.get("inference", 0.0) + (t2 - t1)

    heights = grid.centres()
    out = xr.Dataset(
        {
            "reflectivity_observed": (("profile", "bin"), refl_obs, {"units": "dBZ"}),
            "reflectivity_filled": (("profile", "bin"), refl_filled, {"units": "dBZ"}),
            "reflectivity_std": (("profile", "bin"), refl_std, {"units": "dB"}),
            "filled_flag": (("profile", "bin"), filled_bins.astype(np.int8), {}),
            "cpr_height": (("profile", "bin"), ds["height"].values.astype(np.float32),
                           {"units": "m", "long_name": "bin centre above mean sea level"}),
            "grid_observed": (("profile", "height"), grid_obs, {"units": "dBZ"}),
            "mc_mean": (("profile", "height"), mean_dbz.astype(np.float32), {"units": "dBZ"}),
            "mc_std": (("profile", "height"), std_db, {"units": "dB"}),
            "mc_quantiles": (("quantile", "profile", "height"), q_dbz.astype(np.float32), {"units": "dBZ"}),
            "grid_filled_flag": (("profile", "height"), grid_flag, {}),
            "time": ("profile", ds["time"].values),
            "latitude": ("profile", ds["latitude"].values.astype(np.float32), {"units": "degrees_north"}),
            "longitude": ("profile", ds["longitude"].values.astype(np.float32), {"units": "degrees_east"}),
            "ground_height": ("profile", curtain.ground_m.astype(np.float32), {"units": "m"}),
            "surface_bin": ("profile", curtain.surface_bin.astype(np.int16), {}),
            "profile_valid": ("profile", valid.astype(np.int8), {}),
            "era5_colocated": ("profile", era5_covered.astype(np.int8),
                               {"description": "1: ERA-5 along the track; 0: training mean used"}),
        },
        coords={"profile": np.arange(ds.sizes["profile"]), "bin": np.arange(ds.sizes["bin"]),
                "height": ("height", heights, {"units": "m", "long_name": "model row centre above ground"}),
                "quantile": ("quantile", np.asarray(cfg.quantiles, np.float64))},
        attrs={"granule_id": ds.attrs.get("granule_id", ""), "model_id": model_id,
               "source_product": ds.attrs.get("product", ""), "release": ds.attrs.get("release", ""),
               "blind_zone_m": float(cfg.blind_zone_m), "blind_zone_rows": int(blind_rows),
               "window_width": width, "window_overlap": int(overlap), "mc_passes": int(cfg.mc_passes),
               "model_grid_dz_m": grid.dz_m, "n_valid_profiles": int(valid.sum())},
    )
    for name, doc in OUTPUT_VARIABLES.items():
        out[name].attrs["description"] = doc
    return out
