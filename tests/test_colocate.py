"""Colocation on hand-made schema Datasets: linear-Z averaging, gaps, ERA-5 in height and time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bzpipe.colocate import (
    SOURCE_ERA5,
    SOURCE_MET,
    colocate,
    era5_period,
    era5_to_grid,
    height_centres,
    interp_time,
    regrid_radar,
    surface_temperature,
    time_grid,
)
from bzpipe.config import GridConfig, Site
from bzpipe.errors import InputFileError
from bzpipe.schema import G0

SITE = Site(name="tst", facility="X1", latitude=70.0, longitude=-150.0, elevation_m=10.0,
            kazr_datastream="kazr")
T0 = pd.Timestamp("2019-01-01T00:00:00")


def radar(z: np.ndarray, heights: np.ndarray, step_s: float = 2.0, t0: pd.Timestamp = T0) -> xr.Dataset:
    t = t0 + pd.to_timedelta(np.arange(z.shape[0]) * step_s, unit="s")
    return xr.Dataset({"reflectivity": (("time", "height"), np.asarray(z, np.float32))},
                      coords={"time": t.values, "height": np.asarray(heights, float)})


def era5_box(t: dict[int, float], z_m: dict[int, float], times: pd.DatetimeIndex,
             t_trend: float = 0.0, lats=(70.25, 70.0, 69.75), lons=(-150.25, -150.0, -149.75)) -> xr.Dataset:
    """Pressure-level ERA-5 box; ``t`` / ``z_m`` (height above MSL) per level, ``t_trend`` K per hour."""
    p = np.array(sorted(t, reverse=True), float)
    hours = (times - times[0]) / pd.Timedelta(hours=1)
    shape = (len(times), len(p), len(lats), len(lons))
    tt = (np.array([t[int(k)] for k in p])[None, :, None, None]
          + np.asarray(hours)[:, None, None, None] * t_trend)
    zz = np.array([z_m[int(k)] * G0 for k in p])[None, :, None, None]
    data = {"t": tt * np.ones(shape), "z": zz * np.ones(shape), "q": np.full(shape, 1e-3),
            "u": np.full(shape, 3.0), "v": np.full(shape, -1.0)}
    return xr.Dataset({k: (("time", "pressure_level", "latitude", "longitude"), v.astype(np.float32))
                       for k, v in data.items()},
                      coords={"time": times.values, "pressure_level": p, "latitude": list(lats),
                              "longitude": list(lons)})


# --------------------------------------------------------------------------- radar


def test_linear_z_average_within_a_row() -> None:
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=4.0)  # rows of 100 m
    heights = [120.0, 150.0, 220.0, 250.0, 280.0, 330.0]
    # row 1 (100-200 m): 0 and 10 dBZ; row 2 (200-300 m): 0, 10 and no echo; row 3: no echo only
    z = np.array([[0.0, 10.0, 0.0, 10.0, np.nan, np.nan]] * 2)  # two profiles 2 s apart -> one 4 s bin
    out = regrid_radar(radar(z, heights), grid, T0, T0 + pd.Timedelta(seconds=8)).compute()
    r = out["reflectivity"].values
    assert r[0, 1] == pytest.approx(10 * np.log10((1 + 10) / 2), abs=1e-5)   # 7.40 dBZ, not 5 dBZ
    assert r[0, 2] == pytest.approx(10 * np.log10((1 + 10 + 0) / 3), abs=1e-5)
    assert np.isnan(r[0, 3]) and out["n_gates"].values[3] == 1      # measured, no echo
    assert np.isnan(r[0, 0]) and out["n_gates"].values[0] == 0      # below the first gate: not measured
    assert list(out["n_gates"].values[:5]) == [0, 2, 3, 1, 0]
    assert out["height"].values[1] == pytest.approx(150.0)
    assert out["height"].attrs["units"] == "m"


def test_time_bins_average_profiles_and_keep_gaps() -> None:
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=4.0)
    z = np.array([[0.0], [10.0], [20.0], [np.nan], [0.0], [0.0], [0.0], [0.0]])
    rad = radar(z, [150.0], step_s=2.0)
    rad = rad.isel(time=[0, 1, 2, 3, 6, 7])        # profiles at 0, 2, 4, 6, 12, 14 s: 8-12 s missing
    out = regrid_radar(rad, grid, T0, T0 + pd.Timedelta(seconds=20), chunk_bins=2).compute()
    r = out["reflectivity"].values[:, 1]
    assert out["time"].values[0] == np.datetime64("2019-01-01T00:00:00")
    assert list(out["n_profiles"].values) == [2, 2, 0, 2, 0]
    assert r[0] == pytest.approx(10 * np.log10(5.5), abs=1e-5)       # 0 and 10 dBZ profiles
    assert r[1] == pytest.approx(10 * np.log10(50.0), abs=1e-5)      # 20 dBZ and no echo
    assert np.isnan(r[2]) and np.isnan(r[4])                       # the gap and the end stay gaps
    assert r[3] == pytest.approx(0.0, abs=1e-5)


def test_time_grid_is_anchored_to_the_step() -> None:
    g = time_grid("2019-01-01T00:00:01", "2019-01-01T00:00:20", 4.0)
    assert g[0] == np.datetime64("2019-01-01T00:00:04") and len(g) == 4


# --------------------------------------------------------------------------- ERA-5


def test_era5_height_interpolation_matches_hand_computed_profile() -> None:
    grid = GridConfig(n_heights=32, top_m=3200.0, time_step_s=4.0)  # centres 50, 150, ... 3150 m
    times = pd.date_range("2019-01-01", periods=2, freq="h")
    era = era5_box({1000: 260.0, 850: 250.0, 700: 238.0}, {1000: 110.0, 850: 1460.0, 700: 3010.0}, times)
    out = era5_to_grid(era, SITE, grid, time_grid(T0, T0 + pd.Timedelta(seconds=8), 4.0)).compute()
    prof = out["t"].values[0]
    h = height_centres(grid)
    # level heights above ground: 100, 1450, 3000 m (z / g0 - 10 m)
    expect = np.where(h <= 100, 260.0,
                      np.where(h <= 1450, 260 + (h - 100) / 1350 * -10.0,
                               np.where(h <= 3000, 250 + (h - 1450) / 1550 * -12.0, 238.0)))
    np.testing.assert_allclose(prof, expect, atol=1e-3)
    assert prof[7] == pytest.approx(260 - 650 / 1350 * 10, abs=1e-3)  # 750 m, by hand: 255.185 K


def test_era5_time_interpolation_and_no_extrapolation() -> None:
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=4.0)
    times = pd.date_range("2019-01-01", periods=3, freq="h")
    era = era5_box({1000: 250.0, 500: 220.0}, {1000: 0.0, 500: 5500.0}, times, t_trend=6.0)
    era = era.sel(time=[times[0], times[2]])                  # 01:00 missing: a 2 h gap
    gt = time_grid(T0 + pd.Timedelta(minutes=30), T0 + pd.Timedelta(hours=3), 4.0)
    out = era5_to_grid(era, SITE, grid, gt, max_gap_s=3 * 3600).compute()
    base = out["t"].values[:, 0] - out["t"].values[0, 0]
    # row 0 (50 m above ground, 60 m above the 1000 hPa level at -10 m) at 00:00 is
    # 250 - 30 * 60 / 5500 K; at the bin centre 00:30:02 the 6 K/h trend adds 6 * 1802 / 3600 K
    assert out["t"].values[0, 0] == pytest.approx(250 - 30 * 60 / 5500 + 6.0 * 1802 / 3600, abs=1e-3)
    assert np.all(np.diff(base[np.isfinite(base)]) >= -1e-4)      # linear, increasing
    last = out["t"].values[:, 0]
    centres = gt + np.timedelta64(2, "s")
    assert np.all(np.isnan(last[centres > np.datetime64("2019-01-01T02:00:00")]))  # never extrapolated
    tight = era5_to_grid(era, SITE, grid, gt, max_gap_s=3600).compute()
    assert np.isnan(tight["t"].values[:, 0]).all()               # a 2 h gap is not bridged with 1 h max


@pytest.mark.parametrize("case", ["whole_month", "gap_at_day_start", "gap_at_day_end", "unsorted",
                                  "ends_mid_day", "starts_after_day", "ends_at_bin_centre"])
def test_era5_period_keeps_every_bin_of_the_day_exactly_as_the_whole_file(case: str) -> None:
    """colocate() reads a month of ERA-5 per day and keeps only :func:`era5_period`: the day's bins must be
    identical to those interpolated from the whole file, gaps and the file's ends included."""
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=600.0)
    day = pd.Timestamp("2019-01-10")
    times = pd.date_range("2019-01-01", "2019-01-31T23:00", freq="h")
    rng = np.random.default_rng(3)
    era = era5_box({1000: 250.0, 500: 220.0}, {1000: 0.0, 500: 5500.0}, times)
    era["t"] = era["t"] + rng.normal(0.0, 2.0, era["t"].shape).astype(np.float32)
    drop = {"gap_at_day_start": (day - pd.Timedelta(hours=2), day + pd.Timedelta(hours=2)),
            "gap_at_day_end": (day + pd.Timedelta(hours=22), day + pd.Timedelta(hours=26))}
    if case in drop:
        a, b = drop[case]
        era = era.sel(time=(era["time"] < a.to_datetime64()) | (era["time"] > b.to_datetime64()))
    elif case == "unsorted":
        era = era.isel(time=rng.permutation(era.sizes["time"]))
    elif case == "ends_mid_day":
        era = era.sel(time=slice(None, day + pd.Timedelta(hours=13)))
    elif case == "starts_after_day":
        era = era.sel(time=slice(day + pd.Timedelta(days=2), None))
    elif case == "ends_at_bin_centre":   # the file's last time is the centre of a bin: kept exactly
        era = era.sel(time=slice(None, day + pd.Timedelta(hours=13)))
        era = era.assign_coords(time=era["time"].values - np.timedelta64(30, "m") + np.timedelta64(5, "m"))
    gt = time_grid(day, day + pd.Timedelta(days=1), grid.time_step_s)
    period = era5_period(era, day, day + pd.Timedelta(days=1), 3 * 3600.0)
    assert period.sizes["time"] <= 24 + 2 * 3 + 1 + 2     # the day +- 3 h, ends included, and one beyond each
    whole = era5_to_grid(era, SITE, grid, gt, max_gap_s=3 * 3600.0).compute()
    part = era5_to_grid(period, SITE, grid, gt, max_gap_s=3 * 3600.0).compute()
    for v in ("t", "q", "u", "v"):
        np.testing.assert_array_equal(part[v].values, whole[v].values)
    if case == "whole_month":
        assert np.isfinite(whole["t"].values).all()
    if case in ("gap_at_day_start", "starts_after_day"):
        assert np.isnan(whole["t"].values[0]).all()


