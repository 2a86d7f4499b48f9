"""Fill the blind zone of one granule (in memory): the output Dataset.

:func:`fill_granule` takes a schema granule Dataset (``bzpipe.sources.cloudsat``), a model with
its checkpoint metadata, an :class:`~bzpipe.config.InferConfig`, and the atmospheric state along
the track (the granule's ECMWF-AUX companion and / or ERA-5; :mod:`bzpipe.infer.state`); it returns
the output described in :data:`OUTPUT_VARIABLES`, with CF metadata (:mod:`bzpipe.infer.cf`).

Per profile:

* the clutter-flagged bins (surface from ``SurfaceHeightBin``, depth over land / ocean) are the
  blind zone; every model row overlapping them is hidden from the model and predicted, so no
  flagged bin feeds a row the model conditions on, and a filled bin's value is the prediction only
  (:mod:`bzpipe.infer.curtain`);
* a 5-channel model fills a profile only with an atmospheric state from a real source; without one
  the profile is left unfilled and flagged, or filled by ``infer.radar_only_run``;
* profiles outside the training domain (``out_of_domain``) are not filled unless
  ``infer.fill_out_of_domain``;
* a model trained at KaZR resolution is refused on CPR granules unless
  ``infer.allow_resolution_mismatch`` (then ``resolution_mismatch`` = 1 on the output).
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

from bzpipe.config import InferConfig, check_blind_zone
from bzpipe.distributed import pick_device
from bzpipe.errors import ConfigError, EmptyDataError
from bzpipe.forward.dataset import KAZR, model_resolution
from bzpipe.infer.cf import cf_decorate
from bzpipe.infer.curtain import Curtain, clutter_depth, to_cpr_bins, to_model_grid
from bzpipe.infer.era5_track import normalize_era5
from bzpipe.infer.geometry import ModelGrid, grid_settings
from bzpipe.infer.predict import predict_curtain
from bzpipe.infer.state import TrackState, context_fill, domain_flags, track_state, training_domain
from bzpipe.schema import DBZ_PER_NORM, ERA5_VARIABLES, dbz_to_norm, norm_to_dbz
from bzpipe.thermo import humidity_feature, representation_of

#: ``fill_status`` values (:data:`bzpipe.infer.cf.FILL_STATUS_MEANINGS`)
FILLED, FILLED_RADAR_ONLY, FILLED_OUT_OF_DOMAIN, NO_STATE, OUT_OF_DOMAIN, INVALID = range(6)

OUTPUT_VARIABLES: dict[str, str] = {
    "reflectivity_observed": "(profile, bin) dBZ, the granule's reflectivity as read",
    "reflectivity_filled": "(profile, bin) dBZ, observed; filled blind-zone bins: the MC mean of the hidden "
                           "rows regridded back (linear Z); NaN = no echo (or not filled, see the flags)",
    "reflectivity_std": "(profile, bin) dB, MC-dropout spread in the filled bins (NaN elsewhere)",
    "filled_flag": "(profile, bin) int8, 1 where the bin was filled",
    "blind_zone_flag": "(profile, bin) int8, 1 in the clutter-flagged bins",
    "grid_observed": "(profile, height) dBZ, observed echo on the model grid (NaN = none / unobserved)",
    "mc_mean": "(profile, height) dBZ, observation above the hidden rows, MC-dropout mean inside them",
    "mc_std": "(profile, height) dB, MC-dropout spread (0 above the hidden rows)",
    "mc_quantiles": "(quantile, profile, height) dBZ, MC-dropout quantiles",
    "grid_filled_flag": "(profile, height) int8, 1 in the predicted rows of filled profiles",
    "atmosphere_source": "(profile) int8, 0 none, 1 ECMWF-AUX, 2 ERA-5",
    "out_of_domain": "(profile) int8, 1 warmer than the training cold threshold, 2 outside its latitudes",
    "fill_status": "(profile) int8, whether and how the profile was filled",
}


class ResolutionMismatchError(ConfigError):
    """A model trained at KaZR resolution applied to CPR granules without the explicit switch."""


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
    from bzpipe.dataset.reader import open_dataset

    opened = open_dataset(None, uri, require_complete=False)
    root, attrs = opened.root, dict(opened.attrs)
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


def model_records(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Where a model's training build is recorded: its checkpoint metadata (``meta["build"]``) and,
    for checkpoints from before that record, the root attributes of its training dataset."""
    metas = [meta]
    uri = (meta.get("dataset") or {}).get("uri") if isinstance(meta.get("dataset"), dict) else None
    if not isinstance(meta.get("build"), dict) and uri:
        try:
            metas.append(_dataset_attrs(str(uri)))
        except Exception:  # noqa: BLE001 - the dataset may be gone; the checkpoint's record decides
            pass
    return metas


