"""The leak-free split: decorrelation time, blocks, assignment, and the no-overlap property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bzpipe.errors import ConfigError
from bzpipe.split import (
    DAY_S,
    NS,
    SPLITS,
    assign_blocks,
    autocorrelation,
    check_blocks,
    decorrelation_lag,
    default_block_s,
    efolding_time,
    make_blocks,
    make_split,
    place_patches,
    season_of,
    usable_intervals,
)


def ns(t: str) -> int:
    return int(np.datetime64(t, "ns").astype(np.int64))


def ar1(n: int, tau_steps: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    phi = np.exp(-1.0 / tau_steps)
    x = np.zeros(n)
    e = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


def test_efolding_time_of_an_ar1_series_with_gaps() -> None:
    x = ar1(100_000, tau_steps=50.0)
    tau, found = efolding_time(x, step_s=4.0, max_lag_s=2000.0)
    assert found and tau == pytest.approx(200.0, rel=0.1)        # 50 steps of 4 s
    x[20_000:30_000] = np.nan                                     # a gap: pairs across it are not used
    x[::97] = np.nan
    tau_gap, _ = efolding_time(x, step_s=4.0, max_lag_s=2000.0)
    assert tau_gap == pytest.approx(200.0, rel=0.1)
    acf = autocorrelation(x, 10)
    assert acf[0] == 1.0 and np.all(np.diff(acf) < 0.05)


def test_efolding_not_reached_is_conservative() -> None:
    x = np.linspace(0, 1, 500)                                     # a trend: never decorrelates
    assert efolding_time(x, 60.0, 600.0) == (600.0, False)
    assert efolding_time(np.ones(100), 60.0, 600.0) == (600.0, False)  # constant: undefined


def test_decorrelation_lag_of_an_ar1_series_and_of_6_hour_days() -> None:
    x = ar1(200_000, tau_steps=50.0, seed=1)
    lag, found = decorrelation_lag(x, step_s=4.0, max_lag_s=4000.0)
    # an AR(1) autocorrelation exp(-k / 50) falls to 0.1 after 50 ln 10 = 115 steps
    assert found and lag == pytest.approx(4.0 * 50 * np.log(10.0), rel=0.2)
    # 6 hours of every day only: lags between the day files have no pairs and are skipped; the
    # autocorrelation (e-folding 6 h: 0.1 after 13.8 h) is first seen <= 0.1 at 18 h, the next day's data
    day = 86400 // 300
    slow = ar1(200 * day, tau_steps=6 * 3600 / 300, seed=2)       # 5-min steps
    slow[(np.arange(slow.size) % day) >= day // 4] = np.nan
    lag6, found6 = decorrelation_lag(slow, step_s=300.0, max_lag_s=10 * DAY_S)
    assert found6 and 18 * 3600 - 300 <= lag6 <= 19 * 3600
    assert decorrelation_lag(np.linspace(0, 1, 500), 60.0, 600.0) == (600.0, False)


def test_default_blocks_are_at_least_three_whole_days() -> None:
    assert default_block_s(3600.0, 8.0) == 3 * DAY_S
    assert default_block_s(1.7 * DAY_S, 8.0) == 4 * DAY_S               # two gaps, rounded up to days
    assert default_block_s(600.0, 8.0, min_block_days=0.25) == pytest.approx(6 * 3600.0)


def test_too_short_a_timeline_is_refused_with_the_numbers() -> None:
    with pytest.raises(ConfigError, match=r"2 block\(s\) of 3.00 days.*3 splits train/val/test.*9.0 days"):
        check_blocks(2, (0.7, 0.15, 0.15), block_s=3 * DAY_S, span_s=6 * DAY_S)
    check_blocks(2, (0.8, 0.2, 0.0), block_s=3 * DAY_S, span_s=6 * DAY_S)       # no test split: 2 are enough
    valid = {"nsa": np.ones(4 * 24 * 60, bool)}                  # 4 days of 1-min columns: 1 + 3 days
    with pytest.raises(ConfigError, match="span 4.0 days"):
        make_split(valid, ns("2019-01-01"), 60.0, fractions=(0.7, 0.15, 0.15), gap_s=3600.0,
                   block_s=3 * DAY_S)


def test_every_split_gets_a_block_when_there_are_enough() -> None:
    amounts = np.array([[10.0], [9.0], [8.0], [0.5]])
    lab = assign_blocks(amounts, np.array(["DJF"] * 4), (0.9, 0.05, 0.05), seed=0)
    assert set(lab.tolist()) == {0, 1, 2}


def test_blocks_align_to_epoch_and_seasons() -> None:
    b = make_blocks(ns("2019-02-27T05:00"), ns("2019-03-02T00:00"), 24 * 3600 * NS)
    edges = b[:, 0].astype("datetime64[ns]").astype(str)
    assert edges[0].startswith("2019-02-27T05") and edges[1].startswith("2019-02-28T00")
    assert "2019-03-01T00:00:00.000000000" in edges                 # season boundary
    assert np.all(b[1:, 0] == b[:-1, 1])
    assert list(season_of(b[:, 0])) == ["DJF", "DJF", "MAM"]
    assert list(season_of(np.array(["2019-12-01", "2019-06-30", "2019-10-01"], dtype="datetime64[ns]"))) \
        == ["DJF", "JJA", "SON"]


def test_assignment_hits_fractions_per_site_and_season() -> None:
    rng = np.random.default_rng(3)
    n = 400
    amounts = rng.uniform(0, 10, (n, 2))
    amounts[:, 1] *= rng.random(n) > 0.3                           # site 2 has gaps
    strata = np.where(np.arange(n) < 200, "DJF", "MAM")
    lab = assign_blocks(amounts, strata, (0.7, 0.15, 0.15), seed=1)
    for s in ("DJF", "MAM"):
        for site in range(2):
            a = amounts[strata == s, site]
            share = [a[lab[strata == s] == k].sum() / a.sum() for k in range(3)]
            np.testing.assert_allclose(share, [0.7, 0.15, 0.15], atol=0.03)
    assert np.array_equal(lab, assign_blocks(amounts, strata, (0.7, 0.15, 0.15), seed=1))  # seeded
    only_train = assign_blocks(amounts, strata, (1.0, 0.0, 0.0))
    assert np.all(only_train == 0)


def test_intervals_leave_the_gap_between_splits() -> None:
    blocks = np.array([[0, 100], [100, 200], [200, 300], [300, 400]], dtype=np.int64)
    iv = usable_intervals(blocks, np.array([0, 0, 1, 0]), gap_ns=30)
    assert iv.tolist() == [[0, 185, 0], [215, 285, 1], [315, 400, 0]]


def test_place_patches_fill_runs() -> None:
    m = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], bool)
    assert place_patches(m, 3, 3).tolist() == [0, 6, 9]
    assert place_patches(m, 3, 1).tolist() == [0, 1, 2, 6, 7, 8, 9, 10]
    assert place_patches(np.zeros(5, bool), 2, 1).size == 0


@st.composite
def timelines(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(5, 2500))
    step_s = draw(st.sampled_from([1.0, 4.0, 60.0, 300.0]))
    start = draw(st.sampled_from(["2019-02-27T20:00", "2019-05-31T23:30", "2019-07-10T00:00",
                                  "2019-11-30T12:34:56"]))
    f = np.array(draw(st.lists(st.integers(0, 10), min_size=3, max_size=3)), float)
    if f.sum() == 0:
        f[0] = 1
    n_sites = draw(st.integers(1, 3))
    density = draw(st.floats(0.05, 1.0))
    seed = draw(st.integers(0, 2**16))
    return dict(n=n, step_s=step_s, t0=ns(start), fractions=tuple(f / f.sum()), n_sites=n_sites,
                density=density, seed=seed, gap_steps=draw(st.integers(0, 300)),
                block_steps=draw(st.integers(1, 800)), width=draw(st.integers(1, 64)),
                stride=draw(st.integers(1, 64)), run=draw(st.integers(1, 200)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines())
def test_no_patch_of_one_split_comes_near_another_split(tl) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(tl["seed"])
    n, step_ns = tl["n"], int(tl["step_s"] * NS)
    valid = {}
    for k in range(tl["n_sites"]):  # runs of valid data of random length
        runs = np.repeat(rng.random(n // tl["run"] + 1) < tl["density"], tl["run"])[:n]
        valid[f"s{k}"] = runs & (rng.random(n) < 0.98)
    gap_s = tl["gap_steps"] * tl["step_s"]
    block_s = tl["block_steps"] * tl["step_s"]
    blocks = make_blocks(tl["t0"], tl["t0"] + n * step_ns, int(block_s * NS))
    j = np.clip((blocks - tl["t0"]) // step_ns, 0, n)
    with_data = sum(any(m[a:b].any() for m in valid.values()) for a, b in j)
    if with_data < sum(f > 0 for f in tl["fractions"]):          # too short: refused, naming the numbers
        with pytest.raises(ConfigError, match="need at least one block each"):
            make_split(valid, tl["t0"], tl["step_s"], fractions=tl["fractions"], gap_s=gap_s,
                       block_s=block_s, seed=tl["seed"])
        return
    plan = make_split(valid, tl["t0"], tl["step_s"], fractions=tl["fractions"], gap_s=gap_s,
                      block_s=block_s, seed=tl["seed"])
    _check_no_leak(plan, valid, tl, gap_s)


def _check_no_leak(plan, valid, tl, gap_s):  # type: ignore[no-untyped-def]
    """The split's properties: a block for every split, a gap between splits, patches far from others."""
    n, step_ns = tl["n"], int(tl["step_s"] * NS)
    labels = plan.labels(n)
    # every split with a fraction > 0 holds at least one block with data
    for k, f in enumerate(tl["fractions"]):
        if f > 0:
            assert plan.info["blocks_per_split"][SPLITS[k]] >= 1
    # blocks are contiguous, cover the timeline, and only season starts cut one short
    assert np.all(plan.blocks[1:, 0] == plan.blocks[:-1, 1])
    assert np.all(plan.blocks[:, 1] - plan.blocks[:, 0] <= plan.block_ns)
    gap = plan.gap_ns
    assert gap >= int(round(gap_s * NS))
    iv = plan.intervals
    # intervals of different splits are at least one gap apart
    for a in iv:
        for b in iv:
            if a[2] != b[2]:
                assert a[1] + gap <= b[0] or b[1] + gap <= a[0], (a, b)
    patches = {k: [] for k in range(3)}
    for _site, m in valid.items():
        for k in range(3):
            for s in place_patches(m & (labels == k), tl["width"], tl["stride"]):
                assert m[s:s + tl["width"]].all()
                t0 = tl["t0"] + int(s) * step_ns
                patches[k].append((t0, t0 + tl["width"] * step_ns))
    for k in range(3):
        own = iv[iv[:, 2] == k]
        other = iv[iv[:, 2] != k]
        for p0, p1 in patches[k]:
            # inside one interval of its own split ...
            assert np.any((own[:, 0] <= p0) & (p1 <= own[:, 1]))
            # ... and away from the time span (plus gap) of every other split
            assert not np.any((p0 < other[:, 1] + gap) & (other[:, 0] - gap < p1))
    # and so, no two patches of different splits come closer than the gap
    for a in range(3):
        for b in range(a + 1, 3):
            if patches[a] and patches[b]:
                pa, pb = np.array(patches[a]), np.array(patches[b])
                near = (pa[:, None, 0] < pb[None, :, 1] + gap) & (pb[None, :, 0] - gap < pa[:, None, 1])
                assert not near.any()
    # a split with a zero fraction gets nothing
    for k, f in enumerate(tl["fractions"]):
        if f == 0:
            assert not patches[k]
    assert set(plan.info["blocks_per_split"]) == set(SPLITS)
    return patches


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines(), st.floats(0.2, 0.9))
def test_a_held_out_test_period_is_all_test_and_apart(tl, where) -> None:  # type: ignore[no-untyped-def]
    """``test_from``: every patch from it on is test, none before it is, and the gap holds there too."""
    n, step_ns = tl["n"], int(tl["step_s"] * NS)
    valid = {f"s{k}": np.ones(n, bool) for k in range(tl["n_sites"])}  # every block has data
    f = np.array(tl["fractions"][:2]) + 0.1
    tl = {**tl, "fractions": (f[0] / f.sum(), f[1] / f.sum(), 0.0)}
    test_from = tl["t0"] + int(where * n) * step_ns
    gap_s, block_s = tl["gap_steps"] * tl["step_s"], tl["block_steps"] * tl["step_s"]
    blocks = make_blocks(tl["t0"], tl["t0"] + n * step_ns, int(block_s * NS), (test_from,))
    assert test_from in blocks[:, 0]                                  # the period starts a block
    j = np.clip((blocks - tl["t0"]) // step_ns, 0, n)                 # a block holds data if it holds a column
    before = int(np.sum((blocks[:, 0] < test_from) & (j[:, 0] < np.r_[j[1:, 0], n])))
    if before < 2:                                                    # train and val need a block each
        with pytest.raises(ConfigError, match="need at least one block each"):
            make_split(valid, tl["t0"], tl["step_s"], fractions=tl["fractions"], gap_s=gap_s,
                       block_s=block_s, seed=tl["seed"], test_from_ns=test_from)
        return
    plan = make_split(valid, tl["t0"], tl["step_s"], fractions=tl["fractions"], gap_s=gap_s,
                      block_s=block_s, seed=tl["seed"], test_from_ns=test_from)
    assert np.all((plan.block_labels == 2) == (plan.blocks[:, 0] >= test_from))
    patches = _check_no_leak(plan, valid, {**tl, "fractions": (0.5, 0.5, 0.5)}, gap_s)
    assert all(p0 >= test_from for p0, _ in patches[2])
    assert all(p1 <= test_from - plan.gap_ns // 2 for k in (0, 1) for _, p1 in patches[k])


def test_a_held_out_test_period_needs_a_zero_test_fraction_and_data() -> None:
    valid = {"a": np.ones(20 * 24, bool)}                               # 20 days of hours
    t0 = ns("2019-01-01")
    with pytest.raises(ConfigError, match="test fraction must be 0"):
        make_split(valid, t0, 3600.0, fractions=(0.6, 0.2, 0.2), gap_s=3600.0, block_s=DAY_S,
                   test_from_ns=ns("2019-01-15"))
    valid["a"][14 * 24:] = False                                        # nothing usable from day 15 on
    with pytest.raises(ConfigError, match="holds no usable data"):
        make_split(valid, t0, 3600.0, fractions=(0.8, 0.2, 0.0), gap_s=3600.0, block_s=DAY_S,
                   test_from_ns=ns("2019-01-15"))
    valid["a"][:] = True
    plan = make_split(valid, t0, 3600.0, fractions=(0.8, 0.2, 0.0), gap_s=7200.0, block_s=3 * DAY_S,
                      test_from_ns=ns("2019-01-15"))
    # edges every 3 days since 1970 (2019-01-17, -20) and at test_from: days 15-16, 17-19 and 20
    assert plan.info["blocks_per_split"]["test"] == 3
    assert plan.intervals[plan.intervals[:, 2] == 2][0, 0] == ns("2019-01-15T01:00")  # half the gap
    # without test_from the same call draws test blocks among the others, as before
    plain = make_split(valid, t0, 3600.0, fractions=(0.6, 0.2, 0.2), gap_s=7200.0, block_s=3 * DAY_S)
    assert plain.info["test_from_ns"] is None and plain.info["blocks_per_split"]["test"] >= 1


def test_autocorrelation_over_separate_seasons_is_the_pairwise_one():
    """Stretches of data far apart (two seasons, each with short gaps) get the lagged sums of every
    valid pair within max_lag, as a direct loop over the pairs computes them."""
    rng = np.random.default_rng(3)
    x = np.cumsum(rng.normal(size=4000)) * 0.1 + rng.normal(size=4000)
    x[1200:2900] = np.nan                                 # the summer between two seasons (> max_lag)
    x[rng.random(4000) < 0.2] = np.nan                    # and short gaps within each
    x[300:340] = np.nan
    max_lag = 60
    ok = np.isfinite(x)
    xc = np.where(ok, x - x[ok].mean(), 0.0)
    var = np.mean(xc[ok] ** 2)
    direct = [1.0] + [np.sum((xc[:-k] * xc[k:])[ok[:-k] & ok[k:]]) / np.sum(ok[:-k] & ok[k:]) / var
                      for k in range(1, max_lag + 1)]
    np.testing.assert_allclose(autocorrelation(x, max_lag), direct, rtol=1e-9, atol=1e-12)
