"""Quality of the MC-dropout uncertainty, and the shared spread-exclusion mask.

Everything in dBZ, no echo counted as -60 dBZ (see :mod:`bzpipe.metrics.pointwise`).

* :func:`spread_exclusion_mask`: the paper drops pixels whose MC-dropout spread
  is large; here the cut is a quantile of the spread over all valid
  blind-zone pixels of the test split.  The returned mask is built **once** and
  passed to the metrics of every method (U-Net and baselines alike).
* :func:`spread_skill`: pixels binned by predicted spread (equal-count bins);
  per bin the mean spread and the RMSE of the MC mean.  For a well calibrated
  ensemble the two agree (points on the 1:1 line).
* :func:`interval_coverage`: the fraction of valid pixels whose truth lies in
  [lower, upper]; a central 90 % interval (quantiles 0.05 and 0.95) should
  cover ~0.90.  Truth and bounds equal to -60 dBZ (no echo) count as inside.
"""

from __future__ import annotations

import numpy as np

from bzpipe.metrics.pointwise import NO_ECHO_DBZ, broadcast_valid, fill_no_echo


def spread_exclusion_mask(spread: np.ndarray, quantile: float | None,
                          valid: np.ndarray | None = None) -> np.ndarray:
    """``valid`` minus pixels whose ``spread`` exceeds its ``quantile`` over the valid pixels.

    ``quantile`` None keeps every valid pixel.  Non-finite spread is excluded.
    """
    spread = np.asarray(spread, dtype=np.float64)
    w = broadcast_valid(valid, spread.shape).copy()
    if quantile is None:
        return w
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    ok = w & np.isfinite(spread)
    if not ok.any():
        return ok
    cut = np.quantile(spread[ok], quantile)
    return ok & (spread <= cut)


def spread_skill(mean_dbz: np.ndarray, spread_dbz: np.ndarray, truth_dbz: np.ndarray,
                 valid: np.ndarray | None = None, *, n_bins: int = 10,
                 no_echo_dbz: float = NO_ECHO_DBZ) -> dict[str, np.ndarray]:
    """Binned spread vs RMSE.

    Returns ``edges`` ``(k+1,)`` (spread bin edges, dBZ), and per bin
    ``spread`` (mean spread), ``rmse`` (of ``mean_dbz`` against ``truth_dbz``)
    and ``count``; ``k <= n_bins`` (equal-count bins, duplicates merged).
    Empty input gives arrays of length 0.
    """
    s = np.asarray(spread_dbz, dtype=np.float64)
    err = fill_no_echo(mean_dbz, no_echo_dbz) - fill_no_echo(truth_dbz, no_echo_dbz)
    shape = np.broadcast_shapes(s.shape, err.shape)
    w = broadcast_valid(valid, shape) & np.isfinite(np.broadcast_to(s, shape))
    s, err = np.broadcast_to(s, shape)[w], np.broadcast_to(err, shape)[w]
    if s.size == 0:
        z = np.zeros(0)
        return {"edges": z, "spread": z, "rmse": z, "count": z.astype(np.int64)}
    edges = np.unique(np.quantile(s, np.linspace(0, 1, n_bins + 1)))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, edges.size - 2)
    k = edges.size - 1
    count = np.bincount(which, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread_mean = np.bincount(which, weights=s, minlength=k) / count
        rmse = np.sqrt(np.bincount(which, weights=err**2, minlength=k) / count)
    return {"edges": edges, "spread": spread_mean, "rmse": rmse, "count": count.astype(np.int64)}


def spread_skill_ratio(mean_dbz: np.ndarray, spread_dbz: np.ndarray, truth_dbz: np.ndarray,
                       valid: np.ndarray | None = None, *, no_echo_dbz: float = NO_ECHO_DBZ) -> float:
    """sqrt(mean spread^2) / RMSE over valid pixels (1 = calibrated, < 1 over-confident); NaN if undefined."""
    s = np.asarray(spread_dbz, dtype=np.float64)
    err = fill_no_echo(mean_dbz, no_echo_dbz) - fill_no_echo(truth_dbz, no_echo_dbz)
    shape = np.broadcast_shapes(s.shape, err.shape)
    w = broadcast_valid(valid, shape) & np.isfinite(np.broadcast_to(s, shape))
    if not w.any():
        return float("nan")
    rmse = np.sqrt(np.mean(np.broadcast_to(err, shape)[w] ** 2))
    rms_spread = np.sqrt(np.mean(np.broadcast_to(s, shape)[w] ** 2))
    return float(rms_spread / rmse) if rmse > 0 else float("nan")


def interval_coverage(lower_dbz: np.ndarray, upper_dbz: np.ndarray, truth_dbz: np.ndarray,
                      valid: np.ndarray | None = None, *, no_echo_dbz: float = NO_ECHO_DBZ) -> float:
    """Fraction of valid pixels with lower <= truth <= upper (NaN if there is none)."""
    lo = fill_no_echo(lower_dbz, no_echo_dbz)
    hi = fill_no_echo(upper_dbz, no_echo_dbz)
    t = fill_no_echo(truth_dbz, no_echo_dbz)
    shape = np.broadcast_shapes(lo.shape, hi.shape, t.shape)
    w = broadcast_valid(valid, shape)
    if not w.any():
        return float("nan")
    inside = (np.broadcast_to(lo, shape) <= t) & (t <= np.broadcast_to(hi, shape))
    return float(np.mean(inside[w]))


def central_intervals(quantiles: tuple[float, ...]) -> list[tuple[float, float, float]]:
    """Symmetric pairs (lower q, upper q, nominal coverage) among ``quantiles``, widest first.

    ``(0.05, 0.5, 0.95)`` -> ``[(0.05, 0.95, 0.9)]``.
    """
    qs = sorted(quantiles)
    out = []
    for q in qs:
        partner = next((p for p in qs if abs(p - (1 - q)) < 1e-9), None)
        if q < 0.5 and partner is not None:
            out.append((q, partner, round(partner - q, 10)))
    return out
