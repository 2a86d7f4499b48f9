"""All scores of all methods on the same patches and the same mask, with bootstrap intervals.

:func:`summarize` takes the blind-zone fields of every method (dBZ, NaN = no
echo), the truth, and the single evaluation mask ``valid``, and returns a
JSON-able dict (see :func:`summarize` for its layout).  Every method is scored
by the same functions with the same ``valid`` mask and the same bootstrap
resamples (paired), per site and for all sites together (resampling within
sites, so the site mix is kept).  The resampling unit is a block of patches,
one site-day by default (:mod:`bzpipe.metrics.bootstrap`): neighbouring
patches are correlated and must not count as independent.

An event that never occurs in the truth of a site (e.g. no virga in the test
split) has no defined POD / CSI / HSS there: those scores are NaN (null in
JSON) and ``events_in_truth`` / ``undefined_events`` say why, so a report
never shows 0/0 as a score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bzpipe.metrics import bootstrap as bs
from bzpipe.metrics import contingency as ct
from bzpipe.metrics import distributions as dist
from bzpipe.metrics import pointwise as pw
from bzpipe.metrics import regimes as rg
from bzpipe.metrics import spectra as sp
from bzpipe.metrics import uncertainty as uq

#: per-patch continuous scores: name -> True if larger is better (bias: closer to 0, listed as False)
CONTINUOUS: dict[str, bool] = {"MAE": False, "RMSE": False, "bias": False, "Dice": True, "EMD": False}
#: events of the contingency tables
EVENTS: tuple[str, ...] = ("cloud", "shallow_snowfall", "virga")
EVENT_SCORES: tuple[str, ...] = ("POD", "FAR", "SR", "CSI", "HSS", "bias")
#: event scores that are undefined when the truth holds no event (all would be 0/0 or meaningless)
NEEDS_EVENTS: tuple[str, ...] = ("POD", "CSI", "HSS", "bias")
ALL = "all"
#: the verdict's headline scores, (summary key, lower is better): MAE and the three events' CSI
HEADLINE: tuple[tuple[str, bool], ...] = (("MAE", True), ("cloud_CSI", False),
                                          ("shallow_snowfall_CSI", False), ("virga_CSI", False))


@dataclass(frozen=True)
class ScoreSettings:
    """Thresholds and bootstrap settings (defaults as in King et al. 2024)."""

    echo_threshold_dbz: float = -60.0
    cloud_fraction: float = 0.05
    precip_threshold_dbz: float = -20.0
    pixels: str = "all"
    n_bootstrap: int = 500
    confidence: float = 0.9
    seed: int = 0
    spread_skill_bins: int = 10
    #: resampling unit of the block bootstrap: site and floor(time / unit_hours); <= 0: per patch (i.i.d.)
    bootstrap_unit_hours: float = 24.0


def per_patch_scores(pred: np.ndarray, truth: np.ndarray, row_above: np.ndarray, valid: np.ndarray,
                     s: ScoreSettings) -> dict[str, np.ndarray]:
    """Scores ``(n,)`` per patch of one method: the continuous ones and the three events (1/0/NaN).

    ``pred``, ``truth``: dBZ ``(n, rows, col)`` blind zone (row 0 = surface);
    ``row_above``: dBZ ``(n, col)`` of the first observed row; ``valid`` ``(n, rows, col)``.
    """
    kw = {"pixels": s.pixels, "echo_threshold_dbz": s.echo_threshold_dbz}
    return {
        "MAE": pw.mae(pred, truth, valid, **kw),
        "RMSE": pw.rmse(pred, truth, valid, **kw),
        "bias": pw.bias(pred, truth, valid, **kw),
        "Dice": pw.dice(pred, truth, valid, echo_threshold_dbz=s.echo_threshold_dbz),
        "EMD": dist.emd(pred, truth, valid),
        "cloud": ct.cloud_presence(pred, valid, echo_threshold_dbz=s.echo_threshold_dbz,
                                   min_fraction=s.cloud_fraction),
        "shallow_snowfall": ct.shallow_snowfall(pred[:, 0], row_above, valid_lowest=valid[:, 0],
                                                precip_threshold_dbz=s.precip_threshold_dbz),
        "virga": ct.virga(pred[:, 0], row_above, valid_lowest=valid[:, 0],
                          precip_threshold_dbz=s.precip_threshold_dbz),
    }


def cloud_base_heights(bz_dbz: np.ndarray, valid: np.ndarray, heights_bz: np.ndarray, base_above: np.ndarray,
                       echo_threshold_dbz: float = -60.0) -> np.ndarray:
    """Lowest-echo height ``(n, col)`` of the full curtain: in the blind zone if it has echo, else above.

    ``base_above`` ``(n, col)``: lowest echo height above the blind zone (observed,
    shared by all methods), NaN where none.
    """
    low = dist.lowest_echo_height(bz_dbz, heights_bz, valid, echo_threshold_dbz=echo_threshold_dbz)
    return np.where(np.isfinite(low), low, base_above)


def _json(x: Any) -> Any:
    """NaN/inf -> None, numpy -> Python, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json(x.tolist())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, bs.Interval):
        return _json(x.to_dict())
    return x