def check_resolution(meta: dict[str, Any], cfg: InferConfig, model_id: str = "") -> int:
    """0 when the model was trained on CPR-resolution data (``build.forward_operator``), 1 when it was
    trained at KaZR resolution and ``cfg.allow_resolution_mismatch`` lets it fill CPR granules anyway;
    raises :class:`ResolutionMismatchError` (saying how to allow it) otherwise."""
    if model_resolution(*model_records(meta))["resolution"] != KAZR:
        return 0
    if cfg.allow_resolution_mismatch:
        return 1
    raise ResolutionMismatchError(
        f"model {model_id or meta.get('model_id', '')} (run {cfg.run_name}) was trained at KaZR resolution: "
        "its dataset was built without build.forward_operator, so it has never seen the CPR's 480 m pulse, "
        "1.1 km profiles and -28 dBZ sensitivity. Train on a dataset built with "
        "build.forward_operator.enabled=true, or set infer.allow_resolution_mismatch=true to fill anyway "
        "(every output is then flagged resolution_mismatch = 1)")


def model_inputs(curtain: Curtain, n_channels: int, state: TrackState | None,
                 normalization: dict[str, Any] | None, heights_agl: np.ndarray | None = None) -> np.ndarray:
    """The normalized model input curtain ``(C, H, P)`` float32, row 0 = surface.

    Channel 0 reflectivity (``dbz_to_norm``; no echo and unobserved rows -> -1); for 5-channel
    models channels 1-4 the state's t, q, u, v standardised with the training mean / std (q as relative
    humidity when the training dataset recorded that transform, :mod:`bzpipe.thermo`, at the standard
    pressure of each row's height above mean sea level: ``heights_agl`` + the profile's ground).  Profiles
    without a state borrow the nearest covered profile's state as context for their neighbours
    (:func:`bzpipe.infer.state.context_fill`); they are never filled by this model themselves.
    """
    refl = dbz_to_norm(np.where(curtain.observed, curtain.dbz, np.nan))          # (P, H)
    chans = [refl.T]
    if n_channels == 5:
        if state is None:
            raise ValueError("a 5-channel model needs the atmospheric state along the track")
        if not normalization:
            raise KeyError("model metadata has no ERA-5 normalization (mean/std)")
        fields = dict(context_fill(state.fields, state.covered))
        q_entry = normalization.get("q") if isinstance(normalization.get("q"), dict) else {}
        humidity = representation_of(q_entry)
        if humidity != "specific":
            if heights_agl is None:
                raise ValueError("a model trained on relative humidity needs the row heights to compute it")
            z_msl = (np.asarray(curtain.ground_m, np.float64)[:, None]
                     + np.asarray(heights_agl, np.float64)[None, :])
            fields["q"] = humidity_feature(fields["t"], fields["q"], z_msl, humidity).astype(np.float32)
        fields = normalize_era5(fields, normalization)
        chans += [np.nan_to_num(fields[v], nan=0.0).T for v in ERA5_VARIABLES]  # 0: only where never used
    elif n_channels != 1:
        raise ValueError(f"models take 1 or 5 channels, not {n_channels}")
    return np.ascontiguousarray(np.stack(chans).astype(np.float32))


