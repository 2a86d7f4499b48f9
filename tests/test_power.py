"""The verdict's power analysis: it scores as the report does, and its power behaves as power must."""

from __future__ import annotations

import numpy as np
import pytest

from bzpipe.metrics.power import HEADLINE, PatchScores, ahead, headline_differences, verdict_power
from bzpipe.metrics.summary import ScoreSettings, summarize
from bzpipe.report.verdict import HEADLINE_SCORES

ROWS, COLS, PER_DAY = 4, 8, 3


def _population(n_days: int, skill: float, seed: int = 0):
    """``n_days`` days at each of two sites, 3 patches a day, each a shallow-snowfall, virga, echo-through
    or clear patch (the truth's regime drawn per day and patch).  REP copies the row above down; MAR
    is REP plus noise; the U-Net gets each patch's regime right with
    probability ``skill`` (else it copies the row above like REP) plus day-correlated noise."""
    rng = np.random.default_rng(seed)
    n = 2 * n_days * PER_DAY
    regime = rng.integers(0, 4, n)                            # 0 shallow, 1 virga, 2 through, 3 clear
    above = np.where(np.isin(regime, (1, 2))[:, None], rng.uniform(-15, 5, (n, COLS)), np.nan)
    truth = np.full((n, ROWS, COLS), np.nan)
    low = np.isin(regime, (0, 2))
    truth[low] = rng.uniform(-15, 5, (int(low.sum()), ROWS, COLS))
    rep = np.repeat(above[:, None, :], ROWS, axis=1)
    day_noise = np.repeat(rng.normal(0, 3, n // PER_DAY), PER_DAY)[:, None, None]
    right = rng.random(n) < skill
    unet = np.where(right[:, None, None], truth, rep) + day_noise
    mar = rep + rng.normal(0, 4, rep.shape)                   # REP, noisier (no echo stays no echo)
    sites = np.array(["nsa"] * (n // 2) + ["oli"] * (n // 2))
    day = np.tile(np.repeat(np.arange(n_days), PER_DAY), 2)
    times = np.datetime64("2019-01-01T00", "ns") + day * np.timedelta64(1, "D") \
        + np.tile(np.arange(PER_DAY), n // PER_DAY) * np.timedelta64(30, "m")
    return truth, {"UNET": unet, "REP": rep, "MAR": mar}, above, np.ones(truth.shape, bool), sites, times


def test_the_headline_differences_are_the_reports():
    truth, preds, above, valid, sites, times = _population(20, 0.7)
    st = ScoreSettings(n_bootstrap=300, seed=7)
    s = summarize(truth, preds, above, valid, sites, np.arange(16) * 100.0 + 50.0,
                  np.full(above.shape, np.nan), st, reference="UNET", times=times)
    mine = headline_differences(PatchScores.score(truth, preds, above, valid, sites, times, st), settings=st)
    for b in ("REP", "MAR"):
        for key, _ in HEADLINE:
            ref, iv = s["differences"]["all"][b][key], mine[b][key]
            assert (iv.estimate, iv.low, iv.high) == pytest.approx((ref.estimate, ref.low, ref.high), abs=1e-12)
    assert [(k, lower) for k, _, lower in HEADLINE_SCORES] == list(HEADLINE)


def test_power_rises_with_the_number_of_site_days_and_vanishes_without_skill():
    truth, preds, above, valid, sites, times = _population(40, 0.35, seed=1)
    st = ScoreSettings(n_bootstrap=200)
    scores = PatchScores.score(truth, preds, above, valid, sites, times, st)
    small = verdict_power(scores, 6, n_sims=40, settings=st)
    large = verdict_power(scores, 60, n_sims=40, settings=st)
    assert large["n_site_days"] >= 60 and small["n_site_days"] >= 6
    assert large["n_units"] == pytest.approx(large["n_site_days"])          # site-day units
    # with the split's 3-day blocks as the bootstrap's units the size is still counted in site-days
    st72 = ScoreSettings(n_bootstrap=200, bootstrap_unit_hours=72.0)
    r72 = verdict_power(PatchScores.score(truth, preds, above, valid, sites, times, st72), 60, n_sims=10,
                        settings=st72)
    assert r72["n_site_days"] >= 60 and r72["n_units"] <= r72["n_site_days"] / 2 and r72["unit_hours"] == 72
    assert large["ahead"]["REP"]["MAE"] > small["ahead"]["REP"]["MAE"] + 0.2
    assert large["all_ahead"] > small["all_ahead"] + 0.2
    # a U-Net that is REP plus noise is never significantly ahead of REP on the events
    none = {**preds, "UNET": preds["REP"] + 0.0}
    flat = verdict_power(PatchScores.score(truth, none, above, valid, sites, times, st), 60, n_sims=20, settings=st)
    assert flat["all_ahead"] == 0.0
    assert all(flat["ahead"]["REP"][k] == 0.0 for k, _ in HEADLINE)


def test_ahead_follows_the_direction_of_each_score():
    truth, preds, above, valid, sites, times = _population(20, 1.0)
    st = ScoreSettings(n_bootstrap=200)
    d = headline_differences(PatchScores.score(truth, preds, above, valid, sites, times, st), settings=st)
    a = ahead(d)
    assert d["REP"]["MAE"].high < 0 and a["REP"]["MAE"]          # lower MAE is better
    assert d["REP"]["virga_CSI"].low > 0 and a["REP"]["virga_CSI"]
    with pytest.raises(ValueError, match="n_site_days >= 3"):
        verdict_power(PatchScores.score(truth, preds, above, valid, sites, times, st), 2)


def test_a_sample_without_an_event_has_no_score_for_it():
    truth, preds, above, valid, sites, times = _population(20, 1.0)
    for p in preds.values():
        p[:, 0] = np.nan               # every fill clear at the surface: virga wherever echo is above
    st = ScoreSettings(n_bootstrap=50)
    scores = PatchScores.score(truth, preds, above, valid, sites, times, st)
    no_virga = scores.take(np.flatnonzero(scores.tables["REP"]["virga"][:, :2].sum(1) == 0))
    assert no_virga.tables["UNET"]["virga"][:, 2].sum() > 0 < no_virga.tables["REP"]["virga"][:, 2].sum()
    d = headline_differences(no_virga, settings=st)       # false alarms only: CSI 0 - 0, but no event
    assert np.isnan(d["REP"]["virga_CSI"].estimate) and not ahead(d)["REP"]["virga_CSI"]
    assert np.isfinite(d["REP"]["MAE"].estimate)
