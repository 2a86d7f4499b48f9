"""The KaZR -> CloudSat-CPR forward operator (bzpipe.forward): hand-computed values, and the dataset build option."""

from __future__ import annotations

import json
import math
from datetime import date

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bzpipe.config import KNOWN_SITES, BuildConfig, CprOperatorConfig, GridConfig
from bzpipe.forward.cpr import (
    add_noise,
    advected_distance,
    along_track_average,
    cpr_view,
    detect,
    footprint_weight,
    ifov_sigma,
    ka_to_w,
    noise_std_db,
    range_weighting,
    range_weights,
)
from bzpipe.schema import G0

# --------------------------------------------------------------------------- the pulse


def test_range_weighting_function_by_hand():
    # W_r = exp(-pi^2 dr^2 / (2 ln2 L^2)) for |dr| <= L = 480 m: 1 at the centre, 1/2 at +-sqrt(2) ln2 L / pi
    half = math.sqrt(2) * math.log(2) * 480 / math.pi                       # 149.77 m: the 300 m half-power width
    w = range_weights(np.array([0.0, half, -half, 480.0, 480.01, 1000.0]))
    np.testing.assert_allclose(w[:3], [1.0, 0.5, 0.5], rtol=1e-12)
    assert w[3] == pytest.approx(math.exp(-math.pi ** 2 / (2 * math.log(2))))  # 8.09e-4 at the pulse's end
    assert w[4] == 0.0 and w[5] == 0.0