def _site_indices(sites: np.ndarray) -> dict[str, np.ndarray]:
    out = {ALL: np.arange(sites.size)}
    for s in sorted(set(sites.tolist())):
        out[str(s)] = np.flatnonzero(sites == s)
    return out


def summarize(truth: np.ndarray, preds: dict[str, np.ndarray], row_above: np.ndarray, valid: np.ndarray,
              sites: np.ndarray, heights: np.ndarray, base_above: np.ndarray, settings: ScoreSettings, *,
              reference: str | None = "UNET", spread: np.ndarray | None = None,
              quantiles: dict[float, np.ndarray] | None = None, mean_key: str | None = None,
              uq_valid: np.ndarray | None = None, times: np.ndarray | None = None) -> dict[str, Any]:
    """Score every method in ``preds`` against ``truth``.

    Args:
        truth, preds[m]: dBZ ``(n, B, W)`` blind zone, row 0 = surface, NaN = no echo.
        row_above: dBZ ``(n, W)``, first observed row above the blind zone.
        valid: bool ``(n, B, W)``, the one evaluation mask for every method.
        sites: ``(n,)`` site code of each patch.
        heights: ``(H,)`` row-centre heights of the whole curtain, m; the first B are the blind zone.
        base_above: ``(n, W)`` lowest observed echo height above the blind zone (NaN none), m.
        reference: the method whose paired differences to every other method are reported.
        spread, quantiles, mean_key: MC-dropout std ``(n, B, W)`` dBZ, ``{q: (n, B, W)}`` dBZ,
            and which entry of ``preds`` is the MC mean; for the uncertainty block.
        uq_valid: mask for the uncertainty block (default ``valid``); pass the blind-zone
            mask *before* spread exclusion, since excluding high spread biases spread-skill.
        times: ``(n,)`` datetime64 start of each patch: the bootstrap blocks are site-days
            (``settings.bootstrap_unit_hours``); without times every patch is its own unit.

    Returns a dict (strict JSON once through :func:`to_json`) with ``settings``,
    ``methods``, ``n_patches`` {site: n}, ``bootstrap`` {site: {"units": k, ...}},
    ``events_in_truth`` {site: {event: n}}, ``undefined_events`` {site: [event, ...]},
    ``scores`` {site: {method: {score: interval, event: {"table": {...}, score: interval}}}},
    ``differences`` {site: {other: {score: interval of reference - other}}}, ``regimes`` (MAE per
    class of patch, :func:`_regime_block`), ``psd``, ``cloud_base``, ``mask``, ``uncertainty``.
    """
    n, b, w = truth.shape
    s = settings
    methods = list(preds)
    sites = np.array([str(v) for v in np.asarray(sites).tolist()], dtype=object)
    site_ix = _site_indices(sites)
    t = np.full(n, np.datetime64("NaT"), "datetime64[ns]") if times is None else np.asarray(times)
    units = bs.unit_labels(sites, t, s.bootstrap_unit_hours if times is not None else 0.0)
    weights, n_units = {}, {}
    for k, (site, ix) in enumerate(site_ix.items()):
        weights[site] = bs.block_weights(units[ix], s.n_bootstrap, s.seed + k, strata=sites[ix])
        n_units[site] = bs.n_units(units[ix])
    per = {m: per_patch_scores(preds[m], truth, row_above, valid, s) for m in methods}
    truth_events = per_patch_scores(truth, truth, row_above, valid, s)
    counts = {m: {e: ct.table_counts(per[m][e], truth_events[e]) for e in EVENTS} for m in methods}
    events_in_truth = {site: {e: int(np.nansum(truth_events[e][ix])) for e in EVENTS}
                       for site, ix in site_ix.items()}
    undefined = {site: [e for e in EVENTS if events_in_truth[site][e] == 0] for site in site_ix}

    scores: dict[str, dict[str, Any]] = {}
    diffs: dict[str, dict[str, Any]] = {}
    for site, ix in site_ix.items():
        wts, k_units = weights[site], n_units[site]
        scores[site], reps_by_method = {}, {}
        for m in methods:
            entry: dict[str, Any] = {}
            reps: dict[str, np.ndarray] = {}
            for name in CONTINUOUS:
                vals = per[m][name][ix]
                est = float(bs.weighted_means(vals, np.ones((1, ix.size)))[0]) if ix.size else float("nan")
                reps[name] = bs.weighted_means(vals, wts)
                entry[name] = bs.from_replicates(est, reps[name], s.confidence, int(ix.size), k_units)
            for e in EVENTS:
                c = counts[m][e][ix]
                total = c.sum(axis=0)
                est_scores = ct.scores_from_counts(total)
                rep_scores = ct.scores_from_counts(wts @ c)          # (n_boot, 4) weighted tables
                cells = ("hits", "misses", "false_alarms", "correct_negatives")
                ev: dict[str, Any] = {"table": dict(zip(cells, (int(v) for v in total)))}
                for k in EVENT_SCORES:
                    est_k, rep_k = float(est_scores[k]), rep_scores[k]
                    if e in undefined[site] and k in NEEDS_EVENTS:     # no event in the truth: no score
                        est_k, rep_k = float("nan"), np.full_like(rep_k, np.nan)
                    ev[k] = bs.from_replicates(est_k, rep_k, s.confidence, int(ix.size), k_units)
                    reps[f"{e}_{k}"] = rep_k
                entry[e] = ev
            scores[site][m] = entry
            reps_by_method[m] = reps
        if reference in preds:
            diffs[site] = {}
            for m in methods:
                if m == reference:
                    continue
                d: dict[str, Any] = {}
                for key in list(CONTINUOUS) + [f"{e}_{k}" for e in EVENTS for k in ("CSI", "HSS")]:
                    est_ref, est_m = _estimate(scores[site][reference], key), _estimate(scores[site][m], key)
                    rep_diff = reps_by_method[reference][key] - reps_by_method[m][key]
                    d[key] = bs.from_replicates(est_ref - est_m, rep_diff, s.confidence, int(ix.size),
                                                k_units)
                diffs[site][m] = d

    out: dict[str, Any] = {
        "settings": asdict(s),
        "methods": methods,
        "reference": reference,
        "n_patches": {k: int(v.size) for k, v in site_ix.items()},
        "bootstrap": {site: {"units": n_units[site],
                             "unit": (f"site x {s.bootstrap_unit_hours:g} h"
                                      if times is not None and s.bootstrap_unit_hours > 0 else "patch"),
                             "resamples": s.n_bootstrap, "paired": True, "stratified_by": "site",
                             "interval": "percentile, expanded for few units (Hesterberg 2015)"}
                      for site in site_ix},
        "events_in_truth": events_in_truth,
        "undefined_events": undefined,
        "scores": scores,
        "differences": diffs,
        "mask": {"pixels": int(valid.size), "valid": int(valid.sum()),
                 "excluded": int(valid.size - valid.sum())},
    }
    regime = rg.classify_patches(truth, row_above, valid, echo_threshold_dbz=s.echo_threshold_dbz)
    out["regimes"] = {site: _regime_block({m: per[m]["MAE"][ix] for m in methods}, regime[ix], units[ix],
                                          weights[site], reference, s.confidence)
                      for site, ix in site_ix.items()}
    out["psd"] = _psd_block(truth, preds, valid, heights, b)
    out["cloud_base"] = _cloud_base_block(truth, preds, valid, heights, base_above, b, s.echo_threshold_dbz)
    if spread is not None and mean_key in preds:
        out["uncertainty"] = _uncertainty_block(preds[mean_key], spread, quantiles or {}, truth,
                                                valid if uq_valid is None else uq_valid, s.spread_skill_bins)
    return out


