"""ERA-5 along a CloudSat track, on the model's height grid above ground.

Input is an ERA-5 pressure-level Dataset as :func:`bzpipe.sources.era5.read_era5`
returns it (dims ``(time, pressure_level, latitude, longitude)``, variables
``t``, ``q``, ``u``, ``v`` and geopotential ``z`` in m2 s-2).  Each profile takes
the nearest ERA-5 grid column; at each of the two bracketing ERA-5 hours the
column's levels are placed at their geopotential height minus the profile's
ground height and interpolated linearly to the model rows (constant beyond the
lowest / highest level), then the two hours are interpolated linearly to the
profile time - the order :mod:`bzpipe.colocate` uses for the training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from bzpipe.errors import MissingVariableError
from bzpipe.infer.regrid import apply_index, interp_index
from bzpipe.schema import ERA5_VARIABLES, G0


def _dim(ds: xr.Dataset, *names: str) -> str:
    for n in names:
        if n in ds.dims or n in ds.coords:
            return n
    raise MissingVariableError(ds.attrs.get("source_file", "<ERA-5 dataset>"),
                               f"no {names[0]} dimension (looked for {list(names)})")


def _nearest_index(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest grid value for each value; grid 1-D, any monotonic order."""
    order = np.argsort(grid)
    g = grid[order]
    i = np.clip(np.searchsorted(g, values), 1, len(g) - 1) if len(g) > 1 else np.zeros(len(values), int)
    if len(g) > 1:
        i = np.where(np.abs(values - g[i - 1]) <= np.abs(values - g[i]), i - 1, i)
    return order[i]


def standard_height(pressure_hpa: np.ndarray) -> np.ndarray:
    """ICAO standard-atmosphere height of a pressure, m (fallback when ``z`` is absent)."""
    return 44330.8 * (1.0 - (np.asarray(pressure_hpa, dtype=np.float64) / 1013.25) ** 0.190263)


def colocate_track(era5: xr.Dataset, time: np.ndarray, latitude: np.ndarray, longitude: np.ndarray,
                   surface_m: np.ndarray, heights_agl: np.ndarray,
                   variables: Sequence[str] = ERA5_VARIABLES) -> dict[str, np.ndarray]:
    """ERA-5 variables at each profile on the model rows.

    Args:
        era5: pressure-level ERA-5 Dataset (see module docstring).
        time: (P,) datetime64 profile times; latitude, longitude: (P,) degrees.
        surface_m: (P,) ground height, m MSL.
        heights_agl: (H,) model row centres, m above ground.
        variables: names to colocate (default t, q, u, v).

    Returns:
        ``{name: (P, H) float32}`` in the units of the file (K, kg kg-1, m s-1).
    """
    src = era5.attrs.get("source_file", "<ERA-5 dataset>")
    missing = [v for v in variables if v not in era5]
    if missing:
        raise MissingVariableError(src, f"ERA-5 lacks {missing} needed by a 5-channel model")
    tdim = _dim(era5, "time", "valid_time")
    pdim = _dim(era5, "pressure_level", "level", "isobaricInhPa")
    ydim = _dim(era5, "latitude", "lat")
    xdim = _dim(era5, "longitude", "lon")
    order = (tdim, pdim, ydim, xdim)

    t_grid = era5[tdim].values.astype("datetime64[ns]").astype(np.int64).astype(np.float64)
    t_prof = np.asarray(time).astype("datetime64[ns]").astype(np.int64).astype(np.float64)
    # bracketing ERA-5 times and the linear weight of the later one (constant outside the period)
    t_order = np.argsort(t_grid)
    tg = t_grid[t_order]
    if tg.size > 1:
        k = np.clip(np.searchsorted(tg, t_prof, side="right") - 1, 0, tg.size - 2)
        wt = np.clip((t_prof - tg[k]) / np.maximum(tg[k + 1] - tg[k], 1.0), 0.0, 1.0)
        t0, t1 = t_order[k], t_order[k + 1]
    else:
        t0 = t1 = np.zeros(t_prof.size, np.int64)
        wt = np.zeros(t_prof.size)
    yi = _nearest_index(era5[ydim].values.astype(np.float64), np.asarray(latitude, np.float64))
    lon_grid = np.asarray(era5[xdim].values, np.float64)
    lon = np.asarray(longitude, np.float64)
    # longitudes on the grid's convention (0-360 or -180-180), then nearest with wrap-around
    lon = np.where(lon_grid.max() > 180, lon % 360.0, ((lon + 180.0) % 360.0) - 180.0)
    if len(lon_grid) * len(lon) < 5e7:
        d = np.abs(lon[:, None] - lon_grid[None, :])
        xi = np.argmin(np.minimum(d, 360.0 - d), axis=1)
    else:
        xi = _nearest_index(lon_grid, lon)
    plev = np.asarray(era5[pdim].values, np.float64)
    arrays = {name: era5[name].transpose(*order).values
              for name in {*variables, *(["z"] if "z" in era5 else [])}}
    surface = np.asarray(surface_m, np.float64)[:, None]
    target = np.asarray(heights_agl, np.float64)

    def at_times(ti: np.ndarray) -> dict[str, np.ndarray]:
        # unique columns (many profiles share one ERA-5 cell and hour)
        uniq, inverse = np.unique(np.stack([ti, yi, xi], axis=1), axis=0, return_inverse=True)
        inverse = inverse.ravel()

        def columns(name: str) -> np.ndarray:           # (U, L)
            return np.asarray(arrays[name][uniq[:, 0], :, uniq[:, 1], uniq[:, 2]], dtype=np.float64)

        if "z" in arrays:
            z_msl = columns("z") / G0
        else:
            z_msl = np.broadcast_to(standard_height(plev), (len(uniq), len(plev)))
        # per profile: level heights above that profile's ground, increasing
        h_lev = z_msl[inverse] - surface
        up = np.argsort(h_lev[0]) if h_lev.shape[0] else np.arange(len(plev))
        k, t = interp_index(target, h_lev[:, up])
        return {name: apply_index(k, t, columns(name)[inverse][:, up]) for name in variables}

    a = at_times(t0)
    b = at_times(t1) if np.any(wt > 0) else a
    w = wt[:, None]
    return {name: ((1.0 - w) * a[name] + w * b[name]).astype(np.float32) for name in variables}