def test_pulse_weighting_of_one_bright_row_by_hand():
    """60 m rows (centres 30, 90, ..., 1170 m), one 0 dBZ row centred on a bin at 630 m, no echo elsewhere.

    The rows within L = 480 m of the centre are at offsets 60 j m, j = -8..8, all of depth 60 m, so the
    bin holds Z = 1 / S with S = sum_j exp(-a j^2), a = pi^2 60^2 / (2 ln2 480^2) = 0.1112409:
    S = 1 + 2 (0.894723 + 0.640848 + 0.367450 + 0.168663 + 0.061975 + 0.018230 + 0.004293 + 0.000809)
      = 5.313983, i.e. 10 log10(1 / 5.313983) = -7.2542 dBZ.
    """
    edges = np.arange(0.0, 1201.0, 60.0)
    z = np.zeros((1, 20))
    z[0, 10] = 1.0                                                             # row centred at 630 m
    out = range_weighting(z, edges, np.array([630.0]))
    assert out[0, 0] == pytest.approx(1 / 5.313983, rel=1e-6)
    assert 10 * np.log10(out[0, 0]) == pytest.approx(-7.2542, abs=1e-4)
    # a uniform field is kept (the weights are normalised), also where the pulse reaches below the ground
    np.testing.assert_allclose(range_weighting(np.full((2, 20), 3.0), edges, np.array([[0.0, 630.0]] * 2)), 3.0)
    # rows without data carry no weight
    valid = np.ones((1, 20), bool)
    valid[0, :10] = False
    part = range_weighting(np.where(np.arange(20) < 10, 100.0, 1.0)[None], edges, np.array([630.0]), valid=valid)
    assert part[0, 0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- sensitivity, noise, Ka -> W


def test_sensitivity_cut_by_hand():
    d = detect(np.array([-27.99, -28.0, -28.01, -10.0, np.nan]), mds_dbz=-28.0)
    np.testing.assert_array_equal(np.isnan(d), [False, False, True, False, True])
    assert d[0] == -27.99 and d[1] == -28.0
    # the CPR noise: 9.24 dB at -37 dBZ, 0.28 dB at -4 dBZ, linear between, constant beyond
    np.testing.assert_allclose(noise_std_db(np.array([-50.0, -37.0, -20.5, -4.0, 20.0])),
                               [9.24, 9.24, (9.24 + 0.28) / 2, 0.28, 0.28])
    noisy = add_noise(np.full(20000, -4.0), np.random.default_rng(0))
    assert np.std(noisy) == pytest.approx(0.28, rel=0.05) and np.abs(noisy + 4.0).max() <= 3 * 0.28 + 1e-9


def test_ka_to_w_conversion_by_hand():
    # Ze94 = Ze35 - 10^-16.8251 (Ze35 + 100)^8.4923 (Kollias et al. 2019): 10^(-16.8251 + 8.4923 log10(100))
    # = 10^0.1595 = 1.4437 dB at 0 dBZ; 10^(-16.8251 + 8.4923 * 2.079181) = 6.791 dB at 20 dBZ
    out = ka_to_w(np.array([0.0, 20.0, -30.0, 30.0, 40.0, np.nan]))
    np.testing.assert_allclose(out[:2], [-1.4437, 20 - 6.791], atol=2e-3)
    assert out[2] == pytest.approx(-30.0 - 10 ** (-16.8251 + 8.4923 * math.log10(70)), abs=1e-9)
    assert out[4] - 40.0 == pytest.approx(out[3] - 30.0)           # beyond the fit: the 30 dBZ correction
    assert np.isnan(out[5])


def test_cpr_sensitivity_cut_through_the_whole_operator():
    """Uniform curtains, noise off: -26 dBZ at Ka is -26.112 dBZ at W (correction 10^(-16.8251 + 8.4923
    log10 74) = 0.112 dB) and detected; -30 dBZ (-30.07 at W) is below the -28 dBZ MDS: no echo anywhere."""
    edges = np.arange(0.0, 3001.0, 100.0)
    t = np.arange(0.0, 1200.0, 4.0)
    x = advected_distance(t, np.full((t.size, 30), 10.0))
    for dbz, expect in ((-26.0, -26.0 - 10 ** (-16.8251 + 8.4923 * math.log10(74))), (-30.0, None)):
        v = cpr_view(np.full((t.size, 30), dbz), edges, x, rng=np.random.default_rng(0), noise=False)
        core = v.dbz_grid[1:-1, 6:24]
        if expect is None:
            assert np.isnan(v.dbz_grid).all()
        else:
            np.testing.assert_allclose(core, expect, atol=1e-4)


# --------------------------------------------------------------------------- time to distance, footprint


def test_advected_distance_by_hand():
    x = advected_distance(np.array([0.0, 10.0, 20.0]), np.array([2.0, 4.0, 6.0]))
    np.testing.assert_allclose(x, [0.0, 30.0, 80.0])                         # trapezoids
    x = advected_distance(np.array([0.0, 10.0, 20.0]), np.array([[2.0, 0.1], [4.0, np.nan], [6.0, 0.2]]),
                          t_ref=10.0, min_speed_m_s=1.0)
    np.testing.assert_allclose(x[:, 0], [-30.0, 0.0, 50.0])
    np.testing.assert_allclose(x[:, 1], [-10.0, 0.0, 10.0])                # floored at 1 m/s, gap filled
    t = np.array(["2019-01-01T00:00:00", "2019-01-01T00:01:40"], dtype="datetime64[ns]")
    np.testing.assert_allclose(advected_distance(t, np.array([5.0, 5.0])), [0.0, 500.0])


def test_footprint_is_a_box_convolved_with_the_antenna_gaussian():
    s = ifov_sigma(1451.0)
    assert s == pytest.approx(1451.0 / (4 * math.sqrt(math.log(2))))            # 435.7 m
    # exp(-2 ln2 (x / (IFOV/2))^2) is exp(-x^2 / (2 s^2)): 1/4 at IFOV/2
    assert math.exp(-(725.5 ** 2) / (2 * s ** 2)) == pytest.approx(0.25)
    assert footprint_weight(np.array([0.0]), 1100.0, s)[0] == pytest.approx(math.erf(550 / (math.sqrt(2) * s)))
    assert footprint_weight(np.array([550.0]), 1100.0, 1e-6)[0] == pytest.approx(0.5)


def test_along_track_average_by_hand():
    """11 m/s, a sample every 4 s (44 m): with a vanishing antenna width a profile is the plain mean of the
    25 samples in its 1100 m; profiles from x = -22 m: samples i = 0..24 hold i -> 12, i = 25..49 -> 37."""
    t = np.arange(0.0, 400.0, 4.0)
    x = advected_distance(t, np.full((t.size, 1), 11.0))
    v = np.arange(t.size, dtype=float)[:, None]
    mean, cov = along_track_average(v, x, spacing_m=1100.0, sigma_m=1e-3, start_m=-22.0)
    np.testing.assert_allclose(mean[:2, 0], [12.0, 37.0])
    assert (cov[:3] == 1.0).all()
    x = advected_distance(t, np.full((t.size, 1), 10.0))
    # a gap in the samples lowers the coverage, not the value of a uniform field
    ok = np.ones_like(v, bool)
    ok[5:15] = False
    m2, c2 = along_track_average(np.ones_like(v), x, spacing_m=1100.0, sigma_m=436.0, valid=ok)
    np.testing.assert_allclose(m2[np.isfinite(m2)], 1.0)
    assert c2[0, 0] < 0.75
    # faster wind: more air per sample, fewer samples per profile (128 profiles = 141 km of air)
    x20 = advected_distance(t, np.full((t.size, 1), 20.0))
    assert along_track_average(v, x20, spacing_m=1100.0, sigma_m=436.0)[0].shape[0] \
        == int(np.floor(x20[-1, 0] / 1100.0 - 0.5)) + 1


# --------------------------------------------------------------------------- the dataset build


def _day(day: str, step_s: float = 8.0, speed: float = 10.0, n_h: int = 50, dz: float = 100.0) -> xr.Dataset:
    """A colocated site-day by hand: a 0 dBZ layer 1.5-3.5 km, ERA-5 wind ``speed`` (westerly), -15 degC."""
    g = GridConfig(n_heights=n_h, top_m=n_h * dz, time_step_s=step_s)
    t = pd.Timestamp(day) + pd.to_timedelta(np.arange(int(6 * 3600 / step_s)) * step_s, unit="s")
    h = (np.arange(n_h) + 0.5) * dz
    refl = np.where((h >= 1500) & (h < 3500), 0.0, np.nan)[None, :].repeat(t.size, 0).astype(np.float32)
    shape = (t.size, n_h)
    ds = xr.Dataset({"reflectivity": (("time", "height"), refl),
                     "t": (("time", "height"), np.full(shape, 258.0, np.float32)),
                     "q": (("time", "height"), np.full(shape, 1e-3, np.float32)),
                     "u": (("time", "height"), np.full(shape, speed, np.float32)),
                     "v": (("time", "height"), np.zeros(shape, np.float32)),
                     "n_profiles": ("time", np.ones(t.size, np.int32)),
                     "n_gates": ("height", np.where(h > 150, 3, 0).astype(np.int32)),
                     "era5_valid": ("time", np.ones(t.size, bool)),
                     "echo_fraction": ("time", np.full(t.size, 0.5, np.float32)),
                     "surface_temperature": ("time", np.full(t.size, -15.0, np.float32)),
                     "surface_temperature_source": ("time", np.ones(t.size, np.int8))},
                    coords={"time": t.values, "height": h}, attrs={"site": "nsa"})
    return ds, g


def test_cpr_resolution_day_makes_one_column_per_cpr_profile():
    from bzpipe.forward.dataset import cpr_resolution_day

    ds, g = _day("2019-01-01")
    op = CprOperatorConfig(enabled=True, noise=False, day_guard_km=20.0)
    out = cpr_resolution_day(ds, op, g, seed=0, site="nsa")
    # 6 h at 10 m/s = 216 km of air = 196 profiles of 1.1 km, labelled every 8 s from the day's first time
    assert out.sizes["time"] == 196 and out.attrs["time_axis"] == "along_track"
    np.testing.assert_array_equal(np.diff(out["time"].values).astype("timedelta64[s]").astype(int), 8)
    obs = out["time_observed"].values.astype("datetime64[ms]").astype(np.int64) / 1000.0
    np.testing.assert_allclose(np.diff(obs), 110.0, atol=1e-3)                 # 1100 m at 10 m/s
    n = out["n_profiles"].values
    assert (n[:18] == 0).all() and np.isin(n[19:-1], (13, 14)).all()        # 20 km guard; 110 s of 8 s bins
    # the layer as the CPR sees it, in its core: 0 dBZ at Ka = -1.4437 dBZ at W, nothing far outside
    r = out["reflectivity"].values[n > 0]
    np.testing.assert_allclose(r[:, 20:30], -1.4437, atol=2e-3)
    assert np.isnan(r[:, 44:]).all() and np.isnan(r[:, 2:7]).all()      # layer +- pulse (480 m) + half a bin
    np.testing.assert_allclose(out["t"].values[n > 0], 258.0, rtol=1e-6)
    assert json.loads(out.attrs["forward_operator"])["enabled"] is True
    # deterministic: the same seed gives the same columns (noise and bin phases)
    op2 = op.model_copy(update={"noise": True})
    a = cpr_resolution_day(ds, op2, g, seed=3, site="nsa")["reflectivity"].values
    b = cpr_resolution_day(ds, op2, g, seed=3, site="nsa")["reflectivity"].values
    np.testing.assert_array_equal(a, b)


def test_build_with_the_forward_operator_records_it(tmp_path):
    """Colocate -> the build hook -> plan -> write: a CPR-resolution dataset that says so."""
    from bzpipe.colocate import colocate
    from bzpipe.dataset import open_dataset, plan_dataset, write_colocated, write_dataset
    from bzpipe.dataset.inputs import _forward_operator
    from bzpipe.forward.dataset import model_resolution
    from bzpipe.store import Store
    from bzpipe.store.layout import colocated_key

    store = Store(tmp_path / "store")
    cfg = BuildConfig.model_validate(dict(
        store_root=str(store.root), sites=["nsa"], start="2019-01-01", end="2019-01-02", seed=1,
        grid={"n_heights": 16, "top_m": 1600.0, "time_step_s": 20.0},
        patch={"width": 16, "blind_zone_rows": 4, "stride": 8},
        split={"max_lag_s": 2 * 3600.0, "block_hours": 1.0, "gap_s": 600.0}, region_samples=16,
        chunk_samples=8, cold_threshold_c=None,
        forward_operator={"enabled": True, "day_guard_km": 30.0}))
    keys = []
    for i, day in enumerate(("2019-01-01", "2019-01-02")):
        radar, era5 = _radar(day, i), _era5(day)
        ds = colocate(radar, era5, KNOWN_SITES["nsa"], cfg.grid, day, pd.Timestamp(day) + pd.Timedelta(days=1))
        ds = _forward_operator(ds, cfg, "nsa")
        key = colocated_key("nsa", date.fromisoformat(day))
        write_colocated(store, key, ds)
        keys.append(key)
    plan = plan_dataset(store, cfg, keys, recipe_id="test")
    assert plan.n_samples("train") > 10
    uri = write_dataset(store.root, plan, cfg)
    train = open_dataset(store, "v1").open_split("train")
    assert uri.endswith("v1.zarr") and train.attrs["config"]["values"]["forward_operator"]["enabled"] is True
    assert model_resolution(train.attrs)["resolution"] == "cpr"
    assert model_resolution({"build": {"forward_operator": {"enabled": False}}})["resolution"] == "kazr"
    assert model_resolution({})["resolution"] == "kazr"                     # says nothing: KaZR resolution
    x = train["x"].values
    assert np.isfinite(x).all() and (x[:, 0] > -1).any()


def _radar(day: str, seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    t = pd.Timestamp(day) + pd.to_timedelta(np.arange(0, 86400, 10.0), unit="s")
    h = 160.0 + 40.0 * np.arange(40)
    top = 900 + 500 * np.sin(np.arange(t.size) / 400.0 + seed)
    z = np.where(h[None, :] < top[:, None], -5 + rng.normal(0, 3, (t.size, h.size)), np.nan).astype(np.float32)
    return xr.Dataset({"reflectivity": (("time", "height"), z, {"units": "dBZ"})},
                      coords={"time": t.values, "height": h}, attrs={"source_file": f"radar_{day}.nc"})


def _era5(day: str) -> xr.Dataset:
    t = pd.Timestamp(day) - pd.Timedelta(hours=1) + pd.to_timedelta(np.arange(27), unit="h")
    p = np.array([1000.0, 925.0, 850.0, 700.0])
    zlev = -7000.0 * np.log(p / 1013.0)
    shp = (t.size, p.size, 2, 2)
    data = {"t": 255.0 - 0.0065 * zlev[None, :, None, None] * np.ones(shp), "q": np.full(shp, 1e-3),
            "u": np.full(shp, 8.0), "v": np.full(shp, -3.0), "z": G0 * zlev[None, :, None, None] * np.ones(shp)}
    return xr.Dataset({k: (("time", "pressure_level", "latitude", "longitude"), v.astype(np.float32))
                       for k, v in data.items()},
                      coords={"time": t.values, "pressure_level": p, "latitude": [71.5, 71.25],
                              "longitude": [-156.75, -156.5]})
