"""The colocation grid: row heights, time bins anchored at multiples of the step, and linear
interpolation in time that never extrapolates nor bridges gaps (:mod:`bzpipe.colocate`)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from bzpipe.config import GridConfig

CHUNK_BINS = 3600


def height_edges(grid: GridConfig) -> np.ndarray:
    """Row edges, m above ground, shape ``(n_heights + 1,)``."""
    return np.arange(grid.n_heights + 1, dtype=np.float64) * grid.dz_m


def height_centres(grid: GridConfig) -> np.ndarray:
    """Row centres, m above ground, shape ``(n_heights,)``."""
    return (np.arange(grid.n_heights, dtype=np.float64) + 0.5) * grid.dz_m


def step_ns(step_s: float) -> int:
    """The time step in integer nanoseconds."""
    return int(round(step_s * 1e9))


def time_grid(start: datetime | np.datetime64 | str, end: datetime | np.datetime64 | str,
              step_s: float) -> np.ndarray:
    """Bin starts ``t_k`` (datetime64[ns]) covering ``[start, end)``, anchored at multiples of the step."""
    step = step_ns(step_s)
    t0 = to_ns(start)
    t1 = to_ns(end)
    first = -(-t0 // step) * step  # ceil: the first bin fully after start
    if first >= t1:
        return np.array([], dtype="datetime64[ns]")
    return np.arange(first, t1, step, dtype=np.int64).astype("datetime64[ns]")


def to_ns(t: datetime | np.datetime64 | str) -> int:
    """A time as integer nanoseconds since 1970 (UTC; a time-zone-aware time is converted)."""
    ts = pd.Timestamp(t)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return int(ts.as_unit("ns").value)


def grid_coords(times: np.ndarray, grid: GridConfig) -> dict[str, tuple]:
    """CF coordinates ``time`` (bin starts) and ``height`` (row centres) of the grid."""
    return {
        "time": ("time", times, {"standard_name": "time", "long_name": "start of the averaging bin",
                                 "bin_length_s": grid.time_step_s}),
        "height": ("height", height_centres(grid), {
            "standard_name": "height", "long_name": "row centre height above ground level",
            "units": "m", "positive": "up", "axis": "Z", "row_depth_m": grid.dz_m}),
    }


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


def bin_centres(times: np.ndarray, step_s: float) -> np.ndarray:
    """Centres of the time bins starting at ``times``."""
    return np.asarray(times).astype("datetime64[ns]") + np.timedelta64(step_ns(step_s) // 2, "ns")