def test_bilinear_column_and_0_360_longitudes() -> None:
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=4.0)
    times = pd.date_range("2019-01-01", periods=2, freq="h")
    era = era5_box({1000: 250.0, 500: 220.0}, {1000: 0.0, 500: 5500.0}, times,
                   lats=(70.4, 69.4), lons=(209.8, 210.8))       # 0..360 longitudes, site at -150 = 210
    era["u"] = era["u"] * 0 + (era["latitude"] - 69.4) * 10 + (era["longitude"] - 209.8) * 4
    gt = time_grid(T0, T0 + pd.Timedelta(seconds=8), 4.0)
    bil = era5_to_grid(era, SITE, grid, gt, columns="bilinear").compute()
    assert bil["u"].values[0, 0] == pytest.approx(0.6 * 10 + 0.2 * 4, abs=1e-4)   # plane: exact
    near = era5_to_grid(era, SITE, grid, gt, columns="nearest").compute()
    assert near["u"].values[0, 0] == pytest.approx(10.0, abs=1e-4)                 # (70.4, 209.8)
    far = era.assign_coords(latitude=[60.5, 59.5])
    far.attrs["source_file"] = "era5_far.nc"
    with pytest.raises(InputFileError, match="outside the ERA-5 box"):
        era5_to_grid(far, SITE, grid, gt)


