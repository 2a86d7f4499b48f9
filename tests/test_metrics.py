"""Every metric against a hand-computed example, plus the edge cases (no cloud, all cloud, empty cells)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bzpipe import metrics as M
from bzpipe.metrics import bootstrap as B
from bzpipe.metrics import contingency as C

NAN = np.nan

# one 2 x 3 patch; the last column has no echo in either field
PRED = np.array([[-10.0, NAN, NAN], [0.0, -30.0, NAN]])
TRUTH = np.array([[-20.0, -40.0, NAN], [NAN, -30.0, NAN]])
# filled with -60: diffs = [10, -20, 0; 60, 0, 0]


# NaN results must come without RuntimeWarnings (mean of empty slice, 0/0)
pytestmark = pytest.mark.filterwarnings("error")


# --------------------------------------------------------------------------- pointwise


def test_mae_rmse_bias_hand_example():
    assert M.mae(PRED, TRUTH) == pytest.approx(90 / 6)
    assert M.rmse(PRED, TRUTH) == pytest.approx(math.sqrt((100 + 400 + 3600) / 6))
    assert M.bias(PRED, TRUTH) == pytest.approx(50 / 6)
    # only pixels where either field has echo (the both-clear column drops out)
    assert M.mae(PRED, TRUTH, pixels="echo") == pytest.approx(90 / 4)
    assert M.bias(PRED, TRUTH, pixels="echo") == pytest.approx(50 / 4)


def test_pointwise_respects_valid_mask_and_axis():
    valid = np.ones_like(PRED, bool)
    valid[1, 0] = False  # drop the 60 dBZ error
    assert M.mae(PRED, TRUTH, valid) == pytest.approx(30 / 5)
    stacked_p = np.stack([PRED, np.full_like(PRED, -60.0)])
    stacked_t = np.stack([TRUTH, np.full_like(TRUTH, NAN)])
    per_patch = M.mae(stacked_p, stacked_t)
    np.testing.assert_allclose(per_patch, [15.0, 0.0])  # -60 dBZ vs no echo is no error
    assert M.mae(stacked_p, stacked_t, axis=None) == pytest.approx(90 / 12)


def test_pointwise_empty_is_nan_without_warning():
    none = np.zeros_like(PRED, bool)
    assert math.isnan(M.mae(PRED, TRUTH, none))
    assert math.isnan(M.rmse(PRED, TRUTH, none))
    clear = np.full((3, 4), NAN)
    assert math.isnan(M.mae(clear, clear, pixels="echo"))  # no echo anywhere
    assert M.mae(clear, clear) == 0.0  # but all-clear predicted all-clear is perfect on all pixels


def test_fill_and_has_echo():
    np.testing.assert_array_equal(M.fill_no_echo([NAN, -70.0, -60.0, 5.0]), [-60, -60, -60, 5])
    np.testing.assert_array_equal(M.has_echo([NAN, -60.0, -59.9, 5.0]), [False, False, True, True])


def test_dice_hand_example_and_edges():
    # echo masks: pred [T F F; T T F], truth [T T F; F T F] -> |P&T| = 2, |P| = |T| = 3
    assert M.dice(PRED, TRUTH) == pytest.approx(4 / 6)
    clear = np.full((2, 2), NAN)
    assert math.isnan(M.dice(clear, clear))  # no cloud at all: undefined
    cloud = np.full((2, 2), 0.0)
    assert M.dice(cloud, cloud) == 1.0  # all cloud, all right
    assert M.dice(cloud, clear) == 0.0
    assert M.dice(np.full((2, 2), -60.0), cloud) == 0.0  # exactly -60 dBZ is not echo
    np.testing.assert_allclose(M.dice(np.stack([PRED, cloud[:, :1].repeat(3, 1)]),
                                      np.stack([TRUTH, np.zeros((2, 3))])), [4 / 6, 1.0])


# --------------------------------------------------------------------------- contingency


def test_cloud_presence_threshold_and_mask():
    f = np.full((4, 5), NAN)
    assert M.cloud_presence(f) == 0.0
    f[0, 0] = -30.0  # 1 of 20 pixels = 5 %
    assert M.cloud_presence(f) == 1.0
    assert M.cloud_presence(f, min_fraction=0.1) == 0.0
    valid = np.zeros_like(f, bool)
    valid[2:] = True  # 10 valid pixels, the echo is not among them
    assert M.cloud_presence(f, valid) == 0.0
    assert math.isnan(float(M.cloud_presence(f, np.zeros_like(f, bool))))
    assert M.cloud_presence(np.zeros((4, 5))) == 1.0  # all cloud
    np.testing.assert_array_equal(M.cloud_presence(np.stack([f, np.full((4, 5), NAN)])), [1.0, 0.0])


def test_shallow_snowfall_and_virga():
    above_weak = np.array([-25.0, NAN, -40.0])
    above_strong = np.array([-10.0, NAN, -40.0])
    low_strong = np.array([NAN, -20.0, -50.0])  # reaches the -20 dBZ threshold exactly
    low_clear = np.array([NAN, NAN, NAN])
    assert M.shallow_snowfall(low_strong, above_weak) == 1.0
    assert M.virga(low_strong, above_weak) == 0.0
    assert M.virga(low_clear, above_strong) == 1.0
    assert M.shallow_snowfall(low_clear, above_strong) == 0.0
    assert M.shallow_snowfall(low_strong, above_strong) == 0.0 and M.virga(low_strong, above_strong) == 0.0
    assert M.shallow_snowfall(low_strong, above_weak, precip_threshold_dbz=-15.0) == 0.0
    # the strong surface pixel is excluded -> no shallow snowfall; nothing valid -> undefined
    assert M.shallow_snowfall(low_strong, above_weak, valid_lowest=np.array([True, False, True])) == 0.0
    assert math.isnan(float(M.virga(low_strong, above_weak, valid_lowest=np.zeros(3, bool))))
    batch = M.shallow_snowfall(np.stack([low_strong, low_clear]), np.stack([above_weak, above_weak]))
    np.testing.assert_array_equal(batch, [1.0, 0.0])


def test_contingency_scores_hand_example():
    t = M.contingency_table([1, 1, 0, 0, 1, NAN], [1, 0, 1, 0, 1, 1])
    assert (t.hits, t.misses, t.false_alarms, t.correct_negatives) == (2, 1, 1, 1)
    s = t.scores()
    assert s["POD"] == pytest.approx(2 / 3)
    assert s["FAR"] == pytest.approx(1 / 3)
    assert s["SR"] == pytest.approx(2 / 3)
    assert s["CSI"] == pytest.approx(0.5)
    assert s["bias"] == pytest.approx(1.0)
    assert s["HSS"] == pytest.approx(2 * (2 * 1 - 1 * 1) / (3 * 2 + 3 * 2))


def test_contingency_empty_cells_give_nan_not_errors():
    empty = M.contingency_table([], [])
    assert empty.n == 0 and all(math.isnan(v) for v in empty.scores().values())
    only_negatives = M.contingency_table([0, 0], [0, 0])
    s = only_negatives.scores()
    assert math.isnan(s["POD"]) and math.isnan(s["FAR"]) and math.isnan(s["CSI"]) and math.isnan(s["HSS"])
    perfect = C.ContingencyTable(3, 0, 0, 2)
    assert perfect.scores() == {"POD": 1.0, "FAR": 0.0, "SR": 1.0, "CSI": 1.0, "HSS": 1.0, "bias": 1.0}
    all_events = C.ContingencyTable(4, 0, 0, 0)
    assert all_events.csi() == 1.0 and math.isnan(all_events.hss())  # HSS undefined without negatives
    never = C.ContingencyTable(0, 3, 0, 5)
    assert never.pod() == 0.0 and math.isnan(never.far()) and never.csi() == 0.0


def test_table_counts_roundtrip_and_addition():
    f = np.array([1, 1, 0, 0, 1, NAN])
    o = np.array([1, 0, 1, 0, 1, 1])
    counts = C.table_counts(f, o)
    assert counts.shape == (6, 4) and counts[5].sum() == 0
    assert C.table_from_counts(counts) == M.contingency_table(f, o)
    assert (C.ContingencyTable(1, 2, 3, 4) + C.ContingencyTable(1, 1, 1, 1)) == C.ContingencyTable(2, 3, 4, 5)


def test_csi_contours():
    assert M.csi_from_pod_sr(1.0, 1.0) == pytest.approx(1.0)
    assert M.csi_from_pod_sr(0.5, 0.5) == pytest.approx(1 / 3)
    t = C.ContingencyTable(5, 3, 2, 7)
    assert M.csi_from_pod_sr(t.pod(), t.success_ratio()) == pytest.approx(t.csi())


# --------------------------------------------------------------------------- distributions


def test_histograms_bins_and_clipping():
    h = M.histograms(np.array([[-60.0, -59.0, 29.99, 45.0, NAN]]))
    assert h.shape == (64,)
    assert h[0] == 3 and h[63] == 2 and h.sum() == 5


def test_emd_hand_example():
    width = 90 / 64
    truth = np.full((2, 3), -60 + 10.5 * width)  # all pixels in bin 10
    clear = np.full((2, 3), NAN)  # no echo -> bin 0
    assert M.emd(clear, truth) == pytest.approx(10 * width)
    assert M.emd(truth, clear) == pytest.approx(10 * width)
    assert M.emd(truth, truth) == 0.0
    # half the pixels wrong by 10 bins -> half the distance
    half = truth.copy()
    half[0] = NAN
    assert M.emd(half, truth) == pytest.approx(5 * width)
    per = M.emd(np.stack([clear, truth]), np.stack([truth, truth]))
    np.testing.assert_allclose(per, [10 * width, 0.0])
    assert math.isnan(float(M.emd(truth, truth, np.zeros((2, 3), bool))))


def test_lowest_echo_height():
    dbz = np.full((4, 3), NAN)
    dbz[1, 0] = dbz[3, 0] = -20.0
    dbz[0, 2] = dbz[2, 2] = 0.0
    heights = np.array([100.0, 200.0, 300.0, 400.0])
    np.testing.assert_array_equal(M.lowest_echo_height(dbz, heights), [200.0, NAN, 100.0])
    valid = np.ones_like(dbz, bool)
    valid[0, 2] = False
    np.testing.assert_array_equal(M.lowest_echo_height(dbz, heights, valid), [200.0, NAN, 300.0])
    with pytest.raises(ValueError, match="heights_m"):
        M.lowest_echo_height(dbz, heights[:3])


def test_pdf():
    dens, nan_frac = M.pdf(np.array([150.0, 250.0, 250.0, NAN]), np.array([100.0, 200.0, 300.0]))
    np.testing.assert_allclose(dens, [1 / 300, 2 / 300])
    assert nan_frac == 0.25
    assert np.sum(dens * 100) == pytest.approx(1.0)
    dens, nan_frac = M.pdf(np.array([NAN, NAN]), np.array([0.0, 1.0]))
    assert nan_frac == 1.0 and dens.tolist() == [0.0]


# --------------------------------------------------------------------------- spectra


def test_vertical_spectrum_is_the_papers_definition():
    dbz = np.zeros((6, 3))  # 6 rows -> truncated to 4
    dbz[:, 0] = -10.0  # constant: |F0| = 4 * 10 = 40
    dbz[:, 1] = [10.0, -10.0, 10.0, -10.0, 99.0, 99.0]  # alternating: Nyquist only, |F2| = 40
    dbz[:, 2] = NAN  # no echo -> constant -60: |F0| = 240
    freq, pdb = M.vertical_spectrum_db(dbz, dz_m=250.0)
    np.testing.assert_allclose(freq, [0.0, 1.0, 2.0])  # cycles per km for 0.25 km rows
    # the column-MEAN AMPLITUDE in 20 log10 (King et al.), not a mean power
    np.testing.assert_allclose(pdb[[0, 2]], 20 * np.log10([(40 + 240) / 3, 40 / 3]))
    assert np.isnan(pdb[1])                               # zero amplitude: no dB value
    valid = np.ones_like(dbz, bool)
    valid[3, 2] = False  # that column is left out
    _, p2 = M.vertical_spectrum_db(dbz, 250.0, valid)
    np.testing.assert_allclose(p2[[0, 2]], 20 * np.log10([20.0, 20.0]))
    valid[4, 1] = False  # row 4 is beyond the truncation: no effect
    np.testing.assert_allclose(M.vertical_spectrum_db(dbz, 250.0, valid)[1], p2)
    _, p3 = M.vertical_spectrum_db(np.stack([dbz, dbz]), 250.0, np.zeros((2, 6, 3), bool))
    assert p3.shape == (2, 3) and np.isnan(p3).all()
    # the textbook periodogram differs: |F|^2 / n averaged over columns
    _, per = M.periodogram(dbz, 250.0)
    np.testing.assert_allclose(per, [(400 + 14400) / 3, 0.0, 400 / 3], atol=1e-9)


def test_spectra_average_in_db_over_patches():
    p = np.array([[0.0, 10.0], [20.0, 30.0], [NAN, NAN]])
    np.testing.assert_allclose(M.mean_db(p), [10.0, 20.0])           # dB averaged, not powers
    np.testing.assert_allclose(M.to_db([100.0, 1.0]), [20.0, 0.0])
    assert np.isnan(M.to_db([0.0])[0])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_indices_stratified_and_seeded():
    strata = np.array(["nsa"] * 3 + ["oli"] * 5)
    ix = B.bootstrap_indices(8, 50, seed=1, strata=strata)
    assert ix.shape == (50, 8)
    assert np.all(np.isin(ix[:, :3], [0, 1, 2])) and np.all(ix[:, 3:] >= 3)
    np.testing.assert_array_equal(ix, B.bootstrap_indices(8, 50, seed=1, strata=strata))


def test_bootstrap_mean_intervals():
    const = M.bootstrap_mean(np.full(20, 3.0), n_boot=50)
    assert (const.estimate, const.low, const.high) == (3.0, 3.0, 3.0)
    coin = M.bootstrap_mean(np.tile([0.0, 1.0], 50), n_boot=500, seed=0, confidence=0.95)
    assert coin.estimate == 0.5
    # normal approximation: 0.5 +- 1.96 * 0.5 / 10 = [0.40, 0.60]
    assert 0.36 < coin.low < 0.44 and 0.56 < coin.high < 0.64
    allnan = M.bootstrap_mean(np.full(5, NAN), n_boot=20)
    assert math.isnan(allnan.estimate) and math.isnan(allnan.low)
    assert f"{const:.2f}" == "3.00 [3.00, 3.00]"


def test_bootstrap_of_a_contingency_score():
    counts = C.table_counts(np.array([1, 1, 0, 0] * 10), np.array([1, 0, 1, 0] * 10))
    ix = M.bootstrap_indices(40, 200, seed=0)
    res = M.interval(lambda i: C.table_from_counts(counts[i]).csi(), ix, 0.9)
    assert res.estimate == pytest.approx(1 / 3)
    assert res.low < 1 / 3 < res.high


def test_block_weights_resample_whole_units_within_strata():
    units = np.array(["a/1", "a/1", "a/2", "b/1", "b/1", "b/1", "b/2"])
    sites = np.array(["a", "a", "a", "b", "b", "b", "b"])
    w = B.block_weights(units, 300, seed=3, strata=sites)
    assert w.shape == (300, 7)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 5])     # a unit's patches move together
    assert np.all(w[:, 0] + w[:, 2] == 2) and np.all(w[:, 3] + w[:, 6] == 2)   # 2 units drawn per site
    np.testing.assert_array_equal(w, B.block_weights(units, 300, seed=3, strata=sites))
    # weighted replicate means are paired: the same weights for two methods
    v = np.array([1.0, 3.0, NAN, 2.0, 2.0, 2.0, 6.0])
    np.testing.assert_allclose(B.weighted_means(v, np.ones((1, 7)))[0], 16 / 6)
    lab = B.unit_labels(sites, np.array(["2019-01-01T01", "2019-01-01T23", "2019-01-02T00", "NaT", "2019-01-01",
                                         "2019-01-01", "2019-01-01"], dtype="datetime64[ns]"))
    assert lab[0] == lab[1] != lab[2] and lab[3].startswith("b/p") and lab[4] == lab[5]
    assert len(set(B.unit_labels(sites, np.zeros(7, "datetime64[ns]"), 0.0))) == 7        # i.i.d.


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    from scipy.signal import lfilter

    e = rng.standard_normal(n) * np.sqrt(1 - phi ** 2)
    e[0] = rng.standard_normal()
    return lfilter([1.0], [1.0, -phi], e)


def test_block_bootstrap_covers_the_true_mean_of_an_ar1_series():
    """Nominal 90 % intervals on an AR(1) series (2-h e-folding, 8.5-min patches, 6-h windows a day,
    10 days x 2 sites): the site-day block bootstrap covers the true mean (0) in 85-95 % of the
    trials; resampling single patches covers it far less often (the issue measured ~22 %)."""
    step, per_day, days = 8.5 * 60, int(6 * 3600 / (8.5 * 60)), 10
    phi = np.exp(-step / 7200.0)
    t = (np.arange(days)[:, None] * 86400 + np.arange(per_day)[None, :] * step).ravel()
    times = np.tile(t, 2)
    sites = np.repeat(["nsa", "oli"], t.size)
    stamps = (times * 1e9).astype(np.int64).astype("datetime64[ns]")
    blocks, single = B.unit_labels(sites, stamps), B.unit_labels(sites, stamps, 0.0)
    k = B.n_units(blocks)
    rng = np.random.default_rng(20240611)
    cover = cover_iid = 0
    trials = 400
    for trial in range(trials):
        # a continuous AR(1) per site (through the 18-h gaps), sampled at the patch times
        steps = (t / step).round().astype(int)
        x = np.concatenate([_ar1(rng, steps[-1] + 1, phi)[steps] for _ in range(2)])
        w = B.block_weights(blocks, 200, seed=trial, strata=sites)
        iv = B.from_replicates(x.mean(), B.weighted_means(x, w), 0.9, x.size, n_units=k)
        cover += iv.low <= 0.0 <= iv.high
        w1 = B.block_weights(single, 200, seed=trial, strata=sites)
        iv1 = B.from_replicates(x.mean(), B.weighted_means(x, w1), 0.9, x.size)
        cover_iid += iv1.low <= 0.0 <= iv1.high
    assert 0.85 <= cover / trials <= 0.95, cover / trials
    assert cover_iid / trials < 0.5


def test_expanded_percentile_level():
    assert B.expanded_level(0.9, None) == 0.9 and B.expanded_level(0.9, 2) == 0.9
    assert 0.92 < B.expanded_level(0.9, 20) < 0.93                # sqrt(20/19) t_19 -> 92.4 %
    assert B.expanded_level(0.9, 10_000) == pytest.approx(0.9, abs=1e-3)


# --------------------------------------------------------------------------- uncertainty


def test_spread_exclusion_mask():
    spread = np.arange(1.0, 11.0).reshape(2, 5)
    keep = M.spread_exclusion_mask(spread, 0.8)  # cut at quantile 8.2
    assert keep.sum() == 8 and not keep.ravel()[8:].any()
    valid = np.ones_like(spread, bool)
    valid[0, 0] = False
    keep2 = M.spread_exclusion_mask(spread, 0.5, valid)  # over 2..10: median 6
    np.testing.assert_array_equal(np.flatnonzero(keep2), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(M.spread_exclusion_mask(spread, None, valid), valid)


def test_spread_skill_bins():
    truth = np.zeros(8)
    spread = np.array([1.0] * 4 + [3.0] * 4)
    mean = np.array([1.0, -1.0, 1.0, -1.0, 3.0, -3.0, 3.0, -3.0])
    ss = M.spread_skill(mean, spread, truth, n_bins=2)
    np.testing.assert_allclose(ss["spread"], [1.0, 3.0])
    np.testing.assert_allclose(ss["rmse"], [1.0, 3.0])
    np.testing.assert_array_equal(ss["count"], [4, 4])
    assert M.spread_skill_ratio(mean, spread, truth) == pytest.approx(math.sqrt(5) / math.sqrt(5))
    assert M.spread_skill_ratio(mean, spread / 2, truth) == pytest.approx(0.5)
    empty = M.spread_skill(mean, spread, truth, np.zeros(8, bool))
    assert empty["rmse"].size == 0


def test_interval_coverage():
    lo = np.array([-30.0, -30.0, -30.0, -30.0, NAN])
    hi = np.array([-10.0, -10.0, -10.0, -10.0, -20.0])
    truth = np.array([-30.0, -20.0, -10.0, 0.0, NAN])  # bounds inclusive; clear truth inside [-60, -20]
    assert M.interval_coverage(lo, hi, truth) == pytest.approx(0.8)
    assert M.interval_coverage(lo, hi, truth, np.array([0, 0, 0, 1, 0], bool)) == 0.0
    assert math.isnan(M.interval_coverage(lo, hi, truth, np.zeros(5, bool)))


def test_central_intervals():
    assert M.central_intervals((0.05, 0.5, 0.95)) == [(0.05, 0.95, 0.9)]
    assert M.central_intervals((0.1, 0.25, 0.5, 0.75, 0.9)) == [(0.1, 0.9, 0.8), (0.25, 0.75, 0.5)]
    assert M.central_intervals((0.5,)) == []


def test_vectorized_scores_match_the_table():
    rng = np.random.default_rng(5)
    tables = [C.ContingencyTable(*map(int, rng.integers(0, 4, 4))) for _ in range(30)]
    tables += [C.ContingencyTable(0, 0, 0, 0), C.ContingencyTable(0, 0, 0, 3), C.ContingencyTable(2, 0, 0, 0)]
    counts = np.array([[t.hits, t.misses, t.false_alarms, t.correct_negatives] for t in tables])
    vec = C.scores_from_counts(counts)
    for i, t in enumerate(tables):
        for k, v in t.scores().items():
            assert (math.isnan(v) and math.isnan(vec[k][i])) or vec[k][i] == pytest.approx(v)


def test_replicate_means_match_the_loop():
    v = np.array([1.0, NAN, 3.0, 10.0])
    ix = np.array([[0, 1, 2, 3], [1, 1, 1, 1], [3, 3, 0, 2]])
    np.testing.assert_allclose(B.replicate_means(v, ix), [14 / 3, NAN, 24 / 4])
    iv = B.from_replicates(2.0, np.array([NAN, 1.0, 3.0]), 0.5, 4)
    assert (iv.estimate, iv.low, iv.high, iv.n) == (2.0, 1.5, 2.5, 4)


def test_row_edges():
    from bzpipe.metrics.summary import row_edges

    np.testing.assert_allclose(row_edges(np.array([50.0, 150.0, 250.0])), [0, 100, 200, 300])
    np.testing.assert_allclose(row_edges(np.array([10.0, 30.0])), [0, 20, 40])
