"""Bootstrap confidence intervals that respect autocorrelation: a paired, stratified block bootstrap.

Neighbouring test patches (8.5 min apart) are strongly correlated, so
resampling patches independently makes intervals far too narrow (on an AR(1)
series with a 2-hour e-folding time a nominal 90 % patch bootstrap covers the
true mean in about a quarter of the trials).  Here the resampling unit is a
**block of patches** - by default one site-day (:func:`unit_labels`) -, the
days of a split block being separated from other splits by the decorrelation
gap of :mod:`bzpipe.split`:

* :func:`block_weights` draws, within each stratum (site), as many units as
  the stratum has, with replacement, and gives every patch the number of times
  its unit was drawn: an ``(n_boot, n)`` weight matrix.  The same matrix is
  used for every method and score, so differences between methods are
  **paired**; stratifying keeps the site mix fixed.
* :func:`weighted_means` (continuous per-patch scores) and ``weights @ counts``
  (contingency tables, in :mod:`bzpipe.metrics.summary`) give the replicates.
* :func:`from_replicates` turns replicates into a percentile interval,
  **expanded** for the small number of units (Hesterberg 2015, "What teachers
  should know about the bootstrap", Am. Stat. 69:371: percentiles at the level
  whose normal quantile is ``sqrt(k / (k - 1)) t_{k-1}``, ``k`` units), since
  the plain percentile interval is too narrow when only a few dozen days are
  resampled.

``tests/test_metrics.py`` checks the coverage on AR(1) series: the nominal
90 % interval covers the true mean in 85-95 % of the trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def bootstrap_indices(n: int, n_boot: int, seed: int = 0, strata: np.ndarray | None = None) -> np.ndarray:
    """``(n_boot, n)`` resample indices into ``range(n)``, optionally stratified."""
    if n < 0 or n_boot < 1:
        raise ValueError(f"need n >= 0 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, max(n, 1), size=(n_boot, n)) if n else np.zeros((n_boot, 0), np.int64)
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata must have shape ({n},), got {strata.shape}")
    out = np.empty((n_boot, n), dtype=np.int64)
    pos = 0
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        out[:, pos:pos + members.size] = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        pos += members.size
    return out


def interval(statistic: Callable[[np.ndarray], float], indices: np.ndarray,
             confidence: float = 0.95) -> Interval:
    """Estimate ``statistic(arange(n))`` with a percentile interval over the rows of ``indices``.

    ``statistic`` takes an index array into the patches and returns a float
    (NaN allowed: NaN replicates are ignored; all NaN -> NaN interval).
    """
    n = indices.shape[1]
    est = float(statistic(np.arange(n)))
    reps = np.array([statistic(ix) for ix in indices], dtype=np.float64)
    return from_replicates(est, reps, confidence, n)


def expanded_level(confidence: float, n_units: int | None) -> float:
    """The percentile level that expands a ``confidence`` interval for ``n_units`` resampled units.

    Hesterberg (2015): use the normal quantile ``sqrt(k / (k - 1)) * t_{k-1, (1 + c) / 2}``.
    ``None`` or fewer than 3 units: ``confidence`` unchanged.
    """
    if n_units is None or n_units < 3:
        return confidence
    k = float(n_units)
    z = math.sqrt(k / (k - 1.0)) * float(stats.t.ppf(0.5 + confidence / 2.0, k - 1.0))
    return float(2.0 * stats.norm.cdf(z) - 1.0)


def from_replicates(estimate: float, replicates: np.ndarray, confidence: float = 0.95,
                    n: int = 0, n_units: int | None = None) -> Interval:
    """Percentile interval from precomputed replicate values (NaN replicates ignored).

    ``n_units``: the number of resampled units (blocks); the interval is then
    expanded for their small number (:func:`expanded_level`).  The returned
    ``confidence`` is the nominal level.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    reps = np.asarray(replicates, dtype=np.float64).ravel()
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Interval(float(estimate), float("nan"), float("nan"), confidence, n)
    a = (1.0 - expanded_level(confidence, n_units)) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return Interval(float(estimate), float(lo), float(hi), confidence, n)