def normalize_era5(fields: dict[str, np.ndarray], normalization: dict[str, Any]) -> dict[str, np.ndarray]:
    """Standardise colocated ERA-5 with the training split's mean / std.

    Accepts the layouts a dataset's ``normalization`` attribute may take:
    ``{"t": {"mean": .., "std": ..}, ...}``, ``{"era5": {"t": {...}}}`` or
    ``{"mean": {"t": ..}, "std": {"t": ..}}``.
    """
    def stats(name: str) -> tuple[float, float]:
        for d in (normalization, normalization.get("era5", {}) if isinstance(normalization, dict) else {}):
            if isinstance(d, dict) and isinstance(d.get(name), dict) and "mean" in d[name]:
                return float(d[name]["mean"]), float(d[name]["std"])
        if isinstance(normalization.get("mean"), dict) and name in normalization["mean"]:
            return float(normalization["mean"][name]), float(normalization["std"][name])
        raise KeyError(f"normalization has no mean/std for ERA-5 variable {name!r}")

    out = {}
    for name, a in fields.items():
        m, s = stats(name)
        out[name] = ((a - m) / (s if s > 0 else 1.0)).astype(np.float32)
    return out


def coverage(era5: xr.Dataset, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """(P,) bool: the profile lies inside the ERA-5 grid (within half a grid step of its edge cells)."""
    lat_g = np.asarray(era5[_dim(era5, "latitude", "lat")].values, np.float64)
    lon_g = np.asarray(era5[_dim(era5, "longitude", "lon")].values, np.float64)
    lat = np.asarray(latitude, np.float64)
    lon = np.asarray(longitude, np.float64)

    def half_step(g: np.ndarray) -> float:
        return 0.5 * float(np.min(np.abs(np.diff(np.sort(g))))) if g.size > 1 else 0.5

    ok = (lat >= lat_g.min() - half_step(lat_g)) & (lat <= lat_g.max() + half_step(lat_g))
    if lon_g.max() - lon_g.min() + 2 * half_step(lon_g) >= 360.0 - 1e-6:
        return ok & np.isfinite(lon)
    lon = np.where(lon_g.max() > 180, lon % 360.0, ((lon + 180.0) % 360.0) - 180.0)
    lo, hi = lon_g.min() - half_step(lon_g), lon_g.max() + half_step(lon_g)
    return ok & (lon >= lo) & (lon <= hi)


def colocate_many(era5s: Sequence[xr.Dataset], time: np.ndarray, latitude: np.ndarray,
                  longitude: np.ndarray, surface_m: np.ndarray, heights_agl: np.ndarray,
                  variables: Sequence[str] = ERA5_VARIABLES) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Colocate along the track from several ERA-5 boxes (e.g. one per site).

    Each profile takes the first Dataset whose grid covers it (:func:`coverage`) and
    whose time range (padded by one time step) holds the profile time.

    Returns:
        ``({name: (P, H) float32, NaN where uncovered}, covered (P,) bool)``.
    """
    p = len(np.asarray(latitude))
    out = {v: np.full((p, len(heights_agl)), np.nan, np.float32) for v in variables}
    covered = np.zeros(p, bool)
    t_prof = np.asarray(time).astype("datetime64[ns]")
    for ds in era5s:
        tdim = _dim(ds, "time", "valid_time")
        tg = np.sort(ds[tdim].values.astype("datetime64[ns]"))
        step = (tg[1:] - tg[:-1]).max() if tg.size > 1 else np.timedelta64(3600, "s")
        in_time = (t_prof >= tg[0] - step) & (t_prof <= tg[-1] + step)
        idx = np.flatnonzero(~covered & in_time & coverage(ds, latitude, longitude))
        if idx.size == 0:
            continue
        fields = colocate_track(ds, t_prof[idx], np.asarray(latitude)[idx], np.asarray(longitude)[idx],
                                np.asarray(surface_m)[idx], heights_agl, variables)
        for v in variables:
            out[v][idx] = fields[v]
        covered[idx] = True
    return out, covered


def track_boxes(latitude: np.ndarray, longitude: np.ndarray, time: np.ndarray, need: np.ndarray, *,
                max_span_deg: float = 10.0, margin_deg: float = 0.5) -> list[dict[str, Any]]:
    """ERA-5 boxes along a track for the profiles in ``need``: ``[{"area": [N, W, S, E], "days":
    [YYYY-MM-DD], "hours": [..], "profiles": (first, last)}]`` (0.25-degree grid edges).

    The track is cut into runs of needed profiles whose box (plus ``margin_deg``) stays within
    ``max_span_deg`` in latitude and longitude, within one UTC month, and does not cross the
    date line; each run's hours are the hours bracketing its profile times.
    """
    lat = np.asarray(latitude, np.float64)
    lon = ((np.asarray(longitude, np.float64) + 180.0) % 360.0) - 180.0
    t = np.asarray(time).astype("datetime64[s]")
    idx = np.flatnonzero(np.asarray(need, bool) & np.isfinite(lat) & np.isfinite(lon))
    runs: list[list[int]] = []
    for i in idx:
        run = runs[-1] if runs else None
        if run is not None and i == run[-1] + 1:
            la, lo = lat[run[0]:i + 1], lon[run[0]:i + 1]
            same_month = t[run[0]].astype("datetime64[M]") == t[i].astype("datetime64[M]")
            if (np.ptp(la) + 2 * margin_deg <= max_span_deg and np.ptp(lo) + 2 * margin_deg <= max_span_deg
                    and abs(lon[i] - lon[i - 1]) < 180.0 and same_month):
                run.append(i)
                continue
        runs.append([i])
    boxes = []
    for run in runs:
        la, lo, tt = lat[run[0]:run[-1] + 1], lon[run[0]:run[-1] + 1], t[run[0]:run[-1] + 1]
        north = min(90.0, np.ceil((la.max() + margin_deg) / 0.25) * 0.25)
        south = max(-90.0, np.floor((la.min() - margin_deg) / 0.25) * 0.25)
        west = max(-180.0, np.floor((lo.min() - margin_deg) / 0.25) * 0.25)
        east = min(180.0, np.ceil((lo.max() + margin_deg) / 0.25) * 0.25)
        h0 = tt.min().astype("datetime64[h]")
        h1 = tt.max().astype("datetime64[h]") + np.timedelta64(1, "h")
        hours = np.arange(h0, h1 + np.timedelta64(1, "h"), np.timedelta64(1, "h"))
        hours = hours[hours.astype("datetime64[M]") == h0.astype("datetime64[M]")]
        boxes.append({"area": [float(north), float(west), float(south), float(east)],
                      "days": sorted({str(h.astype("datetime64[D]")) for h in hours}),
                      "hours": sorted({int(str(h)[11:13]) for h in hours}),
                      "profiles": (int(run[0]), int(run[-1]))})
    return boxes
