"""Colocation: radar and ERA-5 on one fixed (time, height) grid per site.

The grid (:class:`bzpipe.config.GridConfig`) has ``n_heights`` rows of
``dz = top_m / n_heights`` metres from the ground up (row ``i`` spans
``[i dz, (i + 1) dz)``, coordinate ``height`` = row centre, m above ground) and
a fixed time step (bin ``k`` spans ``[t_k, t_k + step)``, coordinate ``time`` =
``t_k``; the grid is anchored at multiples of the step since 1970-01-01 so
days concatenate seamlessly).

* Radar reflectivity is averaged in *linear* Z (mm6 m-3) over every gate and
  profile that falls in a cell.  A gate that exists but holds NaN (no echo)
  counts as Z = 0; a row with no gates at all (below the first gate, above the
  last) and a time bin with no profile are *not measured*: NaN, with
  ``n_gates == 0`` / ``n_profiles == 0``.  Time gaps are kept as gaps, never
  interpolated across.
* ERA-5 is taken at the site column (nearest grid point or bilinear),
  interpolated linearly in height (geopotential ``z / g0`` minus the site
  elevation; held constant beyond the lowest / highest level) at each ERA-5
  hour, then linearly in time to the centre of each time bin (never
  extrapolated in time, nor bridged over gaps longer than ``max_gap_s``).
  An IFS model-level column (dims ``time, level`` with ``height`` m above
  ground) is used as is.
* The surface temperature (degC) comes from ARM met, linearly interpolated to
  the bin centres, falling back to ERA-5 at the lowest grid row.

All functions take and return xarray objects; large outputs are dask arrays
chunked along time (``chunk_bins``), computed when written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from bzpipe.config import GridConfig, Site
from bzpipe.errors import InputFileError
from bzpipe.schema import ERA5_VARIABLES, G0

#: ``surface_temperature_source`` flag values.
SOURCE_NONE, SOURCE_MET, SOURCE_ERA5 = 0, 1, 2

CHUNK_BINS = 3600


# --------------------------------------------------------------------------- grids


def height_edges(grid: GridConfig) -> np.ndarray:
    """Row edges, m above ground, shape ``(n_heights + 1,)``."""
    return np.arange(grid.n_heights + 1, dtype=np.float64) * grid.dz_m


def height_centres(grid: GridConfig) -> np.ndarray:
    """Row centres, m above ground, shape ``(n_heights,)``."""
    return (np.arange(grid.n_heights, dtype=np.float64) + 0.5) * grid.dz_m


def _step_ns(step_s: float) -> int:
    return int(round(step_s * 1e9))


def time_grid(start: datetime | np.datetime64 | str, end: datetime | np.datetime64 | str,
              step_s: float) -> np.ndarray:
    """Bin starts ``t_k`` (datetime64[ns]) covering ``[start, end)``, anchored at multiples of the step."""
    step = _step_ns(step_s)
    t0 = _to_ns(start)
    t1 = _to_ns(end)
    first = -(-t0 // step) * step  # ceil: the first bin fully after start
    if first >= t1:
        return np.array([], dtype="datetime64[ns]")
    return np.arange(first, t1, step, dtype=np.int64).astype("datetime64[ns]")


def _to_ns(t: datetime | np.datetime64 | str) -> int:
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.as_unit("ns").value)


# --------------------------------------------------------------------------- radar


def height_weights(gate_heights: np.ndarray, grid: GridConfig) -> tuple[np.ndarray, np.ndarray]:
    """Averaging matrix ``W (n_gates, n_heights)`` (columns sum to 1 or 0) and gates per row."""
    edges = height_edges(grid)
    row = np.searchsorted(edges, np.asarray(gate_heights, dtype=np.float64), side="right") - 1
    inside = (row >= 0) & (row < grid.n_heights)
    counts = np.bincount(row[inside], minlength=grid.n_heights).astype(np.int32)
    w = np.zeros((len(gate_heights), grid.n_heights), dtype=np.float64)
    w[np.flatnonzero(inside), row[inside]] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(counts > 0, w / np.maximum(counts, 1), 0.0)
    return w, counts


def _bin_profiles(lin_rows: np.ndarray, bins: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``(n_profiles, R)`` rows into ``n_bins`` time bins -> (sums ``(n_bins, R)``, counts)."""
    sums = np.zeros((n_bins, lin_rows.shape[1]), dtype=np.float64)
    counts = np.bincount(bins, minlength=n_bins)
    if bins.size:
        if np.all(np.diff(bins) >= 0):  # sorted (the usual case): one reduceat
            starts = np.flatnonzero(np.r_[True, np.diff(bins) > 0])
            sums[bins[starts]] = np.add.reduceat(lin_rows, starts, axis=0)
        else:
            np.add.at(sums, bins, lin_rows)
    return sums, counts