def fill_status(valid: np.ndarray, needs_state: bool, covered: np.ndarray, out_of_domain: np.ndarray,
                fill_out_of_domain: bool, radar_only: bool) -> np.ndarray:
    """(P,) int8 ``fill_status`` (:data:`FILLED` ... :data:`INVALID`) from what each profile has."""
    blocked = (out_of_domain != 0) & (not fill_out_of_domain)
    stateless = needs_state & ~np.asarray(covered, bool)
    status = np.full(valid.shape, INVALID, np.int8)
    status[valid & blocked] = OUT_OF_DOMAIN
    status[valid & ~blocked & stateless] = FILLED_RADAR_ONLY if radar_only else NO_STATE
    main = valid & ~blocked & ~stateless
    status[main] = np.where(out_of_domain[main] != 0, FILLED_OUT_OF_DOMAIN, FILLED)
    return status


def _prediction(model: nn.Module, x: np.ndarray, cfg: InferConfig, width: int, hidden: np.ndarray,
                active: np.ndarray) -> dict[str, np.ndarray]:
    """MC-dropout prediction of the ``active`` profiles' hidden rows: dBZ ``mean`` (P, H), dB ``std``
    (P, H), dBZ ``quantiles`` (Q, P, H)."""
    device = next(model.parameters()).device if any(True for _ in model.parameters()) \
        else pick_device(cfg.device)
    pred = predict_curtain(model, x, width=width, overlap=min(cfg.window_overlap, width - 1),
                           blind_rows=hidden, n_passes=cfg.mc_passes, quantiles=cfg.quantiles,
                           batch_size=cfg.batch_size, device=device, generator_seed=cfg.seed, active=active,
                           mc_path=cfg.mc_path)
    return {"mean": norm_to_dbz(pred["mean"]).T, "std": (pred["std"] * DBZ_PER_NORM).T.astype(np.float32),
            "quantiles": np.stack([norm_to_dbz(q).T for q in pred["quantiles"]])}