def _regime_block(mae: dict[str, np.ndarray], regime: np.ndarray, units: np.ndarray, wts: np.ndarray,
                  reference: str | None, confidence: float) -> dict[str, Any]:
    """MAE of every method per class of patch (:mod:`bzpipe.metrics.regimes`), with the paired
    differences ``reference - other``: the same bootstrap resamples as every other score, each
    replicate's mean taken over the patches of the class it drew."""
    out: dict[str, Any] = {}
    n = regime.size
    for k, name in enumerate(rg.REGIMES):
        sub = np.flatnonzero(regime == k)
        w = wts[:, sub]
        k_units = bs.n_units(units[sub])
        est = {m: float(bs.weighted_means(v[sub], np.ones((1, sub.size)))[0]) for m, v in mae.items()}
        reps = {m: bs.weighted_means(v[sub], w) for m, v in mae.items()}
        entry: dict[str, Any] = {
            "label": rg.REGIME_LABELS[name], "n": int(sub.size), "share": sub.size / n if n else float("nan"),
            "units": k_units,
            "MAE": {m: bs.from_replicates(est[m], reps[m], confidence, int(sub.size), k_units) for m in mae}}
        if reference in mae:
            entry["MAE_difference"] = {
                m: bs.from_replicates(est[reference] - est[m], reps[reference] - reps[m], confidence,
                                      int(sub.size), k_units)
                for m in mae if m != reference}
        out[name] = entry
    return out