def test_ifs_model_level_column_uses_height_above_ground() -> None:
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=4.0)
    times = pd.date_range("2019-01-01", periods=2, freq="h")
    lev = np.arange(1, 5)
    h = np.array([2000.0, 1000.0, 200.0, 10.0])                 # model levels top-down, m AGL
    col = xr.Dataset({"t": (("time", "level"), np.tile([230.0, 240.0, 250.0, 252.0], (2, 1))),
                      "q": (("time", "level"), np.full((2, 4), 1e-3)),
                      "u": (("time", "level"), np.tile([20.0, 10.0, 2.0, 1.0], (2, 1))),
                      "v": (("time", "level"), np.zeros((2, 4))),
                      "height": (("level",), h)}, coords={"time": times.values, "level": lev})
    out = era5_to_grid(col, SITE, grid, time_grid(T0, T0 + pd.Timedelta(seconds=4), 4.0)).compute()
    # row centre 650 m: between 200 m (250 K) and 1000 m (240 K), no elevation subtracted
    assert out["t"].values[0, 6] == pytest.approx(250 - 450 / 800 * 10, abs=1e-4)
    assert out["u"].values[0, 0] == pytest.approx(1 + 40 / 190, abs=1e-4)


def test_interp_time_edges() -> None:
    src = np.array(["2019-01-01T00", "2019-01-01T01"], dtype="datetime64[ns]")
    vals = np.array([[0.0], [60.0]])
    dst = np.array(["2018-12-31T23:59", "2019-01-01T00:15", "2019-01-01T01:00", "2019-01-01T01:01"],
                   dtype="datetime64[ns]")
    out = interp_time(src, vals, dst, 7200)[:, 0]
    assert np.isnan(out[0]) and out[1] == pytest.approx(15.0) and out[2] == pytest.approx(60.0)
    assert np.isnan(out[3])


