"""How often a test split of a given size would show a skill: the verdict's power, by bootstrap.

The report's verdict (:mod:`bzpipe.report.verdict`) calls the U-Net ahead of a baseline on a score
when the score's paired, site-stratified block-bootstrap interval (:mod:`bzpipe.metrics.bootstrap`)
excludes zero, and it asks that of eight differences at once (four headline scores against REP
and MAR).  Whether a skill that is there shows up depends on how many independent units (site-days)
the test split holds.  :func:`verdict_power` answers that for a scored set of patches taken as the
population, as a bootstrap power analysis does (Efron & Tibshirani 1993, ch. 25; the resampled
units are whole blocks of ``block_days`` consecutive days of one site, the split's block shape):

1. draw blocks with replacement until the sample holds ``n_site_days`` site-days with patches (a
   block drawn twice counts twice); the bootstrap's units may be site-days or longer (e.g. the
   split's 3-day blocks: ``ScoreSettings.bootstrap_unit_hours``), so the size is counted in days;
2. score the sample as the evaluation does (:func:`headline_differences`: the same per-patch
   scores, resampling, Hesterberg expansion and confidence as :func:`bzpipe.metrics.summary.summarize`);
3. repeat ``n_sims`` times: the share of samples in which each difference, and all of them, exclude
   zero on the U-Net's side is the power.

To guide a test design, take the population from outside the test split:
``benchmarks/verdict_power.py`` uses the development winter, whose 190 site-days are five times the
demo test split's (the demo's settings were chosen there among a few candidates, so its skill may
be a little optimistic).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bzpipe.metrics import bootstrap as bs
from bzpipe.metrics import contingency as ct
from bzpipe.metrics.summary import HEADLINE, ScoreSettings, per_patch_scores


@dataclass(frozen=True)
class PatchScores:
    """Per-patch scores of every method: what the bootstrap resamples.

    ``mae[m]`` ``(n,)`` dBZ; ``tables[m][event]`` ``(n, 4)`` contingency counts (hits, misses,
    false alarms, correct negatives) against the truth's events; ``sites``, ``units`` (resampling
    unit labels) and ``days`` (UTC day number) ``(n,)``.
    """

    sites: np.ndarray
    units: np.ndarray
    days: np.ndarray
    mae: dict[str, np.ndarray]
    tables: dict[str, dict[str, np.ndarray]]

    @classmethod
    def score(cls, truth: np.ndarray, preds: dict[str, np.ndarray], row_above: np.ndarray,
              valid: np.ndarray, sites: np.ndarray, times: np.ndarray, settings: ScoreSettings
              ) -> PatchScores:
        """Score the blind-zone fills as :func:`~bzpipe.metrics.summary.summarize` does (same arguments)."""
        truth_events = per_patch_scores(truth, truth, row_above, valid, settings)
        mae, tables = {}, {}
        for m, p in preds.items():
            per = per_patch_scores(p, truth, row_above, valid, settings)
            mae[m] = per["MAE"]
            tables[m] = {e: ct.table_counts(per[e], truth_events[e])
                         for (key, _) in HEADLINE if key != "MAE" for e in [key.removesuffix("_CSI")]}
        sites = np.array([str(v) for v in np.asarray(sites).tolist()], dtype=object)
        t = np.asarray(times).astype("datetime64[ns]")
        days = t.astype("datetime64[D]").astype(np.int64)
        return cls(sites, bs.unit_labels(sites, t, settings.bootstrap_unit_hours), days, mae, tables)

    def take(self, idx: np.ndarray, units: np.ndarray | None = None) -> PatchScores:
        """The patches ``idx`` (repeats allowed), with new unit labels if given."""
        return PatchScores(self.sites[idx], self.units[idx] if units is None else units, self.days[idx],
                           {m: v[idx] for m, v in self.mae.items()},
                           {m: {e: c[idx] for e, c in t.items()} for m, t in self.tables.items()})


def headline_differences(s: PatchScores, reference: str = "UNET", baselines: tuple[str, ...] = ("REP", "MAR"),
                         settings: ScoreSettings | None = None) -> dict[str, dict[str, bs.Interval]]:
    """``{baseline: {score: interval of reference - baseline}}`` for the :data:`HEADLINE` scores:
    the numbers :func:`~bzpipe.metrics.summary.summarize` puts under ``differences.all``."""
    st = settings or ScoreSettings()
    w = bs.block_weights(s.units, st.n_bootstrap, st.seed, strata=s.sites)
    k, n = bs.n_units(s.units), s.sites.size
    ones = np.ones((1, n))
    out: dict[str, dict[str, bs.Interval]] = {}
    for b in baselines:
        out[b] = {}
        for key, _ in HEADLINE:
            if key == "MAE":
                mr, mb = s.mae[reference], s.mae[b]
                est = float(bs.weighted_means(mr, ones)[0] - bs.weighted_means(mb, ones)[0])
                rep = bs.weighted_means(mr, w) - bs.weighted_means(mb, w)
            else:
                e = key.removesuffix("_CSI")
                cr, cb = s.tables[reference][e], s.tables[b][e]
                est = float(ct.scores_from_counts(cr.sum(0))["CSI"] - ct.scores_from_counts(cb.sum(0))["CSI"])
                rep = ct.scores_from_counts(w @ cr)["CSI"] - ct.scores_from_counts(w @ cb)["CSI"]
                if cr[:, :2].sum() == 0:                 # no event in the truth: no score, as the report
                    est, rep = float("nan"), np.full_like(rep, np.nan)
            out[b][key] = bs.from_replicates(est, rep, st.confidence, n, k)
    return out


def ahead(diffs: dict[str, dict[str, bs.Interval]]) -> dict[str, dict[str, bool]]:
    """Whether each interval excludes zero on the reference's side (the verdict's "significantly ahead")."""
    lower = dict(HEADLINE)
    return {b: {k: bool(iv.high < 0) if lower[k] else bool(iv.low > 0) for k, iv in d.items()}
            for b, d in diffs.items()}


def verdict_power(s: PatchScores, n_site_days: int, *, n_sims: int = 200, block_days: int = 3, seed: int = 0,
                  reference: str = "UNET", baselines: tuple[str, ...] = ("REP", "MAR"),
                  settings: ScoreSettings | None = None) -> dict[str, Any]:
    """The share of ``n_sims`` resampled test splits of ``n_site_days`` site-days in which each headline
    difference, and all of them together, is significantly on the reference's side.

    Returns ``{"n_site_days": mean site-days drawn, "n_units": mean bootstrap units drawn, "n_sims",
    "all_ahead": share, "ahead": {baseline: {score: share}}, "estimate_mean" / "estimate_sd":
    {baseline: {score: over the samples}}}``.
    """
    if n_site_days < 3 or n_sims < 1:
        raise ValueError(f"need n_site_days >= 3 and n_sims >= 1, got {n_site_days}, {n_sims}")
    st = settings or ScoreSettings()
    block = np.array([f"{site}/{d // block_days}" for site, d in zip(s.sites, s.days, strict=True)],
                     dtype=object)
    names, inv = np.unique(block.astype(str), return_inverse=True)
    members = [np.flatnonzero(inv == j) for j in range(names.size)]
    days_in = np.array([np.unique(s.days[ix]).size for ix in members])
    rng = np.random.default_rng(seed)
    hits = {b: {k: 0 for k, _ in HEADLINE} for b in baselines}
    ests = {b: {k: [] for k, _ in HEADLINE} for b in baselines}
    all_hits, drawn, drawn_days = 0, [], []
    for sim in range(n_sims):
        picks: list[int] = []
        while days_in[picks].sum() < n_site_days:
            picks.append(int(rng.integers(names.size)))
        idx = np.concatenate([members[j] for j in picks])
        relabel = np.concatenate([s.units[members[j]].astype(str) + f"#{i}" for i, j in enumerate(picks)])
        sample = s.take(idx, relabel.astype(object))
        d = headline_differences(sample, reference, baselines, replace(st, seed=st.seed + sim))
        a = ahead(d)
        all_hits += all(v for row in a.values() for v in row.values())
        drawn.append(bs.n_units(sample.units))
        drawn_days.append(int(days_in[picks].sum()))
        for b in baselines:
            for k, _ in HEADLINE:
                hits[b][k] += a[b][k]
                ests[b][k].append(d[b][k].estimate)
    return {"n_site_days": float(np.mean(drawn_days)), "n_units": float(np.mean(drawn)), "n_sims": n_sims,
            "block_days": block_days, "unit_hours": st.bootstrap_unit_hours,
            "all_ahead": all_hits / n_sims,
            "ahead": {b: {k: v / n_sims for k, v in r.items()} for b, r in hits.items()},
            "estimate_mean": {b: {k: float(np.nanmean(v)) for k, v in r.items()} for b, r in ests.items()},
            "estimate_sd": {b: {k: float(np.nanstd(v)) for k, v in r.items()} for b, r in ests.items()}}
