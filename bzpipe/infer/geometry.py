"""CloudSat-CPR profile geometry: bin edges, surface bin, blind zone, the model's height grid.

Conventions (see :mod:`bzpipe.schema`): a granule has dims ``(profile, bin)`` with
``bin`` 0 at the top of the profile; ``height`` is the bin centre in m above mean
sea level.  The model grid has ``row`` 0 at the surface; its rows are
``dz = top_m / n_heights`` thick and row ``i`` spans ``[i*dz, (i+1)*dz)`` m above
ground level (AGL).

Everything here is vectorised over profiles (a granule has ~37,000).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: CloudSat's DEM_elevation fill value; it marks ocean (and missing) profiles -> sea level.
DEM_FILL = -9999.0


@dataclass(frozen=True)
class ModelGrid:
    """The model's regular height grid above ground.

    ``n_heights`` rows of ``dz_m = top_m / n_heights`` metres, row 0 at the surface.
    """

    n_heights: int
    top_m: float

    @property
    def dz_m(self) -> float:
        return self.top_m / self.n_heights

    def edges(self) -> np.ndarray:
        """Row edges, m AGL, shape (n_heights + 1,), increasing from 0 to ``top_m``."""
        return np.linspace(0.0, self.top_m, self.n_heights + 1)

    def centres(self) -> np.ndarray:
        """Row centres, m AGL, shape (n_heights,)."""
        e = self.edges()
        return 0.5 * (e[:-1] + e[1:])

    def blind_rows(self, blind_zone_m: float) -> int:
        """Rows needed to cover the lowest ``blind_zone_m`` metres (rows whose bottom lies below it)."""
        return int(min(self.n_heights, math.ceil(blind_zone_m / self.dz_m - 1e-9)))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelGrid:
        """The grid a model was trained on, from its checkpoint metadata (see :func:`grid_settings`)."""
        g = grid_settings(meta)
        return cls(n_heights=int(g["n_heights"]), top_m=float(g["top_m"]))


def grid_settings(*metas: dict[str, Any]) -> dict[str, Any]:
    """``n_heights``, ``top_m``, ``blind_zone_rows``, ``width`` (patch columns) and ``channels`` of a model.

    Looks through the given mappings in order (a checkpoint's metadata, then e.g. the
    root attributes of the dataset it was trained on): their top level, ``grid`` /
    ``patch`` sections, config records (``values``) and nested ``config`` /
    ``dataset`` sections; JSON strings are decoded.  Raises ``KeyError`` naming what
    is missing.
    """
    sources: list[dict[str, Any]] = []

    def add(d: Any, depth: int = 0) -> None:
        if isinstance(d, str) and d.lstrip().startswith("{"):
            try:
                d = json.loads(d)
            except ValueError:
                return
        if not isinstance(d, dict) or depth > 4:
            return
        sources.append(d)
        for k in ("grid", "patch"):
            if isinstance(d.get(k), dict):
                sources.append(d[k])
        for k in ("values", "config", "dataset", "attrs", "build"):
            add(d.get(k), depth + 1)

    for m in metas:
        add(m)

    def find(*names: str) -> Any:
        for s in sources:
            for n in names:
                if n in s and s[n] is not None and not isinstance(s[n], dict):
                    return s[n]
        return None

    out = {
        "n_heights": find("n_heights"),
        "top_m": find("top_m"),
        "blind_zone_rows": find("blind_zone_rows"),
        "width": find("width", "patch_width"),
        "channels": find("channels", "channel_set"),
    }
    missing = [k for k in ("n_heights", "top_m", "width") if out[k] is None]
    if missing:
        raise KeyError(f"model metadata lacks {missing}: cannot rebuild its height grid / patch width")
    return out


def surface_height(dem_elevation: np.ndarray) -> np.ndarray:
    """Ground height per profile, m MSL (P,): the DEM, with the fill (-9999, ocean) and NaN as 0 m."""
    dem = np.asarray(dem_elevation, dtype=np.float64)
    return np.where(np.isfinite(dem) & (dem > DEM_FILL + 1), dem, 0.0)


def bin_edges(height: np.ndarray) -> np.ndarray:
    """Bin edges of each profile, m MSL, shape (P, B+1), decreasing like the bins (edge 0 = top).

    Interior edges are midpoints of neighbouring bin centres; the outer edges are
    half a bin spacing beyond the first / last centre.  Profiles with any non-finite
    height get all-NaN edges.
    """
    h = np.asarray(height, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] < 2:
        raise ValueError(f"height must be (profile, bin) with >= 2 bins, got {h.shape}")
    e = np.empty((h.shape[0], h.shape[1] + 1))
    e[:, 1:-1] = 0.5 * (h[:, :-1] + h[:, 1:])
    e[:, 0] = h[:, 0] + 0.5 * (h[:, 0] - h[:, 1])
    e[:, -1] = h[:, -1] - 0.5 * (h[:, -2] - h[:, -1])
    bad = ~np.isfinite(h).all(axis=1)
    e[bad] = np.nan
    return e


def valid_profiles(height: np.ndarray) -> np.ndarray:
    """(P,) bool: the profile has a full, strictly decreasing height column."""
    h = np.asarray(height, dtype=np.float64)
    ok = np.isfinite(h).all(axis=1)
    with np.errstate(invalid="ignore"):
        ok &= (np.diff(h, axis=1) < 0).all(axis=1)
    return ok


def surface_bin(height: np.ndarray, surface_m: np.ndarray) -> np.ndarray:
    """Index of the bin containing the ground, (P,) int; -1 where the profile has no valid
    geometry or the ground lies outside the profile.

    Bin ``j`` spans ``(edges[j+1], edges[j]]`` m MSL.
    """
    e = bin_edges(height)
    s = np.asarray(surface_m, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        j = (e[:, 1:] > s).sum(axis=1)
        inside = (e[:, 0] >= s[:, 0]) & (j < height.shape[1])
    ok = inside & valid_profiles(height)
    return np.where(ok, j, -1).astype(np.int64)


def blind_zone_bins(height: np.ndarray, surface_m: np.ndarray, blind_zone_m: float | np.ndarray,
                    surface_bin_index: np.ndarray | None = None) -> np.ndarray:
    """(P, B) bool: the clutter-contaminated bins to fill.

    The surface bin and every bin above it whose bottom edge lies less than
    ``blind_zone_m`` (one depth, or one per profile) above ground.  The surface bin is
    ``surface_bin_index`` when given (e.g. the product's ``SurfaceHeightBin``; -1 = none),
    else the bin containing ``surface_m``.  Bins below the surface bin (under ground) and
    profiles without valid geometry are never flagged.
    """
    e = bin_edges(height)
    sb = surface_bin(height, surface_m) if surface_bin_index is None \
        else np.where(valid_profiles(height), np.asarray(surface_bin_index, np.int64), -1)
    bottom_agl = e[:, 1:] - np.asarray(surface_m, dtype=np.float64)[:, None]
    depth = np.broadcast_to(np.asarray(blind_zone_m, dtype=np.float64), (height.shape[0],))[:, None]
    j = np.arange(height.shape[1])[None, :]
    with np.errstate(invalid="ignore"):
        flag = (j <= sb[:, None]) & (bottom_agl < depth)
    return flag & (sb[:, None] >= 0)


def ground_in_bin(height: np.ndarray, surface_bin_index: np.ndarray, dem_m: np.ndarray | None = None
                  ) -> np.ndarray:
    """Ground height (m MSL, (P,)) of profiles whose surface bin is known: the DEM when it lies inside
    that bin, else clamped to the bin's edges; the bin centre without a DEM.  NaN where the bin is
    unknown (-1) or the geometry invalid."""
    h = np.asarray(height, dtype=np.float64)
    sb = np.asarray(surface_bin_index, dtype=np.int64)
    e = bin_edges(h)
    ok = (sb >= 0) & (sb < h.shape[1]) & valid_profiles(h)
    j = np.clip(sb, 0, h.shape[1] - 1)[:, None]
    top = np.take_along_axis(e, j, 1)[:, 0]
    bottom = np.take_along_axis(e, j + 1, 1)[:, 0]
    centre = np.take_along_axis(h, j, 1)[:, 0]
    if dem_m is None:
        g = centre
    else:
        dem = np.asarray(dem_m, dtype=np.float64)
        g = np.where(np.isfinite(dem), np.clip(dem, bottom, top), centre)
    return np.where(ok, g, np.nan)


def hidden_rows(grid: ModelGrid, edges_agl: np.ndarray, blind_bins: np.ndarray) -> np.ndarray:
    """(P,) int: model rows to hide per profile: every row that overlaps a clutter-flagged bin.

    That is ``ceil(top / dz)`` with ``top`` the top edge (m AGL) of the highest flagged bin, so a
    flagged bin never feeds a row the model sees and its value comes from predicted rows only;
    0 for profiles without flagged bins.  ``edges_agl`` is (P, B+1) increasing
    (:func:`agl_edges_ascending`), ``blind_bins`` (P, B) with bin 0 at the top.
    """
    bb = np.asarray(blind_bins, bool)
    p, b = bb.shape
    anyf = bb.any(axis=1)
    first = np.argmax(bb, axis=1)                                   # highest flagged bin (bin 0 = top)
    top = np.take_along_axis(np.asarray(edges_agl, np.float64), (b - first)[:, None], 1)[:, 0]
    with np.errstate(invalid="ignore"):
        rows = np.ceil(np.where(anyf & np.isfinite(top), top, 0.0) / grid.dz_m - 1e-9)
    return np.clip(rows, 0, grid.n_heights).astype(np.int64)


def agl_edges_ascending(height: np.ndarray, surface_m: np.ndarray) -> np.ndarray:
    """CPR bin edges as heights above ground, flipped to increase, (P, B+1) m AGL.

    Column ``k`` of the result is edge ``B - k`` of :func:`bin_edges`, so bin ``b`` of
    the granule is interval ``(B-1-b)`` here.
    """
    e = bin_edges(height) - np.asarray(surface_m, dtype=np.float64)[:, None]
    return e[:, ::-1]