# --------------------------------------------------------------------------- surface temperature


def test_surface_temperature_met_then_era5_fallback() -> None:
    times = time_grid(T0, T0 + pd.Timedelta(minutes=30), 60.0)  # 30 bins, centres at +30 s
    mt = T0 + pd.to_timedelta(np.arange(0, 10), unit="min")
    met = xr.Dataset({"temperature": ("time", np.arange(10, dtype=float))}, coords={"time": mt.values})
    era_low = xr.DataArray(np.full(30, 273.15 - 5.0), dims="time")
    temp, src = surface_temperature(times, 60.0, met, era_low, max_gap_s=300)
    assert temp[0] == pytest.approx(0.5) and temp[8] == pytest.approx(8.5)   # linear between minutes
    assert src[0] == SOURCE_MET and temp[9] == pytest.approx(9.0)            # held 30 s past the end
    assert np.all(src[12:] == SOURCE_ERA5) and np.allclose(temp[12:], -5.0)


def test_colocate_combines_everything() -> None:
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=10.0)
    z = np.full((360, 20), np.nan)
    z[:, 5:10] = 5.0
    rad = radar(z, 100 + 40 * np.arange(20), step_s=10.0)
    times = pd.date_range("2019-01-01", periods=3, freq="h")
    era = era5_box({1000: 263.0, 500: 233.0}, {1000: 0.0, 500: 5500.0}, times)
    ds = colocate(rad, era, SITE, grid, T0, T0 + pd.Timedelta(hours=1), met=None).compute()
    assert ds.sizes == {"time": 360, "height": 16}
    assert ds["era5_valid"].all() and (ds["surface_temperature_source"] == SOURCE_ERA5).all()
    # ERA-5 at the lowest row centre (50 m above ground, 60 m above the 1000 hPa level)
    assert float(ds["surface_temperature"][0]) == pytest.approx(263.0 - 30 * 60 / 5500 - 273.15, abs=1e-3)
    # rows 3 and 4 (300-500 m) hold gates 300-460 m: echo in 5 of 9 measured rows
    assert float(ds["echo_fraction"][0]) == pytest.approx(
        int((ds["reflectivity"][0].notnull()).sum()) / int((ds["n_gates"] > 0).sum()))
    for v in ("t", "q", "u", "v"):
        assert ds[v].dtype == np.float32 and ds[v].dims == ("time", "height")


def test_radar_outage_profiles_are_gaps_not_clear_sky() -> None:
    grid = GridConfig(n_heights=16, top_m=1600.0, time_step_s=4.0)
    z = np.array([[5.0], [np.nan], [np.nan], [np.nan]])
    rad = radar(z, [150.0], step_s=2.0)
    rad["profile_valid"] = ("time", np.array([True, True, False, False]))  # 4-8 s: outage
    out = regrid_radar(rad, grid, T0, T0 + pd.Timedelta(seconds=8)).compute()
    assert list(out["n_profiles"].values) == [2, 0]
    assert out["reflectivity"].values[0, 1] == pytest.approx(10 * np.log10(10 ** 0.5 / 2), abs=1e-5)
    assert np.isnan(out["reflectivity"].values[1, 1])


def test_real_ifs_column_on_the_grid(shared_data) -> None:  # type: ignore[no-untyped-def]
    from bzpipe.sources.era5 import read_ifs_column

    col = read_ifs_column(shared_data / "era5" / "cloudnetpy_ecmwf_model.nc")
    grid = GridConfig(n_heights=128, top_m=10000.0, time_step_s=60.0)
    t0 = pd.Timestamp(col["time"].values[3])
    gt = time_grid(t0, t0 + pd.Timedelta(hours=1), 60.0)
    out = era5_to_grid(col, SITE, grid, gt).compute()
    assert np.isfinite(out["t"].values).all()
    # the bin centre 30 s after an IFS hour: interpolate the two hours by hand, in height then time
    h = height_centres(grid)

    def at(i: int, v: str) -> np.ndarray:
        c = col.isel(time=i)
        o = np.argsort(c["height"].values)
        return np.interp(h, c["height"].values[o], c[v].values[o])

    for v in ("t", "u"):
        want = at(3, v) + (at(4, v) - at(3, v)) * 30 / 3600
        np.testing.assert_allclose(out[v].values[0], want, rtol=1e-5, atol=1e-4)
