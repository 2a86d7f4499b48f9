"""A granule's reflectivity curtain on the model grid, and the way back to CloudSat's bins.

Surface (:func:`surface_geometry`): the surface bin is the product's own ``SurfaceHeightBin``
(2B-GEOPROF, from the 1B surface search) and the ground lies in it (the DEM elevation clamped to
the bin, the bin centre without a DEM); a granule without ``SurfaceHeightBin`` (or a profile where
it is missing) falls back to the DEM (sea level over ocean), with a logged warning.

Blind zone: the surface bin and the bins above it whose bottom lies less than the clutter depth
above ground (one depth over land, one over ocean) are flagged
(:func:`bzpipe.infer.geometry.blind_zone_bins`), and every model row that overlaps a flagged bin
is hidden from the model (:func:`bzpipe.infer.geometry.hidden_rows`, per profile): clutter never
reaches a row the model conditions on.

Forward (:func:`to_model_grid`): heights above ground are ``height - ground``; the 240 m CPR bins
are averaged in linear Z onto the model rows.  Bins entirely under ground and profiles without
valid heights carry no data.  Echo is reflectivity where the CPR cloud mask says "cloud" (>=
``cloud_mask_min``); elsewhere (noise, clear air) the bin is "no echo", as in the training data.

Backward (:func:`to_cpr_bins`): a field on the model rows is averaged (linear Z) over each CPR bin's
above-ground part; for a flagged bin every such row is a hidden (predicted) row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import xarray as xr

from bzpipe.infer.geometry import (
    ModelGrid,
    agl_edges_ascending,
    blind_zone_bins,
    ground_in_bin,
    hidden_rows,
    surface_bin,
    surface_height,
    valid_profiles,
)
from bzpipe.infer.regrid import layer_average, regrid_dbz

log = logging.getLogger(__name__)

#: ``surface_source`` values
SURFACE_NONE, SURFACE_BIN, SURFACE_DEM = 0, 1, 2
OCEAN = 2   #: Navigation_land_sea_flag of ocean profiles


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
        blind_bins: (P, B) bool, clutter-flagged bins to fill.
        edges_agl: (P, B+1) CPR bin edges, m AGL, increasing (bin b is interval B-1-b).
        above_ground: (P, B) bool, bins with some part above the ground.
        hidden_rows: (P,) int, model rows hidden per profile (all rows overlapping flagged bins).
        surface_source: (P,) int8, 1 SurfaceHeightBin, 2 DEM, 0 none (invalid profile).
        clutter_depth_m: (P,) the clutter depth applied (land or ocean).
    """

    dbz: np.ndarray
    observed: np.ndarray
    valid: np.ndarray
    ground_m: np.ndarray
    surface_bin: np.ndarray
    blind_bins: np.ndarray
    edges_agl: np.ndarray
    above_ground: np.ndarray
    hidden_rows: np.ndarray
    surface_source: np.ndarray
    clutter_depth_m: np.ndarray


def echo_dbz(ds: xr.Dataset, cloud_mask_min: int | None = 20) -> np.ndarray:
    """(P, B) dBZ of significant echo; NaN where no echo (cloud mask below threshold or fill)."""
    dbz = ds["reflectivity"].values.astype(np.float32)
    if cloud_mask_min is not None and "cloud_mask" in ds:
        dbz = np.where(ds["cloud_mask"].values >= cloud_mask_min, dbz, np.nan)
    return dbz


def surface_geometry(ds: xr.Dataset, surface_from: str = "surface_height_bin"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ground m MSL, surface bin, source)`` per profile (module docstring); ``source`` 1 =
    ``SurfaceHeightBin``, 2 = DEM, 0 = invalid geometry.  Logs a warning naming the granule when
    ``SurfaceHeightBin`` is wanted but absent (or missing for some profiles)."""
    height = ds["height"].values.astype(np.float64)
    dem = ds["dem_elevation"].values.astype(np.float64) if "dem_elevation" in ds else None
    ground = surface_height(dem if dem is not None else np.zeros(height.shape[0]))
    sbin = surface_bin(height, ground)
    source = np.where(sbin >= 0, SURFACE_DEM, SURFACE_NONE).astype(np.int8)
    if surface_from != "surface_height_bin":
        return ground, sbin, source
    src = ds.attrs.get("source_file", "<granule>")
    if "surface_height_bin" not in ds:
        log.warning("%s has no SurfaceHeightBin: the surface bin comes from the DEM (DEM_elevation; sea "
                    "level over ocean) for every profile", src)
        return ground, sbin, source
    shb = ds["surface_height_bin"].values.astype(np.int64)
    g_bin = ground_in_bin(height, shb, dem)
    use = np.isfinite(g_bin)
    missing = valid_profiles(height) & ~use
    if missing.any():
        log.warning("%s: SurfaceHeightBin is missing for %d of %d profiles; they use the DEM", src,
                    int(missing.sum()), height.shape[0])
    ground = np.where(use, g_bin, ground)
    sbin = np.where(use, shb, sbin)
    source = np.where(use, SURFACE_BIN, source).astype(np.int8)
    return ground, sbin, source


def clutter_depth(ds: xr.Dataset, land_m: float, ocean_m: float | None) -> np.ndarray:
    """(P,) clutter depth: ``ocean_m`` over ocean (``land_sea_flag`` 2), ``land_m`` elsewhere."""
    n = ds.sizes["profile"]
    if ocean_m is None or "land_sea_flag" not in ds:
        return np.full(n, float(land_m))
    return np.where(ds["land_sea_flag"].values == OCEAN, float(ocean_m), float(land_m))


def to_model_grid(ds: xr.Dataset, grid: ModelGrid, blind_zone_m: float | np.ndarray, *,
                  cloud_mask_min: int | None = 20, min_coverage: float = 0.5,
                  dbz: np.ndarray | None = None, surface_from: str = "surface_height_bin") -> Curtain:
    """Regrid a granule (schema Dataset, dims (profile, bin)) onto the model rows.

    ``blind_zone_m`` is the clutter depth, one or one per profile (:func:`clutter_depth`);
    ``dbz`` (P, B) overrides the granule's reflectivity (default :func:`echo_dbz`).
    """
    height = ds["height"].values.astype(np.float64)
    ground, sbin, source = surface_geometry(ds, surface_from)
    valid = valid_profiles(height) & (sbin >= 0)
    if dbz is None:
        dbz = echo_dbz(ds, cloud_mask_min)
    edges = agl_edges_ascending(height, ground)                      # (P, B+1), m AGL, increasing
    # a bin carries data if its profile is valid and its top edge is above ground
    above = np.zeros(height.shape, bool)
    above[valid] = edges[valid, 1:][:, ::-1] > 0.0                   # granule bin order
    valid_asc = above[:, ::-1]
    out, observed = regrid_dbz(np.asarray(dbz, np.float64)[:, ::-1], edges, grid.edges(),
                               valid=valid_asc, min_coverage=min_coverage)
    depth = np.broadcast_to(np.asarray(blind_zone_m, np.float64), (height.shape[0],)).copy()
    blind = blind_zone_bins(height, ground, depth, surface_bin_index=np.where(valid, sbin, -1))
    return Curtain(dbz=out, observed=observed & valid[:, None], valid=valid, ground_m=ground,
                   surface_bin=np.where(valid, sbin, -1), blind_bins=blind, edges_agl=edges,
                   above_ground=above, hidden_rows=np.where(valid, hidden_rows(grid, edges, blind), 0),
                   surface_source=np.where(valid, source, SURFACE_NONE).astype(np.int8),
                   clutter_depth_m=depth)


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