def _estimate(entry: dict[str, Any], key: str) -> float:
    if key in entry:
        return entry[key].estimate
    event, _, score = key.rpartition("_")
    return entry[event][score].estimate


def _psd_block(truth: np.ndarray, preds: dict[str, np.ndarray], valid: np.ndarray, heights: np.ndarray,
               b: int) -> dict[str, Any]:
    dz = float(np.median(np.diff(heights))) if heights.size > 1 else 1.0
    freq, p_truth = sp.vertical_spectrum_db(truth, dz, valid)
    power = {"truth": sp.mean_db(p_truth)}
    for m, f in preds.items():
        power[m] = sp.mean_db(sp.vertical_spectrum_db(f, dz, valid)[1])
    return {"freq_per_km": freq, "power_db": power, "dz_m": dz,
            "definition": "King et al. (2024): 20 log10 of the column-mean |rfft| along height of the "
                          "blind-zone dBZ (no echo = -60), averaged over patches in dB"}


def row_edges(heights: np.ndarray) -> np.ndarray:
    """Edges ``(H+1,)`` of rows with centres ``heights`` (midpoints; outer edges mirrored, bottom >= 0)."""
    h = np.asarray(heights, dtype=np.float64)
    if h.size == 1:
        return np.array([0.0, 2 * h[0]])
    mid = (h[1:] + h[:-1]) / 2
    return np.concatenate([[max(0.0, h[0] - (mid[0] - h[0]))], mid, [h[-1] + (h[-1] - mid[-1])]])


def _cloud_base_block(truth: np.ndarray, preds: dict[str, np.ndarray], valid: np.ndarray, heights: np.ndarray,
                      base_above: np.ndarray, b: int, thr: float) -> dict[str, Any]:
    edges = row_edges(heights)
    dens, nan_frac, mean, in_bz = {}, {}, {}, {}
    for name, field in [("truth", truth)] + list(preds.items()):
        h = cloud_base_heights(field, valid, np.asarray(heights, dtype=np.float64)[:b], base_above, thr)
        dens[name], nan_frac[name] = dist.pdf(h, edges)
        finite = h[np.isfinite(h)]
        mean[name] = float(finite.mean()) if finite.size else float("nan")
        in_bz[name] = float(np.mean(finite < edges[b])) if finite.size else float("nan")
    return {"edges_m": edges, "blind_zone_top_m": float(edges[b]), "density": dens,
            "no_echo_fraction": nan_frac, "mean_m": mean, "in_blind_zone_fraction": in_bz}


def _uncertainty_block(mean: np.ndarray, spread: np.ndarray, quantiles: dict[float, np.ndarray],
                       truth: np.ndarray, valid: np.ndarray, n_bins: int) -> dict[str, Any]:
    ss = uq.spread_skill(mean, spread, truth, valid, n_bins=n_bins)
    cov = []
    for lo, hi, nominal in uq.central_intervals(tuple(quantiles)):
        cov.append({"lower_q": lo, "upper_q": hi, "nominal": nominal,
                    "observed": uq.interval_coverage(quantiles[lo], quantiles[hi], truth, valid)})
    return {"spread_skill": ss, "spread_skill_ratio": uq.spread_skill_ratio(mean, spread, truth, valid),
            "coverage": cov}


def to_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary in strict JSON form (NaN -> null, intervals -> dicts)."""
    return _json(summary)