def fill_granule(ds: xr.Dataset, model: nn.Module, meta: dict[str, Any], cfg: InferConfig, *,
                 aux: xr.Dataset | None = None, era5: xr.Dataset | Sequence[xr.Dataset] | None = None,
                 model_id: str = "", timings: dict[str, float] | None = None,
                 reflectivity: np.ndarray | None = None,
                 radar_only: tuple[nn.Module, dict[str, Any]] | None = None) -> xr.Dataset:
    """Fill the blind zone of a granule; returns the output Dataset (see :data:`OUTPUT_VARIABLES`).

    Args:
        ds: schema granule Dataset, dims (profile, bin), bin 0 = top.
        model, meta: the model and its checkpoint metadata (grid, patch width, channels,
            normalization, training domain and resolution).
        cfg: clutter depths, surface source, window overlap, MC passes, quantiles, state sources,
            domain and resolution switches.
        aux: the granule's ECMWF-AUX companion (:func:`bzpipe.sources.cloudsat.read_ecmwf_aux`),
            already checked to belong to it.
        era5: ERA-5 pressure-level Dataset(s) covering (parts of) the track.
        model_id: recorded in the attributes.
        timings: if given, seconds spent in ``regrid`` and ``inference`` are added to it.
        reflectivity: (P, B) dBZ to use instead of the granule's (e.g. geometry-only products).
        radar_only: a 1-channel model and its meta (same grid and patch width) for the profiles a
            5-channel model has no state for.

    Raises :class:`ResolutionMismatchError` for a KaZR-resolution model unless allowed.
    """
    timings = timings if timings is not None else {}
    settings = model_settings(meta)
    grid = ModelGrid(int(settings["n_heights"]), float(settings["top_m"]))
    width = int(settings["width"])
    depths = [cfg.blind_zone_m] + ([cfg.blind_zone_ocean_m] if cfg.blind_zone_ocean_m else [])
    check_blind_zone(max(depths), grid.n_heights, grid.top_m)   # refuse a blind zone taller than the grid
    mismatch = check_resolution(meta, cfg, model_id)
    if cfg.max_profiles is not None:
        ds = ds.isel(profile=slice(0, cfg.max_profiles))
        aux = aux.isel(profile=slice(0, cfg.max_profiles)) if aux is not None else None
        if reflectivity is not None:
            reflectivity = reflectivity[: cfg.max_profiles]
    if reflectivity is None and "reflectivity" not in ds:
        raise ValueError(f"{ds.attrs.get('source_file', 'granule')}: no reflectivity to fill")
    src = ds.attrs.get("source_file", "<granule>")

    t0 = time.perf_counter()
    curtain = to_model_grid(ds, grid, clutter_depth(ds, cfg.blind_zone_m, cfg.blind_zone_ocean_m),
                            cloud_mask_min=cfg.cloud_mask_min, dbz=reflectivity,
                            surface_from=cfg.surface_from)
    if not curtain.valid.any():
        raise EmptyDataError(src, "no profile has valid heights: nothing to fill")
    valid = curtain.valid
    state = track_state(ds, curtain.ground_m, valid, grid.centres(), cfg.atmosphere_sources, aux=aux,
                        era5=[era5] if isinstance(era5, xr.Dataset) else era5)
    domain = training_domain(cfg.domain_latitude_margin_deg, *model_records(meta))
    ood = np.where(valid, domain_flags(domain, state.fields["t"][:, 0], ds["latitude"].values),
                   0).astype(np.int8)
    n_ch = channels_of(meta)
    if radar_only is not None:
        if channels_of(radar_only[1]) != 1:
            raise ConfigError("infer.radar_only_run must name a 1-channel (3+_1) model")
        ro = model_settings(radar_only[1])
        if ((int(ro["n_heights"]), float(ro["top_m"]), int(ro["width"]))
                != (grid.n_heights, grid.top_m, width)):
            raise ConfigError("infer.radar_only_run was trained on another grid or patch width "
                              "than the model")
    status = fill_status(valid, n_ch == 5, state.covered, ood, cfg.fill_out_of_domain,
                         radar_only is not None and n_ch == 5)
    main = np.isin(status, (FILLED, FILLED_OUT_OF_DOMAIN))
    by_ro = status == FILLED_RADAR_ONLY
    x = model_inputs(curtain, n_ch, state, meta.get("normalization"), grid.centres())
    t1 = time.perf_counter()
    pred = _prediction(model, x, cfg, width, curtain.hidden_rows, main)
    if by_ro.any():
        assert radar_only is not None
        alt = _prediction(radar_only[0], x[:1], cfg, width, curtain.hidden_rows, by_ro)
        for k in pred:
            pred[k] = np.where(by_ro[:, None], alt[k], pred[k]) if k != "quantiles" \
                else np.where(by_ro[None, :, None], alt[k], pred[k])
    t2 = time.perf_counter()

    filled = main | by_ro
    grid_obs = np.where(curtain.observed, curtain.dbz, np.nan).astype(np.float32)  # (P, H) dBZ
    hidden = np.arange(grid.n_heights)[None, :] < curtain.hidden_rows[:, None]      # (P, H)
    predicted = hidden & filled[:, None]
    gap = hidden & ~filled[:, None]                 # hidden rows of unfilled profiles: no value
    mean_dbz = np.where(predicted, pred["mean"], np.where(gap, np.nan, grid_obs)).astype(np.float32)
    std_db = np.where(predicted, pred["std"], np.where(gap, np.nan, 0.0)).astype(np.float32)
    q_dbz = np.where(predicted[None], pred["quantiles"], np.where(gap[None], np.nan, grid_obs[None]))

    # back to CloudSat's bins: only the flagged bins of filled profiles change, to the prediction alone
    refl_obs = ds["reflectivity"].values.astype(np.float32) if reflectivity is None \
        else np.asarray(reflectivity, np.float32)
    blind = curtain.blind_bins
    filled_bins = blind & filled[:, None]
    back = to_cpr_bins(mean_dbz, grid, curtain)
    back_std = np.sqrt(to_cpr_bins(np.nan_to_num(std_db).astype(np.float64) ** 2, grid, curtain,
                                   linear_z=False))
    refl_filled = np.where(filled_bins, back, np.where(blind, np.nan, refl_obs)).astype(np.float32)
    refl_std = np.where(filled_bins, back_std, np.nan).astype(np.float32)
    t3 = time.perf_counter()
    timings["regrid"] = timings.get("regrid", 0.0) + (t1 - t0) + (t3 - t2)
    timings["inference"] = timings.get("inference", 0.0) + (t2 - t1)

    pv, pb, ph = ("profile",), ("profile", "bin"), ("profile", "height")
    out = xr.Dataset(
        {
            "reflectivity_observed": (pb, refl_obs), "reflectivity_filled": (pb, refl_filled),
            "reflectivity_std": (pb, refl_std), "filled_flag": (pb, filled_bins.astype(np.int8)),
            "blind_zone_flag": (pb, blind.astype(np.int8)),
            "cpr_height": (pb, ds["height"].values.astype(np.float32)),
            "grid_observed": (ph, grid_obs), "mc_mean": (ph, mean_dbz), "mc_std": (ph, std_db),
            "mc_quantiles": (("quantile", "profile", "height"), q_dbz.astype(np.float32)),
            "grid_filled_flag": (ph, predicted.astype(np.int8)),
            "time": (pv, ds["time"].values),
            "latitude": (pv, ds["latitude"].values.astype(np.float32)),
            "longitude": (pv, ds["longitude"].values.astype(np.float32)),
            "ground_height": (pv, curtain.ground_m.astype(np.float32)),
            "surface_bin": (pv, curtain.surface_bin.astype(np.int16)),
            "surface_source": (pv, curtain.surface_source),
            "clutter_depth": (pv, curtain.clutter_depth_m.astype(np.float32)),
            "hidden_rows": (pv, curtain.hidden_rows.astype(np.int16)),
            "profile_valid": (pv, valid.astype(np.int8)),
            "atmosphere_source": (pv, state.source),
            "surface_air_temperature": (pv, state.fields["t"][:, 0].astype(np.float32)),
            "out_of_domain": (pv, ood), "fill_status": (pv, status),
            "resolution_mismatch": ((), np.int8(mismatch)),
        },
        coords={"profile": np.arange(ds.sizes["profile"]), "bin": np.arange(ds.sizes["bin"]),
                "height": ("height", grid.centres()),
                "quantile": ("quantile", np.asarray(cfg.quantiles, np.float64))},
        attrs={"granule_id": ds.attrs.get("granule_id", ""), "model_id": model_id,
               "source_product": ds.attrs.get("product", ""), "release": ds.attrs.get("release", ""),
               "blind_zone_m": float(cfg.blind_zone_m),
               "blind_zone_ocean_m": float(cfg.blind_zone_ocean_m or cfg.blind_zone_m),
               "blind_zone_rows_max": int(curtain.hidden_rows.max(initial=0)),
               "surface_from": cfg.surface_from,
               "window_width": width, "window_overlap": int(min(cfg.window_overlap, width - 1)),
               "mc_passes": int(cfg.mc_passes), "model_grid_dz_m": grid.dz_m,
               "n_valid_profiles": int(valid.sum()),
               "n_filled_profiles": int(filled.sum()), "atmosphere_sources": " ".join(cfg.atmosphere_sources),
               "training_domain": json.dumps(domain.to_dict()), "model_channels": int(n_ch),
               "model_resolution": "kazr" if mismatch else "cpr",
               "resolution_note": (("model trained at KaZR resolution applied to CPR profiles "
                                    "(infer.allow_resolution_mismatch)") if mismatch
                                   else "CPR-resolution model")},
    )
    for name, doc in OUTPUT_VARIABLES.items():
        out[name].attrs["description"] = doc
    from bzpipe.provenance import code_version

    source = (f"CloudSat CPR {ds.attrs.get('product', '2B-GEOPROF')} {ds.attrs.get('release', '')} granule "
              f"{ds.attrs.get('granule_id', '')}; atmospheric state: "
              f"{aux.attrs.get('source_file', 'ECMWF-AUX') if aux is not None else 'no ECMWF-AUX'}"
              f"{', ERA-5' if era5 else ''}; model: UNet3+ {model_id} ({n_ch} channels)")
    return cf_decorate(out, granule_id=str(ds.attrs.get("granule_id", "")), model_id=model_id, source=source,
                       code_version=code_version())
