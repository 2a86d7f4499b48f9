"""The forward operator in the dataset build, and the resolution record models and outputs carry.

:func:`cpr_resolution_day` is the build's hook (``build.forward_operator.enabled``): it turns one
colocated site-day (:func:`bzpipe.colocate.colocate`, dims ``(time, height)``) into CPR profiles
(:func:`bzpipe.forward.cpr.cpr_view`), so that a dataset column is one CPR profile and a patch of
128 columns spans what 128 CPR profiles span (141 km of air), whatever the wind.

The axis of such a day is along-track distance, not time: the k-th profile of the day is labelled
``time = t_day + k * time_step_s`` (``t_day`` the day's first grid time), so the plan, split and
writer work unchanged on a regular axis; ``time_observed`` keeps when its air passed over the site
(at ``reference_height_m``).  Distances restart each day, so consecutive days are not adjacent on
this axis; the first ``day_guard_km`` of every day is dropped (marked a gap) so that a split
boundary between two days still leaves that much air between them.

:func:`model_resolution` reads back whether a model was trained on such a dataset.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.colocate import echo_fraction, height_edges
from bzpipe.config import CprOperatorConfig, GridConfig
from bzpipe.errors import ConfigError
from bzpipe.forward.cpr import advected_distance, cpr_view
from bzpipe.schema import ERA5_VARIABLES

log = logging.getLogger("bzpipe.dataset")

#: what the resolution record says
KAZR, CPR = "kazr", "cpr"


def cpr_resolution_day(ds: xr.Dataset, op: CprOperatorConfig, grid: GridConfig, *, seed: int,
                       site: str) -> xr.Dataset:
    """One colocated site-day as CPR profiles on the same height rows (module docstring).

    Returns a Dataset with the variables of :func:`bzpipe.colocate.colocate` (``reflectivity``,
    ``t q u v``, ``n_profiles``, ``era5_valid``, ``echo_fraction``, ``surface_temperature``,
    ``surface_temperature_source``, ``n_gates``) plus ``time_observed``, on the along-track axis.
    Noise and bin phases are drawn from ``(seed, site, day)``, so a rebuild is identical.
    """
    step_s = grid.time_step_s
    if (86400.0 / step_s) % 1:
        raise ConfigError("build.forward_operator needs a grid.time_step_s that divides a day, "
                          f"not {step_s:g} s")
    ds = ds.load()
    times = ds["time"].values.astype("datetime64[ns]")
    n_t, n_h = ds.sizes["time"], ds.sizes["height"]
    if n_t == 0:
        return ds
    sec = times.astype(np.int64) / 1e9 + 0.5 * step_s               # bin centres
    edges = height_edges(grid)
    ref = int(np.clip(np.searchsorted(edges, op.reference_height_m, side="right") - 1, 0, n_h - 1))
    radar = np.asarray(ds["n_profiles"].values) > 0
    valid = radar[:, None] & (np.asarray(ds["n_gates"].values) > 0)[None, :]
    speed = np.hypot(ds["u"].values.astype(np.float64), ds["v"].values.astype(np.float64))
    x = advected_distance(sec, speed, min_speed_m_s=op.min_wind_m_s)
    k_max = int(min(n_t, np.floor(np.nanmax(x[:, ref]) / op.profile_spacing_m)))
    if k_max < int(np.floor(np.nanmax(x[:, ref]) / op.profile_spacing_m)):
        log.warning("%s %s: the day's air spans more CPR profiles than grid steps; the rest is dropped",
                    site, str(times[0])[:10])
    day = int(times[0].astype("datetime64[D]").astype(np.int64))
    rng = np.random.default_rng([int(seed), zlib.crc32(site.encode()), day])
    aux = {v: ds[v].values for v in ERA5_VARIABLES}
    aux.update(surface_temperature=ds["surface_temperature"].values, era5_valid=ds["era5_valid"].values,
               radar=radar.astype(np.float64))
    view = cpr_view(ds["reflectivity"].values, edges, x, rng=rng, valid=valid, aux=aux, n_profiles=k_max,
                    pulse_length_m=op.pulse_length_m, range_sampling_m=op.range_sampling_m,
                    profile_spacing_m=op.profile_spacing_m, ifov_m=op.ifov_m, mds_dbz=op.mds_dbz,
                    noise=op.noise, ka_to_w_conversion=op.ka_to_w, reference_row=ref)

    # per profile: KaZR columns in its footprint (at the reference height), when its air passed
    xr_ref = x[:, ref]
    k_of = np.floor(xr_ref / op.profile_spacing_m).astype(np.int64)
    inside = (k_of >= 0) & (k_of < k_max) & radar
    counts = np.bincount(k_of[inside], minlength=k_max).astype(np.int32)
    usable = (view.coverage[:, ref] >= 0.5) & (counts > 0) & (view.x_centre >= op.day_guard_km * 1000.0)
    counts = np.where(usable, counts, 0).astype(np.int32)
    observed_s = np.interp(view.x_centre, xr_ref, sec)
    src = np.asarray(ds["surface_temperature_source"].values)
    nearest = np.clip(np.searchsorted(xr_ref, view.x_centre), 0, n_t - 1)

    tau = times[0] + (np.arange(k_max) * round(step_s * 1e9)).astype("timedelta64[ns]")
    refl = np.where(view.observed & usable[:, None], view.dbz_grid, np.nan).astype(np.float32)
    out = xr.Dataset(
        {"reflectivity": (("time", "height"), refl, {
            **ds["reflectivity"].attrs, "long_name": "equivalent reflectivity factor as the CPR would "
            "measure it (bzpipe.forward.cpr), linear-Z mean over the grid cell"}),
         "n_profiles": ("time", counts, {"long_name": "KaZR profiles in the CPR footprint", "units": "1"}),
         "n_gates": ("height", ds["n_gates"].values, ds["n_gates"].attrs),
         "time_observed": ("time", (observed_s * 1e9).astype("int64").astype("datetime64[ns]"), {
             "long_name": f"when the profile's air passed over the site at {op.reference_height_m:g} m"}),
         "surface_temperature": ("time", view.aux["surface_temperature"].astype(np.float32),
                                 ds["surface_temperature"].attrs),
         "surface_temperature_source": ("time", src[nearest].astype(np.int8),
                                        ds["surface_temperature_source"].attrs),
         "era5_valid": ("time", (view.aux["era5_valid"] > 0.999) & np.isfinite(view.aux["t"][:, ref]),
                        ds["era5_valid"].attrs)},
        coords={"time": ("time", tau, {**ds["time"].attrs, "long_name": "along-track axis: first time of "
                                       "the day + k time steps for the k-th CPR profile of the day"}),
                "height": ds["height"]})
    for v in ERA5_VARIABLES:
        out[v] = (("time", "height"), view.aux[v].astype(np.float32), ds[v].attrs)
    out["echo_fraction"] = echo_fraction(out)
    out.attrs = {**ds.attrs, "forward_operator": json.dumps(op.model_dump(mode="json"), sort_keys=True),
                 "time_axis": "along_track"}
    return out


def resolution_record(op: CprOperatorConfig | dict[str, Any] | None) -> dict[str, Any]:
    """``{"resolution": "cpr" | "kazr", "operator": {...}}`` for a build's forward-operator setting."""
    d = op.model_dump(mode="json") if isinstance(op, CprOperatorConfig) else dict(op or {})
    return {"resolution": CPR if d.get("enabled") else KAZR, "operator": d}


def model_resolution(*metas: dict[str, Any]) -> dict[str, Any]:
    """The resolution record of a model from its checkpoint metadata (and, as fallback, the root
    attributes of its training dataset): ``meta["build"]["forward_operator"]`` as the training
    recorded it, else the dataset's build config.  A model whose records say nothing was trained
    before the operator existed: KaZR resolution."""
    for m in metas:
        for d in (m.get("build"), config_values(m.get("config"))):
            if isinstance(d, dict) and isinstance(d.get("forward_operator"), dict):
                return resolution_record(d["forward_operator"])
    return resolution_record(None)


def config_values(rec: Any) -> dict[str, Any] | None:
    """The ``values`` of a config record (a dict or its JSON), or the mapping itself."""
    if isinstance(rec, str):
        try:
            rec = json.loads(rec)
        except ValueError:
            return None
    if isinstance(rec, dict):
        return rec.get("values", rec)
    return None
