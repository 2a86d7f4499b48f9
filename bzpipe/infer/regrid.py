"""Conservative layer averaging between two height grids, vectorised over profiles.

Reflectivity is averaged in linear units (Z, mm6 m-3): a destination layer gets
the thickness-weighted mean of the source layers it overlaps.  The integral of a
piecewise-constant field is piecewise linear in height, so averaging reduces to
interpolating the running integral at the destination edges (one ``searchsorted``
for all profiles at once).

"No echo" (NaN dBZ) counts as Z = 0; source layers marked not ``valid`` (missing
data, under ground) carry no weight and lower the layer's coverage.
"""

from __future__ import annotations

import numpy as np

from bzpipe.schema import DBZ_MIN


def interp_index(xq: np.ndarray, xp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bracketing index and weight of row-wise linear interpolation.

    ``xp`` (P, Np) finite, non-decreasing per row; ``xq`` (P, Nq) or (Nq,).  Returns
    ``(k, t)`` both (P, Nq): the value at a query is ``f[k] + t * (f[k+1] - f[k])``,
    with ``t`` clipped to [0, 1] (end values outside the row's range).  One
    ``searchsorted`` serves all rows: each row is shifted into its own interval.
    """
    xp = np.asarray(xp, dtype=np.float64)
    p, n = xp.shape
    xq = np.broadcast_to(np.asarray(xq, dtype=np.float64), (p, np.shape(xq)[-1]))
    if n == 1:
        return np.zeros(xq.shape, np.int64), np.zeros(xq.shape)
    lo = min(xp.min(), xq.min())
    span = max(xp.max(), xq.max()) - lo + 1.0
    off = (np.arange(p, dtype=np.float64) * span)[:, None]
    flat = (xp - lo + off).ravel()
    k = np.searchsorted(flat, (xq - lo + off).ravel(), side="right").reshape(xq.shape) - 1
    k -= (np.arange(p) * n)[:, None]
    k = np.clip(k, 0, n - 2)
    x0 = np.take_along_axis(xp, k, 1)
    dx = np.take_along_axis(xp, k + 1, 1) - x0
    t = np.divide(xq - x0, dx, out=np.zeros_like(dx), where=dx > 0)
    return k, np.clip(t, 0.0, 1.0)


def apply_index(k: np.ndarray, t: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Interpolated values of ``fp`` (P, Np) at an :func:`interp_index` result: (P, Nq)."""
    fp = np.asarray(fp, dtype=np.float64)
    if fp.shape[1] == 1:
        return np.repeat(fp, k.shape[1], axis=1)
    f0 = np.take_along_axis(fp, k, 1)
    return f0 + t * (np.take_along_axis(fp, k + 1, 1) - f0)


def interp_rows(xq: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Row-wise :func:`numpy.interp`: (P, Nq) queries, (P, Np) increasing abscissae, (P, Np) values.

    Queries outside a row's range take the end values.  Rows of ``xp`` must be
    finite and non-decreasing.  ``xq`` may be (Nq,) (same for every row).
    """
    k, t = interp_index(xq, xp)
    return apply_index(k, t, fp)


def layer_average(values: np.ndarray, src_edges: np.ndarray, dst_edges: np.ndarray,
                  valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Thickness-weighted mean of ``values`` over each destination layer.

    Args:
        values: (P, Ns) per source layer, linear units; NaN is treated as not valid.
        src_edges: (P, Ns+1) or (Ns+1,) increasing source edges (any length unit).
        dst_edges: (P, Nd+1) or (Nd+1,) increasing destination edges, same unit.
        valid: (P, Ns) bool, source layers that carry data (default: finite values).

    Returns:
        ``(mean, coverage)`` both (P, Nd): the mean over the valid part of each
        destination layer (NaN where none), and the fraction of the layer's
        thickness covered by valid source layers (0-1).
    """
    v = np.asarray(values, dtype=np.float64)
    p, ns = v.shape
    se = np.broadcast_to(np.asarray(src_edges, dtype=np.float64), (p, ns + 1))
    de = np.asarray(dst_edges, dtype=np.float64)
    de = np.broadcast_to(de, (p, de.shape[-1]))
    ok = np.isfinite(v) if valid is None else (np.asarray(valid, bool) & np.isfinite(v))
    thick = np.diff(se, axis=1)
    good_rows = np.isfinite(se).all(axis=1) & (thick >= 0).all(axis=1) & np.isfinite(de).all(axis=1)
    if not good_rows.all():
        # neutral placeholder geometry for rows without any; their results are blanked below
        se = np.where(good_rows[:, None], se, np.arange(ns + 1, dtype=np.float64)[None, :])
        de = np.where(good_rows[:, None], de, np.arange(de.shape[1], dtype=np.float64)[None, :])
        thick = np.diff(se, axis=1)
    w = np.where(ok, thick, 0.0)
    cum_v = np.concatenate([np.zeros((p, 1)), np.cumsum(np.where(ok, v, 0.0) * w, axis=1)], axis=1)
    cum_w = np.concatenate([np.zeros((p, 1)), np.cumsum(w, axis=1)], axis=1)
    k, t = interp_index(de, se)
    iv = np.diff(apply_index(k, t, cum_v), axis=1)
    iw = np.diff(apply_index(k, t, cum_w), axis=1)
    dz = np.diff(de, axis=1)
    mean = np.divide(iv, iw, out=np.full_like(iv, np.nan), where=iw > 1e-9 * np.maximum(dz, 1e-12))
    cov = np.divide(iw, dz, out=np.zeros_like(iw), where=dz > 0)
    mean[~good_rows] = np.nan
    cov[~good_rows] = 0.0
    return mean, np.clip(cov, 0.0, 1.0)


def dbz_to_linear(dbz: np.ndarray) -> np.ndarray:
    """DBZ -> Z (mm6 m-3); NaN (no echo) -> 0."""
    d = np.asarray(dbz, dtype=np.float64)
    return np.where(np.isfinite(d), 10.0 ** (d / 10.0), 0.0)


def linear_to_dbz(z: np.ndarray, floor_dbz: float = DBZ_MIN - 20.0) -> np.ndarray:
    """Z -> dBZ; zero, negative, NaN or below ``floor_dbz`` -> NaN (no echo)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 10.0 * np.log10(z)
    return np.where(np.isfinite(d) & (d >= floor_dbz), d, np.nan)


def regrid_dbz(dbz: np.ndarray, src_edges: np.ndarray, dst_edges: np.ndarray,
               valid: np.ndarray | None = None, min_coverage: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Average reflectivity in linear Z from source to destination layers.

    Args:
        dbz: (P, Ns) dBZ, NaN = no echo (Z = 0, but still valid data).
        src_edges, dst_edges: increasing edges as in :func:`layer_average`.
        valid: (P, Ns) bool, source layers with data (default all).
        min_coverage: destination layers less covered than this are "missing".

    Returns:
        ``(dbz_out, observed)``: (P, Nd) dBZ (NaN = no echo or missing) and a bool
        (P, Nd) that is True where the layer was covered enough to be observed.
    """
    d = np.asarray(dbz, dtype=np.float64)
    ok = np.ones(d.shape, bool) if valid is None else np.asarray(valid, bool)
    mean, cov = layer_average(dbz_to_linear(d), src_edges, dst_edges, ok)
    observed = cov >= max(min_coverage, 1e-9)
    out = np.where(observed, linear_to_dbz(mean), np.nan)
    return out.astype(np.float32), observed