def _regrid_block(dbz: np.ndarray, bins: np.ndarray, n_bins: int, w: np.ndarray,
                  row_counts: np.ndarray) -> np.ndarray:
    """One time block: dBZ ``(n_profiles, n_gates)`` -> dBZ ``(n_bins, n_heights)`` (see module doc)."""
    dbz = np.asarray(dbz, dtype=np.float64)
    lin = np.where(np.isnan(dbz), 0.0, np.power(10.0, dbz / 10.0))
    rows = lin @ w  # (n_profiles, n_heights): mean linear Z over the gates of each row
    sums, counts = _bin_profiles(rows, bins, n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums / counts[:, None]
        out = 10.0 * np.log10(mean)  # mean == 0 (no echo anywhere in the cell) -> -inf
    out[~np.isfinite(out)] = np.nan
    out[:, row_counts == 0] = np.nan
    out[counts == 0, :] = np.nan
    return out.astype(np.float32)


def regrid_radar(radar: xr.Dataset, grid: GridConfig, start: datetime | np.datetime64 | str,
                 end: datetime | np.datetime64 | str, *, chunk_bins: int = CHUNK_BINS) -> xr.Dataset:
    """Average a radar curtain (schema: ``reflectivity`` dBZ on ``(time, height)``) onto the grid.

    Returns a Dataset on ``(time, height)`` with ``reflectivity`` (float32 dBZ,
    NaN = no echo or not measured), ``n_profiles`` (time, int32: profiles
    averaged in each bin, 0 = gap) and ``n_gates`` (height, int32: gates in each
    row, 0 = row not measured).  ``reflectivity`` is a dask array chunked by
    ``chunk_bins`` time bins; the input may be numpy- or dask-backed.  Profiles
    flagged ``profile_valid == False`` (radar outage) are left out: gaps.
    """
    if "reflectivity" not in radar:
        raise ValueError("radar dataset has no 'reflectivity' variable")
    refl = radar["reflectivity"].transpose("time", "height")
    grid_times = time_grid(start, end, grid.time_step_s)
    n_bins = len(grid_times)
    step = _step_ns(grid.time_step_s)
    t = refl["time"].values.astype("datetime64[ns]").astype(np.int64)
    order = np.argsort(t, kind="stable")
    if not np.all(order == np.arange(len(t))):
        refl = refl.isel(time=order)
        t = t[order]
    bins = np.full(t.shape, -1, dtype=np.int64)
    if n_bins:
        bins = (t - grid_times[0].astype(np.int64)) // step
    keep = (bins >= 0) & (bins < n_bins)
    if "profile_valid" in radar:  # radar outages: "no data", not clear sky -> left out (gaps)
        keep &= np.asarray(radar["profile_valid"].values, dtype=bool)[order]
    w, row_counts = height_weights(refl["height"].values, grid)

    kept = np.flatnonzero(keep)
    data = refl.data if isinstance(refl.data, da.Array) else refl.values
    blocks = []
    for b0 in range(0, n_bins, chunk_bins):
        b1 = min(b0 + chunk_bins, n_bins)
        sel = kept[(bins[kept] >= b0) & (bins[kept] < b1)]
        if len(sel):
            p0, p1 = int(sel[0]), int(sel[-1]) + 1  # profiles are sorted: a contiguous slice
            sub = data[p0:p1]
            sub_bins = bins[p0:p1] - b0
            ok = keep[p0:p1]
            if not ok.all():
                sub, sub_bins = sub[np.flatnonzero(ok)], sub_bins[ok]
        else:
            sub = np.zeros((0, len(w)), dtype=np.float32)
            sub_bins = np.zeros(0, dtype=np.int64)
        block = da.from_delayed(
            _delayed_block(sub, sub_bins, b1 - b0, w, row_counts),
            shape=(b1 - b0, grid.n_heights), dtype=np.float32)
        blocks.append(block)
    out = (da.concatenate(blocks, axis=0) if blocks
           else da.zeros((0, grid.n_heights), dtype=np.float32))
    n_prof = np.bincount(bins[keep], minlength=n_bins).astype(np.int32) if n_bins else np.zeros(0, np.int32)
    ds = xr.Dataset(
        {"reflectivity": (("time", "height"), out, {
            "long_name": "equivalent reflectivity factor, linear-Z mean over the grid cell",
            "units": "dBZ", "comment": "NaN where no echo was detected or the cell was not measured"}),
         "n_profiles": ("time", n_prof, {"long_name": "radar profiles averaged in the time bin",
                                          "units": "1"}),
         "n_gates": ("height", row_counts, {"long_name": "radar gates averaged in the height row",
                                            "units": "1"})},
        coords=_grid_coords(grid_times, grid))
    return ds


def _delayed_block(sub, sub_bins, n, w, row_counts):  # type: ignore[no-untyped-def]
    import dask

    return dask.delayed(_regrid_block, pure=True)(sub, sub_bins, n, w, row_counts)


def _grid_coords(times: np.ndarray, grid: GridConfig) -> dict[str, tuple]:
    return {
        "time": ("time", times, {"standard_name": "time", "long_name": "start of the averaging bin",
                                 "bin_length_s": grid.time_step_s}),
        "height": ("height", height_centres(grid), {
            "standard_name": "height", "long_name": "row centre height above ground level",
            "units": "m", "positive": "up", "axis": "Z", "row_depth_m": grid.dz_m}),
    }


def echo_fraction(ds: xr.Dataset) -> xr.DataArray:
    """Fraction of the measured rows with echo, per time bin (NaN in gaps): the column echo series."""
    measured = ds["n_gates"] > 0
    echo = ds["reflectivity"].notnull() & measured
    frac = echo.sum("height") / max(int(measured.sum()), 1)
    frac = frac.where(ds["n_profiles"] > 0).astype(np.float32)
    frac.attrs = {"long_name": "fraction of measured rows with radar echo", "units": "1"}
    return frac


# --------------------------------------------------------------------------- ERA-5


def _era5_error(era5: xr.Dataset, problem: str) -> Exception:
    src = era5.attrs.get("source_file")
    return InputFileError(src, problem) if src else ValueError(problem)


def site_column(era5: xr.Dataset, site: Site,
                method: Literal["nearest", "bilinear"] = "nearest") -> xr.Dataset:
    """The ERA-5 column at the site: dims ``(time, pressure_level)`` (or unchanged for a column)."""
    if "latitude" not in era5.dims or "longitude" not in era5.dims:
        return era5
    lon = site.longitude
    lons = era5["longitude"].values
    if lons.size and lons.max() > 180 and lon < 0:
        lon += 360.0
    elif lons.size and lons.min() < 0 and lon > 180:
        lon -= 360.0
    lats = era5["latitude"].values
    if method == "nearest":
        dlat = abs(lats[1] - lats[0]) if lats.size > 1 else 0.5
        dlon = abs(lons[1] - lons[0]) if lons.size > 1 else 0.5
        if (np.min(np.abs(lats - site.latitude)) > dlat or np.min(np.abs(lons - lon)) > dlon):
            raise _era5_error(era5, f"site {site.name} ({site.latitude}, {site.longitude}) "
                                    "is outside the ERA-5 box")
        col = era5.sel(latitude=site.latitude, longitude=lon, method="nearest")
    else:
        if not (lats.min() <= site.latitude <= lats.max() and lons.min() <= lon <= lons.max()):
            raise _era5_error(era5, f"site {site.name} ({site.latitude}, {site.longitude}) is outside "
                                    "the ERA-5 box: bilinear interpolation needs the 4 surrounding points")
        col = era5.interp(latitude=site.latitude, longitude=lon, method="linear")
    return col


def level_heights(column: xr.Dataset, site: Site) -> xr.DataArray:
    """Height above ground (m) of each level: ``z / g0 - elevation`` or an IFS ``height``."""
    if "pressure_level" in column.dims:
        if "z" not in column:
            raise _era5_error(column, "ERA-5 pressure-level data needs geopotential 'z' for the heights")
        h = column["z"] / G0 - site.elevation_m
        return h.transpose("time", "pressure_level")
    if "level" in column.dims and "height" in column:
        h = column["height"]
        if "time" not in h.dims:
            h = h.expand_dims(time=column["time"])
        return h.transpose("time", "level")
    raise _era5_error(column, "expected ERA-5 on pressure_level (with z) or an IFS column on "
                              f"level (with height); got dims {dict(column.sizes)}")


def _interp_heights(h: np.ndarray, v: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per time: ``v (T, L)`` at heights ``h (T, L)`` -> ``(T, len(target))``; held beyond the ends."""
    out = np.empty((h.shape[0], target.size), dtype=np.float64)
    for i in range(h.shape[0]):
        ok = np.isfinite(h[i]) & np.isfinite(v[i])
        if not ok.any():
            out[i] = np.nan
            continue
        o = np.argsort(h[i][ok])
        out[i] = np.interp(target, h[i][ok][o], v[i][ok][o])
    return out


def interp_time(src_times: np.ndarray, values: np.ndarray, dst_times: np.ndarray,
                max_gap_s: float) -> np.ndarray:
    """Linear interpolation in time, ``values (Ts, ...)`` -> ``(Td, ...)``.

    NaN outside ``[src_times[0], src_times[-1]]`` and between two source times
    more than ``max_gap_s`` apart (never extrapolated, gaps not bridged).
    """
    ts = np.asarray(src_times).astype("datetime64[ns]").astype(np.int64)
    td = np.asarray(dst_times).astype("datetime64[ns]").astype(np.int64)
    out = np.full((td.size,) + values.shape[1:], np.nan, dtype=np.float64)
    if ts.size == 0 or td.size == 0:
        return out
    j = np.searchsorted(ts, td, side="right") - 1
    exact_end = td == ts[-1]
    j = np.where(exact_end, ts.size - 1, j)
    inside = (j >= 0) & ((j < ts.size - 1) | exact_end)
    j0 = np.clip(j, 0, ts.size - 1)
    j1 = np.clip(j + 1, 0, ts.size - 1)
    span = (ts[j1] - ts[j0]).astype(np.float64)
    ok = inside & ((span <= max_gap_s * 1e9) | exact_end)
    with np.errstate(divide="ignore", invalid="ignore"):
        wt = np.where(span > 0, (td - ts[j0]) / np.where(span > 0, span, 1.0), 0.0)
    wt = wt.reshape((-1,) + (1,) * (values.ndim - 1))
    interp = (1.0 - wt) * values[j0] + wt * values[j1]
    out[ok] = interp[ok]
    return out


def era5_on_heights(era5: xr.Dataset, site: Site, grid: GridConfig,
                    columns: Literal["nearest", "bilinear"] = "nearest") -> xr.Dataset:
    """ERA-5 ``t q u v`` of the site column at the grid's row centres, per ERA-5 time ``(time, height)``.

    Linear in height above ground; held constant beyond the lowest / highest level.
    """
    missing = [v for v in ERA5_VARIABLES if v not in era5]
    if missing:
        raise _era5_error(era5, f"ERA-5 data lacks variables {missing}")
    col = site_column(era5, site, columns).sortby("time")
    heights = level_heights(col, site).values.astype(np.float64)
    target = height_centres(grid)
    lev_dim = "pressure_level" if "pressure_level" in col.dims else "level"
    out = {}
    for name in ERA5_VARIABLES:
        v = col[name].transpose("time", lev_dim).values.astype(np.float64)
        attrs = dict(col[name].attrs)
        attrs["comment"] = f"ERA-5 site column ({columns}), linear in height above ground and in time"
        out[name] = (("time", "height"), _interp_heights(heights, v, target), attrs)
    return xr.Dataset(out, coords={"time": col["time"].values, "height": target})


def bin_centres(times: np.ndarray, step_s: float) -> np.ndarray:
    """Centres of the time bins starting at ``times``."""
    return np.asarray(times).astype("datetime64[ns]") + np.timedelta64(_step_ns(step_s) // 2, "ns")


def era5_to_grid(era5: xr.Dataset, site: Site, grid: GridConfig, times: np.ndarray, *,
                 columns: Literal["nearest", "bilinear"] = "nearest",
                 max_gap_s: float = 3 * 3600.0, chunk_bins: int = CHUNK_BINS) -> xr.Dataset:
    """ERA-5 ``t q u v`` on the grid ``(time, height)`` at the centres of the time bins ``times``.

    Height first (per ERA-5 hour, :func:`era5_on_heights`), then linear in time
    (:func:`interp_time`: NaN outside the ERA-5 period and across gaps longer
    than ``max_gap_s``).  Variables are float32 dask arrays chunked by ``chunk_bins``.
    """
    on_h = era5_on_heights(era5, site, grid, columns)
    src_t = on_h["time"].values
    cent = da.from_array(bin_centres(times, grid.time_step_s), chunks=max(chunk_bins, 1))
    out = {}
    for name in ERA5_VARIABLES:
        vals = on_h[name].values
        arr = cent.map_blocks(lambda c, s=vals: interp_time(src_t, s, c, max_gap_s).astype(np.float32),
                              new_axis=1, chunks=(cent.chunks[0], (grid.n_heights,)), dtype=np.float32)
        out[name] = (("time", "height"), arr, on_h[name].attrs)
    return xr.Dataset(out, coords=_grid_coords(np.asarray(times), grid))


# --------------------------------------------------------------------------- surface temperature


def surface_temperature(times: np.ndarray, step_s: float, met: xr.Dataset | None,
                        era5_t_lowest: xr.DataArray | None, *, max_gap_s: float = 600.0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Surface temperature (degC) at the bin centres and its source flag per bin.

    Met ``temperature`` (degC on ``time``) is interpolated linearly where two
    samples within ``max_gap_s`` bracket the centre (or the nearest sample is
    within ``max_gap_s / 2`` at the ends); elsewhere the ERA-5 temperature of
    the lowest grid row (K -> degC) is used.  Returns ``(temp float32, source int8)``.
    """
    times = np.asarray(times).astype("datetime64[ns]")
    centres = bin_centres(times, step_s)
    temp = np.full(times.shape, np.nan, dtype=np.float64)
    src = np.full(times.shape, SOURCE_NONE, dtype=np.int8)
    if met is not None and "temperature" in met and met.sizes.get("time", 0):
        m = met["temperature"].sortby("time")
        mt = m["time"].values.astype("datetime64[ns]")
        mv = m.values.astype(np.float64)
        ok = np.isfinite(mv)
        mt, mv = mt[ok], mv[ok]
        if mt.size:
            temp = interp_time(mt, mv, centres, max_gap_s)
            # the ends: hold the nearest sample when it is close enough
            miss = np.isnan(temp)
            if miss.any():
                near = np.clip(np.searchsorted(mt, centres[miss]), 0, mt.size - 1)
                near_lo = np.clip(near - 1, 0, mt.size - 1)
                d_hi = np.abs((mt[near] - centres[miss]).astype(np.int64))
                d_lo = np.abs((mt[near_lo] - centres[miss]).astype(np.int64))
                best = np.where(d_lo < d_hi, near_lo, near)
                dist = np.minimum(d_lo, d_hi)
                fill = np.where(dist <= max_gap_s / 2 * 1e9, mv[best], np.nan)
                temp[miss] = fill
            src[np.isfinite(temp)] = SOURCE_MET
    if era5_t_lowest is not None:
        need = np.isnan(temp)
        if need.any():
            t_era = np.asarray(era5_t_lowest.values, dtype=np.float64) - 273.15
            temp[need] = t_era[need]
            src[need & np.isfinite(temp)] = SOURCE_ERA5
    return temp.astype(np.float32), src


# --------------------------------------------------------------------------- all together


def colocate(radar: xr.Dataset, era5: xr.Dataset, site: Site, grid: GridConfig,
             start: datetime | np.datetime64 | str, end: datetime | np.datetime64 | str, *,
             met: xr.Dataset | None = None, era5_columns: Literal["nearest", "bilinear"] = "nearest",
             met_max_gap_s: float = 600.0, era5_max_gap_s: float = 3 * 3600.0,
             chunk_bins: int = CHUNK_BINS) -> xr.Dataset:
    """Radar + ERA-5 + surface temperature of one site on the grid over ``[start, end)``.

    Dims ``(time, height)``: ``reflectivity`` dBZ, ``t q u v`` (ERA-5 units);
    per time: ``n_profiles``, ``era5_valid``, ``echo_fraction``,
    ``surface_temperature`` degC and ``surface_temperature_source``
    (0 none, 1 ARM met, 2 ERA-5); per height: ``n_gates``.  Lazy (dask) in the
    2-D variables.
    """
    rad = regrid_radar(radar, grid, start, end, chunk_bins=chunk_bins)
    times = rad["time"].values
    era = era5_to_grid(era5, site, grid, times, columns=era5_columns, max_gap_s=era5_max_gap_s,
                       chunk_bins=chunk_bins)
    ds = xr.merge([rad, era], compat="override", join="exact")
    # the lowest row's temperature, computed now (small) rather than from the lazy grid
    low = era5_on_heights(era5, site, grid, era5_columns)["t"].isel(height=0)
    t_low = interp_time(low["time"].values, low.values, bin_centres(times, grid.time_step_s), era5_max_gap_s)
    ds["era5_valid"] = (("time",), np.isfinite(t_low), {
        "long_name": "ERA-5 available (bracketed in time) for this bin"})
    ds["echo_fraction"] = echo_fraction(ds)
    temp, src = surface_temperature(times, grid.time_step_s, met,
                                    xr.DataArray(t_low, dims="time"), max_gap_s=met_max_gap_s)
    ds["surface_temperature"] = ("time", temp, {"long_name": "surface air temperature",
                                                "units": "degC"})
    ds["surface_temperature_source"] = ("time", src, {
        "long_name": "source of surface_temperature", "flag_values": [SOURCE_NONE, SOURCE_MET, SOURCE_ERA5],
        "flag_meanings": "none arm_met era5_lowest_row"})
    ds.attrs = {"site": site.name, "latitude": site.latitude, "longitude": site.longitude,
                "altitude": site.elevation_m, "time_step_s": grid.time_step_s,
                "radar_source": radar.attrs.get("source_file", ""),
                "era5_columns": era5_columns}
    return ds
