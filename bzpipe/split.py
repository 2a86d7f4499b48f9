"""Leak-free train / val / test split of radar time series.

Neighbouring radar profiles are strongly correlated, so a random split of
patches (or the 90/10 split of each month in the seed code) puts nearly
identical samples in training and test.  Here:

1. :func:`decorrelation_lag` finds, for the column echo series and for the
   ERA-5 series, the first lag where the autocorrelation has fallen to 0.1 or
   less (:func:`efolding_time` gives the 1/e time, recorded for information).
   The default gap between splits is the longer of the two lags: at that
   separation neither the radar scene nor the synoptic state it sits in is
   still correlated (a synoptic system and its nearly identical ERA-5 profiles
   cannot sit in two splits).
2. :func:`make_blocks` cuts the common timeline (all sites) into contiguous
   multi-day blocks (default :func:`default_block_s`: the longer of 3 days and
   two gaps, in whole days) aligned to multiples of the block length since
   1970-01-01 and to season boundaries (1 Mar, 1 Jun, 1 Sep, 1 Dec).
3. :func:`assign_blocks` gives each block to one split (default 70/15/15 of
   the usable time), stratified by season (each season is balanced on its own)
   and by site (the greedy choice balances every site's usable time), in a
   seeded random order, and makes sure every split with a fraction > 0 gets at
   least one block (:func:`check_blocks` refuses, naming the numbers, a timeline
   with fewer blocks than that).  Blocks are shared by all sites, so the same
   hour is never in two splits, even across sites.
4. :func:`usable_intervals` merges neighbouring blocks of one split into
   segments and trims ``gap / 2`` from both sides of every boundary between
   segments of different splits: any two intervals of different splits are
   at least ``gap`` apart.
5. :func:`place_patches` places patches only inside the intervals of their own
   split, so no patch of one split comes closer than ``gap`` to any time used
   by another.

A held-out test period (``test_from_ns`` of :func:`make_split`, ``build.split.test_from``) replaces
step 3's draw for the test split: every block from its start on is test (its start is a block
edge), the blocks before it are shared between train and val as above, and step 4 keeps the gap
at the boundary.  The test is then a later season as a whole, e.g. a winter the model never saw.

Times are int64 nanoseconds since 1970-01-01 (UTC) throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bzpipe.errors import ConfigError

log = logging.getLogger("bzpipe.dataset")

SPLITS: tuple[str, str, str] = ("train", "val", "test")
SEASONS: tuple[str, str, str, str] = ("DJF", "MAM", "JJA", "SON")
_SEASON_OF_MONTH = np.array(["DJF", "DJF", "MAM", "MAM", "MAM", "JJA", "JJA", "JJA",
                             "SON", "SON", "SON", "DJF"])
NS = 1_000_000_000
DAY_S = 86400.0
#: shortest default block (King et al. split each month 90/10; a synoptic system lasts days)
MIN_BLOCK_DAYS = 3.0
#: the gap between splits lies where the autocorrelation has fallen to this value
ACF_GAP_THRESHOLD = 0.1


# --------------------------------------------------------------------------- decorrelation


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation of ``x`` (NaN = gap) at lags ``0..max_lag`` (steps), from valid pairs only.

    The lagged sums run over the stretches of data that gaps longer than ``max_lag`` separate (no
    pair within ``max_lag`` spans such a gap), each by its own FFT; the mean and variance are the
    whole series'.  The same numbers as one FFT over the whole span, at the cost of the data: the
    cold seasons of several years (``months``) do not pay for the summers between them.
    """
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = x.size
    max_lag = int(min(max_lag, max(n - 1, 0)))
    acf = np.full(max_lag + 1, np.nan)
    if ok.sum() < 2:
        return acf
    xc = np.where(ok, x - x[ok].mean(), 0.0)
    var = float(np.mean(xc[ok] ** 2))
    if var <= 0:
        return acf
    num, cnt = np.zeros(max_lag + 1), np.zeros(max_lag + 1)
    valid = np.flatnonzero(ok)
    cuts = np.flatnonzero(np.diff(valid) > max_lag)
    for a, b in zip(valid[np.r_[0, cuts + 1]], valid[np.r_[cuts, valid.size - 1]] + 1, strict=True):
        m = int(b - a)
        nfft = 1 << int(np.ceil(np.log2(2 * m)))
        fx = np.fft.rfft(xc[a:b], nfft)
        fm = np.fft.rfft(ok[a:b].astype(np.float64), nfft)
        k = min(max_lag, m - 1) + 1
        num[:k] += np.fft.irfft(fx * np.conj(fx), nfft)[:k]
        cnt[:k] += np.rint(np.fft.irfft(fm * np.conj(fm), nfft)[:k])
    with np.errstate(divide="ignore", invalid="ignore"):
        acf = np.where(cnt > 0, num / np.maximum(cnt, 1) / var, np.nan)
    acf[0] = 1.0
    return acf


