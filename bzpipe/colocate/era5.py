"""ERA-5 on the colocation grid: the site column, linear in height above ground at each ERA-5 hour,
then linear in time to the bin centres (:mod:`bzpipe.colocate`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr

from bzpipe.colocate.grid import CHUNK_BINS, bin_centres, grid_coords, height_centres, interp_time, to_ns
from bzpipe.config import GridConfig, Site
from bzpipe.errors import InputFileError
from bzpipe.schema import ERA5_VARIABLES, G0


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


def era5_period(era5: xr.Dataset, start: datetime | np.datetime64 | str, end: datetime | np.datetime64 | str,
                max_gap_s: float) -> xr.Dataset:
    """The ERA-5 times within ``max_gap_s`` of ``[start, end)``, and the nearest one beyond on each side:
    every bin centre in the period interpolates from them exactly as from the whole file
    (:func:`interp_time` uses the two bracketing times, at most ``max_gap_s`` apart)."""
    t = np.sort(era5["time"].values.astype("datetime64[ns]"))
    gap = np.timedelta64(int(max_gap_s * 1e9), "ns")
    lo, hi = (np.datetime64(to_ns(x), "ns") for x in (start, end))
    i0 = max(int(np.searchsorted(t, lo - gap, side="left")) - 1, 0)
    i1 = min(int(np.searchsorted(t, hi + gap, side="right")) + 1, t.size)
    keep = (era5["time"].values >= t[i0]) & (era5["time"].values <= t[i1 - 1]) if t.size else None
    return era5 if keep is None or keep.all() else era5.isel(time=np.flatnonzero(keep))


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
    return xr.Dataset(out, coords=grid_coords(np.asarray(times), grid))
