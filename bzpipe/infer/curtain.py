"""A granule's reflectivity curtain on the model grid, and the way back to CloudSat's bins.

Forward (:func:`to_model_grid`): heights above ground are ``height - ground`` (ground
= DEM elevation, sea level over ocean); the 240 m CPR bins are averaged in linear Z
onto the model rows.  Bins entirely under ground and profiles without valid heights
carry no data.  Echo is reflectivity where the CPR cloud mask says "cloud" (>=
``cloud_mask_min``); elsewhere (noise, clear air) the bin is "no echo", as in the
ground-radar training data.

Backward (:func:`to_cpr_bins`): a field on the model rows is averaged (linear Z) over
each CPR bin's above-ground part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from bzpipe.infer.geometry import (ModelGrid, agl_edges_ascending, blind_zone_bins, surface_bin,
                                   surface_height, valid_profiles)
from bzpipe.infer.regrid import layer_average, regrid_dbz


@dataclass
class Curtain:
    """One granule on the model grid (P profiles, H rows, B CPR bins).

    Attributes:
        dbz: (P, H) float32 dBZ on the model rows, row 0 at the surface; NaN = no echo
            or not observed.
        observed: (P, H) bool, the row was covered by valid CPR bins.
        valid: (P,) bool, the profile has valid geometry.
        ground_m: (P,) ground height, m MSL.
        surface_bin: (P,) int, index of the bin containing the ground (-1 if invalid).
        blind_bins: (P, B) bool, bins to fill (see :func:`bzpipe.infer.geometry.blind_zone_bins`).
        edges_agl: (P, B+1) CPR bin edges, m AGL, increasing (bin b is interval B-1-b).
        above_ground: (P, B) bool, bins with some part above the ground.
    """

    dbz: np.ndarray
    observed: np.ndarray
    valid: np.ndarray
    ground_m: np.ndarray
    surface_bin: np.ndarray
    blind_bins: np.ndarray
    edges_agl: np.ndarray
    above_ground: np.ndarray


def echo_dbz(ds: xr.Dataset, cloud_mask_min: int | None = 20) -> np.ndarray:
    """(P, B) dBZ of significant echo; NaN where no echo (cloud mask below threshold or fill)."""
    dbz = ds["reflectivity"].values.astype(np.float32)
    if cloud_mask_min is not None and "cloud_mask" in ds:
        dbz = np.where(ds["cloud_mask"].values >= cloud_mask_min, dbz, np.nan)
    return dbz


def to_model_grid(ds: xr.Dataset, grid: ModelGrid, blind_zone_m: float, *,
                  cloud_mask_min: int | None = 20, min_coverage: float = 0.5,
                  dbz: np.ndarray | None = None) -> Curtain:
    """Regrid a granule (schema Dataset, dims (profile, bin)) onto the model rows.

    ``dbz`` (P, B) overrides the granule's reflectivity (default :func:`echo_dbz`).
    """
    height = ds["height"].values.astype(np.float64)
    dem = ds["dem_elevation"].values if "dem_elevation" in ds else np.zeros(height.shape[0])
    ground = surface_height(dem)
    valid = valid_profiles(height)
    if dbz is None:
        dbz = echo_dbz(ds, cloud_mask_min)
    edges = agl_edges_ascending(height, ground)                      # (P, B+1), m AGL, increasing
    # a bin carries data if its profile is valid and its top edge is above ground
    above = np.zeros(height.shape, bool)
    above[valid] = edges[valid, 1:][:, ::-1] > 0.0                   # granule bin order
    valid_asc = above[:, ::-1]
    out, observed = regrid_dbz(np.asarray(dbz, np.float64)[:, ::-1], edges, grid.edges(),
                               valid=valid_asc, min_coverage=min_coverage)
    return Curtain(dbz=out, observed=observed & valid[:, None], valid=valid, ground_m=ground,
                   surface_bin=surface_bin(height, ground),
                   blind_bins=blind_zone_bins(height, ground, blind_zone_m),
                   edges_agl=edges, above_ground=above)


def to_cpr_bins(field: np.ndarray, grid: ModelGrid, curtain: Curtain, *, linear_z: bool = True,
                n_bins: int | None = None) -> np.ndarray:
    """Average a model-grid field (P, H), row 0 = surface, over CPR bins: (P, B), bin 0 = top.

    Only the surface bin and the ``n_bins - 1`` bins above it are computed (default: as
    many as the deepest blind zone has); the rest are NaN.  ``linear_z``: the field is dBZ
    (NaN = no echo) averaged as Z; otherwise it is averaged as is (e.g. a variance).  Bins
    with no part above ground or beyond the grid's top, and invalid profiles, are NaN.
    """
    f = np.asarray(field, np.float64)
    p, b = curtain.blind_bins.shape
    k = int(curtain.blind_bins.sum(axis=1).max()) if n_bins is None else int(n_bins)
    out = np.full((p, b), np.nan, np.float32)
    rows = np.flatnonzero(curtain.valid & (curtain.surface_bin >= 0))
    if k == 0 or rows.size == 0:
        return out
    sb = curtain.surface_bin[rows]
    # ascending interval of granule bin j is B-1-j: bins sb, sb-1, ... are consecutive intervals
    first = (b - 1 - sb)[:, None]
    eidx = np.clip(first + np.arange(k + 1)[None, :], 0, b)
    dst = np.take_along_axis(curtain.edges_agl[rows], eidx, 1)                # (R, k+1) m AGL
    if linear_z:
        vals, _ = regrid_dbz(f[rows], grid.edges(), dst, min_coverage=1e-6)
        _, cov = layer_average(np.ones((rows.size, grid.n_heights)), grid.edges(), dst)
    else:
        vals, cov = layer_average(f[rows], grid.edges(), dst)
    vals = np.where(cov > 0, vals, np.nan)
    bins = sb[:, None] - np.arange(k)[None, :]                                 # (R, k) granule bins
    ok = (bins >= 0) & (first + np.arange(k)[None, :] + 1 <= b)
    rr = np.broadcast_to(rows[:, None], bins.shape)
    out[rr[ok], bins[ok]] = vals[ok]
    return out