def unit_labels(sites: np.ndarray, times: np.ndarray, unit_hours: float = 24.0) -> np.ndarray:
    """Resampling unit of each patch: ``<site>/<k>`` with ``k = floor(time / unit_hours)`` (UTC days by
    default); ``unit_hours <= 0``: every patch is its own unit (the i.i.d. bootstrap).  Patches without
    a time get a unit of their own."""
    sites = np.asarray(sites).astype(str)
    n = sites.size
    if unit_hours <= 0:
        return np.array([f"{s}/p{i}" for i, s in enumerate(sites)], dtype=object)
    t = np.asarray(times).astype("datetime64[ns]")
    ok = ~np.isnat(t)
    k = np.where(ok, np.floor(t.astype(np.int64) / (unit_hours * 3600e9)), -1).astype(np.int64)
    return np.array([f"{s}/{kk}" if good else f"{s}/p{i}" for i, (s, kk, good)
                     in enumerate(zip(sites, k, ok, strict=True))],
                    dtype=object) if n else np.zeros(0, object)


def block_weights(units: np.ndarray, n_boot: int, seed: int = 0, strata: np.ndarray | None = None
                  ) -> np.ndarray:
    """``(n_boot, n)`` bootstrap weights: how often each patch's unit is drawn in each replicate.

    Within each stratum the units are drawn with replacement, as many as the
    stratum has (all patches of a unit share its count).  Seeded; the same
    matrix applied to every method pairs the comparisons.
    """
    units = np.asarray(units)
    n = units.size
    if n_boot < 1:
        raise ValueError(f"need n_boot >= 1, got {n_boot}")
    strata = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata must have shape ({n},), got {strata.shape}")
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, n), dtype=np.float64)
    for s in sorted(set(strata.tolist()), key=str):
        members = np.flatnonzero(strata == s)
        uniq, inv = np.unique(units[members].astype(str), return_inverse=True)
        draws = rng.integers(0, uniq.size, size=(n_boot, uniq.size))
        counts = np.zeros((n_boot, uniq.size))
        np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
        w[:, members] = counts[:, inv]
    return w


def n_units(units: np.ndarray) -> int:
    """How many distinct units the patches belong to."""
    return int(np.unique(np.asarray(units).astype(str)).size) if np.size(units) else 0


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NaN-ignoring weighted mean of per-patch ``values`` ``(n,)`` for every row of ``weights``
    ``(n_boot, n)`` -> ``(n_boot,)`` (NaN where a replicate has no finite value)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    w = np.asarray(weights, dtype=np.float64)
    num = w @ np.where(ok, v, 0.0)
    den = w @ ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def replicate_means(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """NaN-ignoring mean of per-patch ``values`` ``(n,)`` for every row of ``indices`` -> ``(n_boot,)``.

    Vectorized equivalent of ``[nanmean(values[ix]) for ix in indices]`` (NaN where a
    replicate has no finite value), without warnings.
    """
    v = np.asarray(values, dtype=np.float64)[indices]  # (n_boot, n)
    ok = np.isfinite(v)
    cnt = ok.sum(axis=-1)
    tot = np.where(ok, v, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1), np.nan)


def nanmean_statistic(values: np.ndarray) -> Callable[[np.ndarray], float]:
    """A statistic for :func:`interval`: the NaN-ignoring mean of per-patch ``values`` (NaN if none)."""
    v = np.asarray(values, dtype=np.float64)

    def stat(ix: np.ndarray) -> float:
        s = v[ix]
        s = s[np.isfinite(s)]
        return float(s.mean()) if s.size else float("nan")

    return stat


def bootstrap_mean(values: np.ndarray, n_boot: int = 500, confidence: float = 0.95, seed: int = 0,
                   strata: np.ndarray | None = None) -> Interval:
    """Mean of per-patch ``values`` (NaN ignored) with a bootstrap interval."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return interval(nanmean_statistic(v), bootstrap_indices(v.size, n_boot, seed, strata), confidence)
