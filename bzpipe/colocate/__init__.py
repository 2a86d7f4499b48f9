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
chunked along time (``chunk_bins``), computed when written.  The grid is
:mod:`~bzpipe.colocate.grid`, the radar :mod:`~bzpipe.colocate.radar`, ERA-5
:mod:`~bzpipe.colocate.era5`; the surface temperature and :func:`colocate` are here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import numpy as np
import xarray as xr

from bzpipe.colocate.era5 import era5_on_heights, era5_period, era5_to_grid, level_heights, site_column
from bzpipe.colocate.grid import (
    CHUNK_BINS,
    bin_centres,
    height_centres,
    height_edges,
    interp_time,
    time_grid,
)
from bzpipe.colocate.radar import echo_fraction, height_weights, regrid_radar
from bzpipe.config import GridConfig, Site

__all__ = ["CHUNK_BINS", "SOURCE_ERA5", "SOURCE_MET", "SOURCE_NONE", "bin_centres", "colocate",
           "echo_fraction", "era5_on_heights", "era5_period", "era5_to_grid", "height_centres",
           "height_edges", "height_weights", "interp_time", "level_heights", "regrid_radar", "site_column",
           "surface_temperature", "time_grid"]

#: ``surface_temperature_source`` flag values.
SOURCE_NONE, SOURCE_MET, SOURCE_ERA5 = 0, 1, 2

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
    era5 = era5_period(era5, start, end, era5_max_gap_s)       # the day's hours of a month's file
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
