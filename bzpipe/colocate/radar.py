"""Radar reflectivity on the colocation grid: linear-Z means over every gate and profile of a cell
(:mod:`bzpipe.colocate`)."""

from __future__ import annotations

from datetime import datetime

import dask.array as da
import numpy as np
import xarray as xr

from bzpipe.colocate.grid import CHUNK_BINS, grid_coords, height_edges, step_ns, time_grid
from bzpipe.config import GridConfig


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
    step = step_ns(grid.time_step_s)
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
        coords=grid_coords(grid_times, grid))
    return ds


def _delayed_block(sub, sub_bins, n, w, row_counts):  # type: ignore[no-untyped-def]
    import dask

    return dask.delayed(_regrid_block, pure=True)(sub, sub_bins, n, w, row_counts)


def echo_fraction(ds: xr.Dataset) -> xr.DataArray:
    """Fraction of the measured rows with echo, per time bin (NaN in gaps): the column echo series."""
    measured = ds["n_gates"] > 0
    echo = ds["reflectivity"].notnull() & measured
    frac = echo.sum("height") / max(int(measured.sum()), 1)
    frac = frac.where(ds["n_profiles"] > 0).astype(np.float32)
    frac.attrs = {"long_name": "fraction of measured rows with radar echo", "units": "1"}
    return frac
