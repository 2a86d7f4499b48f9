"""Bootstrap confidence intervals over test patches (percentile method).

The resampling unit is the patch: patches are drawn with replacement and the
statistic recomputed, so pixel-level correlation inside a patch does not
shrink the intervals.  The same resample indices are used for every method
(:func:`bootstrap_indices` once, then :func:`interval` per method and score), so
differences between methods are paired.  ``strata`` (e.g. the site of each
patch) resamples within each stratum, keeping the site mix fixed; per-site
intervals are made by calling with the patches of one site only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


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


def from_replicates(estimate: float, replicates: np.ndarray, confidence: float = 0.95,
                    n: int = 0) -> Interval:
    """Percentile interval from precomputed replicate values (NaN replicates ignored)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    reps = np.asarray(replicates, dtype=np.float64).ravel()
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Interval(float(estimate), float("nan"), float("nan"), confidence, n)
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return Interval(float(estimate), float(lo), float(hi), confidence, n)


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