def efolding_time(x: np.ndarray, step_s: float, max_lag_s: float) -> tuple[float, bool]:
    """E-folding time (s) of the autocorrelation of ``x`` sampled every ``step_s``.

    The first lag where the autocorrelation falls below 1/e, linearly
    interpolated between lags.  Returns ``(tau_s, found)``; when it never falls
    below 1/e within ``max_lag_s`` (or is undefined: constant or empty series)
    ``(max_lag_s, False)``, the conservative choice.
    """
    acf = autocorrelation(x, int(max_lag_s // step_s))
    thr = np.exp(-1.0)
    below = np.flatnonzero(acf < thr)
    if below.size == 0 or not np.isfinite(acf[1:]).any():
        return float(max_lag_s), False
    k = int(below[0])
    a0, a1 = acf[k - 1], acf[k]
    frac = (a0 - thr) / (a0 - a1) if np.isfinite(a0) and a0 != a1 else 1.0
    return float(((k - 1) + frac) * step_s), True


def decorrelation_lag(x: np.ndarray, step_s: float, max_lag_s: float,
                      threshold: float = ACF_GAP_THRESHOLD) -> tuple[float, bool]:
    """The first lag (s) at which the autocorrelation of ``x`` has fallen to ``threshold`` or less.

    Lags without any valid pair (e.g. the hours between two 6-hour day files)
    are skipped.  Returns ``(lag_s, found)``; ``(max_lag_s, False)`` when the
    autocorrelation stays above ``threshold`` up to ``max_lag_s`` or is
    undefined (constant or empty series): the conservative choice.
    """
    acf = autocorrelation(x, int(max_lag_s // step_s))
    below = np.flatnonzero(np.isfinite(acf) & (acf <= threshold))
    if below.size == 0 or not np.isfinite(acf[1:]).any():
        return float(max_lag_s), False
    return float(below[0] * step_s), True


# --------------------------------------------------------------------------- seasons and blocks


def season_of(times_ns: np.ndarray | int) -> np.ndarray:
    """Meteorological season (DJF, MAM, JJA, SON) of each time (ns since epoch or datetime64)."""
    t = np.asarray(times_ns)
    if not np.issubdtype(t.dtype, np.datetime64):
        t = t.astype(np.int64).astype("datetime64[ns]")
    month = (t.astype("datetime64[M]").astype(np.int64) % 12)
    return _SEASON_OF_MONTH[month]


def _season_boundaries(t0_ns: int, t1_ns: int) -> list[int]:
    m0 = np.datetime64(int(t0_ns), "ns").astype("datetime64[M]")
    m1 = np.datetime64(int(t1_ns), "ns").astype("datetime64[M]") + np.timedelta64(1, "M")
    months = np.arange(m0, m1 + np.timedelta64(1, "M"), dtype="datetime64[M]")
    starts = [m for m in months if int(m.astype(np.int64) % 12) in (2, 5, 8, 11)]
    return [int(m.astype("datetime64[ns]").astype(np.int64)) for m in starts]


def make_blocks(t0_ns: int, t1_ns: int, block_ns: int, extra_edges: tuple[int, ...] = ()) -> np.ndarray:
    """Blocks ``(n, 2)`` int64 ``[start, end)`` covering ``[t0, t1)``.

    Edges at multiples of ``block_ns`` since the epoch, at season starts and at ``extra_edges``
    (e.g. the start of a held-out test period).
    """
    if t1_ns <= t0_ns:
        return np.zeros((0, 2), dtype=np.int64)
    block_ns = int(block_ns)
    first = (int(t0_ns) // block_ns) * block_ns
    edges = set(range(first + block_ns, int(t1_ns), block_ns))
    edges.update(b for b in _season_boundaries(t0_ns, t1_ns) if t0_ns < b < t1_ns)
    edges.update(int(b) for b in extra_edges if t0_ns < b < t1_ns)
    e = np.array(sorted({int(t0_ns), int(t1_ns), *edges}), dtype=np.int64)
    return np.stack([e[:-1], e[1:]], axis=1)


# --------------------------------------------------------------------------- assignment


def assign_blocks(amounts: np.ndarray, strata: np.ndarray, fractions: tuple[float, float, float],
                  seed: int = 0) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) of each block.

    ``amounts (n_blocks, n_sites)``: usable data per block and site (e.g.
    valid time steps); ``strata (n_blocks,)``: stratum label (season).  Within
    each stratum blocks are visited in a seeded random order and each goes to
    the split that keeps every site's shares closest to ``fractions`` (least
    squares).  Blocks without data take the split of the nearest block with
    data (so they never force extra gaps).
    """
    amounts = np.asarray(amounts, dtype=np.float64)
    if amounts.ndim == 1:
        amounts = amounts[:, None]
    n, n_sites = amounts.shape
    f = np.asarray(fractions, dtype=np.float64)
    out = np.full(n, -1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    has = amounts.sum(axis=1) > 0
    for stratum in sorted(set(np.asarray(strata).tolist())):
        idx = np.flatnonzero((np.asarray(strata) == stratum) & has)
        assigned = np.zeros((n_sites, 3))
        total = np.zeros(n_sites)
        for b in rng.permutation(idx):
            a = amounts[b]
            new_total = total + a
            best, best_cost = 0, np.inf
            for k in rng.permutation(3):
                if f[k] == 0:
                    continue
                trial = assigned.copy()
                trial[:, k] += a
                cost = float(np.sum((trial - f[None, :] * new_total[:, None]) ** 2))
                if cost < best_cost - 1e-12:
                    best, best_cost = int(k), cost
            out[b] = best
            assigned[:, best] += a
            total = new_total
    _give_every_split_a_block(out, amounts.sum(axis=1), f)
    # empty blocks: the split of the nearest block with data
    if has.any():
        full = np.flatnonzero(has)
        for b in np.flatnonzero(~has):
            j = np.searchsorted(full, b)
            cands = [full[i] for i in (j - 1, j) if 0 <= i < full.size]
            out[b] = out[min(cands, key=lambda c: abs(c - b))]
    else:
        out[:] = int(np.argmax(f))
    return out


def _give_every_split_a_block(labels: np.ndarray, amount: np.ndarray, f: np.ndarray) -> None:
    """In place: a split with fraction > 0 but no block takes the smallest block of the split with
    the most blocks (when that one keeps at least one)."""
    for k in np.flatnonzero(f > 0):
        if np.any(labels == k):
            continue
        counts = np.array([np.sum(labels == j) for j in range(3)])
        donor = int(np.argmax(counts))
        if counts[donor] < 2:
            return
        cand = np.flatnonzero(labels == donor)
        labels[cand[np.argmin(amount[cand])]] = k


def usable_intervals(blocks: np.ndarray, labels: np.ndarray, gap_ns: int) -> np.ndarray:
    """Intervals ``(m, 3)`` int64 ``[start, end, split]`` where patches may lie.

    Neighbouring blocks of one split merge; ``gap / 2`` (rounded up) is cut
    from each side of a boundary between different splits (measured from the
    midpoint where blocks do not touch), so intervals of different splits are
    at least ``gap_ns`` apart.  Empty intervals are dropped.
    """
    if len(blocks) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    segs: list[list[int]] = []
    for (b0, b1), lab in zip(np.asarray(blocks).tolist(), np.asarray(labels).tolist(), strict=True):
        if segs and segs[-1][2] == lab and segs[-1][1] == b0:
            segs[-1][1] = b1
        else:
            segs.append([b0, b1, lab])
    half = -(-int(gap_ns) // 2)
    out = []
    for i, (s0, s1, lab) in enumerate(segs):
        a, b = s0, s1
        if i > 0 and segs[i - 1][2] != lab:  # centre the gap on the boundary
            a = max(a, (segs[i - 1][1] + s0) // 2 + half)
        if i + 1 < len(segs) and segs[i + 1][2] != lab:
            b = min(b, (s1 + segs[i + 1][0]) // 2 - half)
        if b > a:
            out.append((a, b, lab))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def column_labels(intervals: np.ndarray, t0_ns: int, step_ns: int, n: int) -> np.ndarray:
    """Split of each grid column ``[t0 + j step, t0 + (j + 1) step)``; -1 outside every interval."""
    lab = np.full(n, -1, dtype=np.int8)
    for a, b, s in np.asarray(intervals).tolist():
        j0 = max(0, -(-(a - t0_ns) // step_ns))        # first column starting at or after a
        j1 = min(n, (b - t0_ns) // step_ns)             # columns ending at or before b
        if j1 > j0:
            lab[j0:j1] = s
    return lab


def place_patches(mask: np.ndarray, width: int, stride: int) -> np.ndarray:
    """Start columns of patches of ``width`` columns lying wholly inside runs of ``mask``.

    Each run of True is filled from its start every ``stride`` columns.
    """
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        return np.zeros(0, dtype=np.int64)
    d = np.diff(np.r_[0, m.astype(np.int8), 0])
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    out = [np.arange(s, e - width + 1, stride, dtype=np.int64)
           for s, e in zip(starts, ends, strict=True) if e - s >= width]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- all together


@dataclass
class SplitPlan:
    """Where each split may place patches, and how that was decided."""

    t0_ns: int
    step_ns: int
    block_ns: int
    gap_ns: int
    blocks: np.ndarray            # (n, 2) [start, end)
    block_labels: np.ndarray      # (n,) split index
    intervals: np.ndarray         # (m, 3) [start, end, split]
    decorrelation_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def labels(self, n: int) -> np.ndarray:
        return column_labels(self.intervals, self.t0_ns, self.step_ns, n)

    def to_json(self) -> dict[str, Any]:
        return {"t0_ns": self.t0_ns, "step_ns": self.step_ns, "block_ns": self.block_ns,
                "gap_ns": self.gap_ns, "blocks": self.blocks.tolist(),
                "block_labels": self.block_labels.tolist(), "intervals": self.intervals.tolist(),
                "decorrelation_s": self.decorrelation_s, "info": self.info}


def default_block_s(gap_s: float, step_s: float, min_block_days: float = MIN_BLOCK_DAYS) -> float:
    """The longer of ``min_block_days`` and two gaps (so at most half a block is lost to a boundary),
    in whole days (whole steps below one day)."""
    b = max(min_block_days * DAY_S, 2.0 * gap_s)
    unit = DAY_S if b >= DAY_S else step_s
    return float(np.ceil(b / unit - 1e-9) * unit)


def check_blocks(n_blocks: int, fractions: tuple[float, float, float], *, block_s: float, span_s: float,
                 where: str = "") -> None:
    """Refuse a timeline that cannot give every split with a fraction > 0 at least one block.

    Raises :class:`~bzpipe.errors.ConfigError` naming the numbers: the span, the
    block length, the blocks it gives and the blocks the splits need.
    """
    need = int(sum(f > 0 for f in fractions))
    if n_blocks >= need:
        return
    names = "/".join(SPLITS[k] for k in range(3) if fractions[k] > 0)
    raise ConfigError(
        f"{where + ': ' if where else ''}the data span {span_s / DAY_S:.1f} days, which gives {n_blocks} "
        f"block(s) of {block_s / DAY_S:.2f} days with data, but the {need} splits {names} (fractions "
        f"{'/'.join(f'{f:g}' for f in fractions)}) need at least one block each, i.e. at least "
        f"{need * block_s / DAY_S:.1f} days of data; extend start..end or lower split.block_hours / "
        "split.min_block_days")


def make_split(valid: dict[str, np.ndarray], t0_ns: int, step_s: float, *,
               fractions: tuple[float, float, float], gap_s: float, block_s: float,
               seed: int = 0, decorrelation_s: float | None = None,
               test_from_ns: int | None = None) -> SplitPlan:
    """Split plan for sites whose usable columns are ``valid[site]`` on one grid from ``t0_ns``.

    All masks have the same length ``n`` (columns ``t0 + j step``).  With ``test_from_ns`` (a held-out
    test period) every block from that time on is test, and ``fractions`` (test fraction 0) share the
    blocks before it between train and val; :func:`usable_intervals` keeps the gap at the boundary
    as at any other.
    """
    step_ns = int(round(step_s * NS))
    n = max((len(v) for v in valid.values()), default=0)
    t1_ns = t0_ns + n * step_ns
    block_ns = max(int(round(block_s * NS)), step_ns)
    gap_ns = int(round(gap_s * NS))
    if test_from_ns is not None and fractions[2] != 0:
        raise ConfigError(f"split: a held-out test period takes every block from its start; the fractions "
                          f"share the blocks before it, so their test fraction must be 0, got {fractions}")
    blocks = make_blocks(t0_ns, t1_ns, block_ns, () if test_from_ns is None else (int(test_from_ns),))
    sites = sorted(valid)
    amounts = np.zeros((len(blocks), len(sites)))
    if len(blocks):
        j0 = (blocks[:, 0] - t0_ns) // step_ns
        for k, s in enumerate(sites):
            c = np.r_[0, np.cumsum(np.asarray(valid[s], dtype=np.int64))]
            j = np.clip(np.stack([j0, np.r_[j0[1:], n]], 1), 0, len(valid[s]))
            amounts[:, k] = c[j[:, 1]] - c[j[:, 0]]
    has_data = amounts.sum(axis=1) > 0
    held = (blocks[:, 0] >= test_from_ns if test_from_ns is not None and len(blocks)
            else np.zeros(len(blocks), dtype=bool))
    check_blocks(int((has_data & ~held).sum()), fractions, block_s=block_ns / NS,
                 span_s=((t1_ns if test_from_ns is None else min(t1_ns, test_from_ns)) - t0_ns) / NS,
                 where="split")
    if test_from_ns is not None and not (has_data & held).any():
        raise ConfigError(f"split: the held-out test period from {np.datetime64(int(test_from_ns), 'ns')} "
                          f"holds no usable data (the timeline ends {np.datetime64(int(t1_ns), 'ns')})")
    strata = season_of(blocks[:, 0]) if len(blocks) else np.array([], dtype=str)
    labels = np.full(len(blocks), 2, dtype=np.int64)
    labels[~held] = assign_blocks(amounts[~held], strata[~held], fractions, seed)
    intervals = usable_intervals(blocks, labels, gap_ns)
    info = {"n_blocks": int(len(blocks)), "blocks_with_data": int(has_data.sum()),
            "test_from_ns": None if test_from_ns is None else int(test_from_ns),
            "blocks_per_split": {SPLITS[k]: int(np.sum((labels == k) & has_data)) for k in range(3)},
            "amount_per_split": {SPLITS[k]: float(amounts[labels == k].sum()) for k in range(3)}}
    log.info("split: %d blocks of %.2f h, gap %.0f s -> %s", len(blocks), block_ns / NS / 3600,
             gap_s, info["blocks_per_split"])
    return SplitPlan(t0_ns=int(t0_ns), step_ns=step_ns, block_ns=block_ns, gap_ns=gap_ns,
                     blocks=blocks, block_labels=labels, intervals=intervals,
                     decorrelation_s=decorrelation_s, info=info)
