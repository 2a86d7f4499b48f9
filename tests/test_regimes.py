"""MAE by class of patch (bzpipe.metrics.regimes): the classes, the summary block and the report table."""

from __future__ import annotations

import numpy as np
import pytest

from bzpipe.metrics.regimes import REGIMES, classify_patches
from bzpipe.metrics.summary import ScoreSettings, summarize, to_json
from bzpipe.report import markdown_summary, tables
from bzpipe.report.html import render

ROWS, COLS = 6, 10


def _patch(above: float, below: float) -> tuple[np.ndarray, np.ndarray]:
    """Truth blind zone and lowest visible row with echo (-10 dBZ) in the given share of the columns
    of the lowest visible row (``above``) and of the lowest four blind-zone rows (``below``)."""
    truth = np.full((ROWS, COLS), np.nan)
    row = np.full(COLS, np.nan)
    row[: int(round(above * COLS))] = -10.0
    truth[:4, : int(round(below * COLS))] = -10.0
    truth[4:, :] = -20.0            # echo in the upper blind-zone rows never decides the class
    return truth, row


def _stack(pairs: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts, rs = zip(*(_patch(a, b) for a, b in pairs), strict=True)
    truth, above = np.stack(ts), np.stack(rs)
    return truth, above, np.ones(truth.shape, bool)


def test_each_class_is_decided_by_echo_above_and_in_the_lowest_rows():
    truth, above, valid = _stack([(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.5, 0.2), (0.2, 0.5)])
    got = [REGIMES[k] for k in classify_patches(truth, above, valid)]
    assert got == ["echo_through", "echo_above_only", "echo_below_only", "neither",
                   "echo_above_only", "echo_below_only"]


def test_the_share_must_exceed_the_threshold_and_only_counted_pixels_count():
    truth, above, valid = _stack([(0.3, 0.3), (0.4, 0.4)])
    assert [REGIMES[k] for k in classify_patches(truth, above, valid)] == ["neither", "echo_through"]
    # hide the clear columns of the second patch: what is left is all echo, above and below
    valid[1, :, 4:] = False
    truth[1, :4, :4] = np.nan                     # and now its counted lowest rows are clear
    assert REGIMES[classify_patches(truth, above, valid)[1]] == "echo_above_only"
    # one lowest row instead of four: the upper three rows' echo no longer counts
    truth2, above2, valid2 = _stack([(0.0, 1.0)])
    truth2[0, 0] = np.nan
    assert REGIMES[classify_patches(truth2, above2, valid2)[0]] == "echo_below_only"
    assert REGIMES[classify_patches(truth2, above2, valid2, low_rows=1)[0]] == "neither"


def test_mismatched_shapes_and_bad_rows_are_refused():
    truth, above, valid = _stack([(1.0, 1.0)])
    with pytest.raises(ValueError, match="do not match"):
        classify_patches(truth, above[:, :-1], valid)
    with pytest.raises(ValueError, match="low_rows"):
        classify_patches(truth, above, valid, low_rows=0)


def _scored(n_boot: int = 200) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """12 patches over 6 days: 6 with echo through the column, 4 virga-like, 2 shallow, none clear.
    REP copies the row above (exact where echo goes through), the U-Net is 2 dBZ off everywhere
    but fills the virga and shallow patches right."""
    pairs = [(1.0, 1.0)] * 6 + [(1.0, 0.0)] * 4 + [(0.0, 1.0)] * 2
    truth, above, valid = _stack(pairs)
    truth[:, 4:] = np.nan                              # upper blind-zone rows clear: REP's copy is exact
    truth[:6, 4:] = -10.0
    rep = np.repeat(above[:, None, :], ROWS, axis=1)   # copy the lowest visible row down
    unet = np.where(np.isfinite(truth), truth + 2.0, np.nan)
    preds = {"UNET": unet, "REP": rep}
    times = np.datetime64("2019-01-01T00") + np.arange(12) // 2 * np.timedelta64(1, "D")
    s = summarize(truth, preds, above, valid, np.array(["nsa"] * 12), np.arange(16) * 100.0 + 50.0,
                  np.full((12, COLS), np.nan), ScoreSettings(n_bootstrap=n_boot), reference="UNET",
                  times=times)
    return to_json(s), truth, preds


def test_the_summary_gives_every_methods_mae_per_class_with_paired_differences():
    s, truth, preds = _scored()
    block = s["regimes"]["all"]
    assert list(block) == list(REGIMES)
    assert [block[k]["n"] for k in REGIMES] == [6, 4, 2, 0]
    assert sum(block[k]["share"] for k in REGIMES if block[k]["share"] is not None) == pytest.approx(1.0)
    through, virga = block["echo_through"], block["echo_above_only"]
    assert through["MAE"]["REP"]["estimate"] == pytest.approx(0.0)       # the copy is exact there
    assert through["MAE"]["UNET"]["estimate"] == pytest.approx(2.0)
    assert through["MAE_difference"]["REP"]["estimate"] == pytest.approx(2.0)
    # virga-like: REP copies echo (-10 dBZ) down over a clear blind zone (no echo = -60 dBZ): 50 dBZ in
    # every pixel; the U-Net leaves it clear
    assert virga["MAE"]["REP"]["estimate"] == pytest.approx(50.0)
    assert virga["MAE"]["UNET"]["estimate"] == pytest.approx(0.0)
    assert virga["MAE_difference"]["REP"]["estimate"] == pytest.approx(-50.0)
    assert virga["MAE_difference"]["REP"]["high"] < 0 and through["MAE_difference"]["REP"]["low"] > 0
    assert through["units"] == 3 and virga["units"] == 2               # day blocks within the class
    # the whole-split MAE is the patch-weighted mix of the classes'
    total = sum(block[k]["n"] * block[k]["MAE"]["UNET"]["estimate"] for k in REGIMES if block[k]["n"])
    assert total / 12 == pytest.approx(s["scores"]["all"]["UNET"]["MAE"]["estimate"])
    # a class without patches has no score, and says so with n = 0 (null in JSON, never 0)
    assert block["neither"]["n"] == 0 and block["neither"]["MAE"]["UNET"]["estimate"] is None


def test_the_report_shows_the_class_table():
    s, _, _ = _scored(n_boot=50)
    s["regimes"]["all"] = dict(sorted(s["regimes"]["all"].items()))    # as scores.json stores it
    header, rows = tables.regime_rows(s, "all")
    assert header[:4] == ["patches: truth has", "patches (share)", "UNET MAE (dBZ)", "REP MAE (dBZ)"]
    assert header[-1] == "UNET minus REP"
    assert rows[0][0].startswith("echo above and below") and rows[0][1] == "6 (50%)"
    assert rows[3][2] == "n/a"
    verdict = {"headline": "h", "reasons": [], "checks": [], "ahead": True}
    assert "echo above, none below (virga-like)" in markdown_summary(s, verdict)
    assert "no echo above, echo below (shallow)" in render("t", verdict, s, {}, {})
