"""ARM readers on real sample files, synthetic files and damaged input."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from bzpipe.config import SyntheticConfig
from bzpipe.errors import CorruptFileError, EmptyDataError, InputFileError, MissingVariableError, UnitsError
from bzpipe.sources.arm import open_kazr_many, qc_masks, read_kazr, read_met
from bzpipe.sources.synthetic import kazr_day_arrays, write_kazr_day, write_met_day

CFG = SyntheticConfig(time_step_s=120.0, hours_per_day=24.0, n_gates=60, gate_spacing_m=100.0,
                      first_gate_m=160.0)
DAY = date(2019, 1, 12)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("arm")
    return {"kazr": write_kazr_day(d, "nsa", DAY, CFG, seed=3),
            "kazr_next": write_kazr_day(d, "nsa", date(2019, 1, 13), CFG, seed=3),
            "met": write_met_day(d, "nsa", DAY, CFG, seed=3)}


@pytest.fixture
def kazr_copy(synthetic: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copy(synthetic["kazr"], tmp_path / synthetic["kazr"].name))


# ------------------------------------------------------------------ real files


def test_real_kazr_a1_file(shared_data: Path) -> None:
    path = shared_data / "kazr" / "sgpkazrgeC1.a1.20190529.000002.cdf"
    ds = read_kazr(path)
    assert ds.reflectivity.dims == ("time", "height") and ds.reflectivity.dtype == np.float32
    # one hour at one-minute steps, 15:00-16:00 UTC on 2019-05-29
    assert ds.sizes == {"time": 61, "height": 414}
    assert ds.time.values[0] == np.datetime64("2019-05-29T15:00:00")
    assert ds.time.values[-1] - ds.time.values[0] == np.timedelta64(3600, "s")
    assert np.all(np.diff(ds.time.values) == np.timedelta64(60, "s"))
    # gates of 29.98 m from 100.7 m: vertically pointing range = height above the radar
    h = ds.height.values
    assert h[0] == pytest.approx(100.68, abs=0.01) and h[-1] == pytest.approx(12482.1, abs=0.1)
    np.testing.assert_allclose(np.diff(h), 29.979, atol=0.01)
    assert ds.attrs["site"] == "sgp" and ds.attrs["datastream"] == "sgpkazrgeC1.a1"
    assert ds.attrs["latitude"] == pytest.approx(36.606, abs=1e-3)
    assert ds.attrs["altitude"] == pytest.approx(316.0)
    assert ds.attrs["reflectivity_source"] == "reflectivity_copol"
    assert "signal_to_noise_ratio_copol" in ds.attrs["echo_mask"]
    r = ds.reflectivity.values
    echo = np.isfinite(r)
    assert 0.2 < echo.mean() < 0.7  # a cloudy hour, noise gates removed
    assert -70.0 < np.nanmin(r) and np.nanmax(r) == pytest.approx(9.0, abs=0.01)
    # without the SNR mask every gate holds a value (noise included)
    raw = read_kazr(path, snr_threshold_db=None)
    assert np.isfinite(raw.reflectivity.values).all()
    np.testing.assert_array_equal(raw.reflectivity.values[echo], r[echo])
    assert np.nanmedian(raw.reflectivity.values[~echo]) < np.nanmedian(r[echo])


def test_real_mmcr_file_modes(shared_data: Path) -> None:
    path = shared_data / "kazr" / "sgpmmcrC1.b1.1.cdf"
    ge = read_kazr(path)  # default: general mode
    assert ge.attrs["radar_mode"].endswith("_GE") and ge.attrs["radar_mode_name"] == "general"
    assert ge.sizes == {"time": 51, "height": 167}
    # heights in m MSL minus the 316 m altitude; GE mode gates every ~87 m
    assert ge.height.values[0] == pytest.approx(391.676 - 316.0, abs=0.01)
    assert 14_500 < ge.height.values[-1] < 14_700
    t = ge.time.values
    assert t[0] >= np.datetime64("2009-01-01T23:55:00") and t[-1] < np.datetime64("2009-01-02T00:00:00")
    assert np.all(np.diff(t) > np.timedelta64(0, "ns"))
    assert ge.profile_valid.all()
    # clear sky: nothing rises 10 dB above the noise floor
    assert np.isnan(ge.reflectivity.values).all()
    raw = read_kazr(path, snr_threshold_db=None)
    assert np.isfinite(raw.reflectivity.values).all() and -80 < np.nanmin(raw.reflectivity.values)
    assert np.nanmax(raw.reflectivity.values) < -10.0
    bl = read_kazr(path, mmcr_mode="BL", snr_threshold_db=None)
    assert bl.sizes == {"time": 102, "height": 135}  # the BL mode has 135 gates (up to ~6 km)
    assert 5_900 < bl.height.values[-1] < 6_000
    with pytest.raises(InputFileError, match="mode 'XX'"):
        read_kazr(path, mmcr_mode="XX")


# ------------------------------------------------------------------ synthetic files


def test_synthetic_kazr_qc_and_values(synthetic: dict[str, Path]) -> None:
    ds = read_kazr(synthetic["kazr"])
    arr = kazr_day_arrays("nsa", DAY, CFG, seed=3)
    bad = (arr["qc"] & (1 | 2 | 8)) != 0
    np.testing.assert_array_equal(ds.reflectivity.values, np.where(bad, np.nan, arr["reflectivity"]))
    raw = read_kazr(synthetic["kazr"], apply_qc=False)
    assert np.nanmax(raw.reflectivity.values) > 50.0  # the interference spikes are in the file ...
    assert np.nanmax(ds.reflectivity.values) < 40.0  # ... and QC removes them
    assert raw.attrs["qc_applied"] == "none"


def test_open_kazr_many_orders_days(synthetic: dict[str, Path], tmp_path: Path) -> None:
    ds = open_kazr_many([synthetic["kazr_next"], synthetic["kazr"]])
    assert ds.sizes["time"] == 2 * 720
    assert np.all(np.diff(ds.time.values) > np.timedelta64(0, "ns"))
    assert ds.time.values[0] == np.datetime64("2019-01-12T00:00:00")
    assert ds.attrs["site"] == "nsa" and synthetic["kazr"].name in ds.attrs["source_file"]
    other = write_kazr_day(tmp_path, "nsa", date(2019, 1, 14), CFG.model_copy(update={"n_gates": 50}), seed=3)
    with pytest.raises(InputFileError, match="height grid"):
        open_kazr_many([synthetic["kazr"], other])


def test_read_met(synthetic: dict[str, Path], tmp_path: Path) -> None:
    met = read_met(synthetic["met"])
    assert met.temperature.attrs["units"] == "degC"
    assert met.sizes["time"] == 1440 and np.isnan(met.temperature.values).sum() in (3, 4)
    assert -45.0 < np.nanmin(met.temperature.values) and np.nanmax(met.temperature.values) < 10.0
    assert set(met.data_vars) >= {"relative_humidity", "pressure", "wind_speed", "wind_direction"}
    # temperature given in K is converted
    p = Path(shutil.copy(synthetic["met"], tmp_path / synthetic["met"].name))
    with netCDF4.Dataset(p, "a") as nc:
        v = nc["temp_mean"]
        v[:] = v[:] + 273.15
        v.units = "K"
        v.valid_min, v.valid_max = np.float32(200.0), np.float32(320.0)
    np.testing.assert_allclose(read_met(p).temperature.values, met.temperature.values, atol=1e-4)


# ------------------------------------------------------------------ QC conventions


def test_qc_assessments_decide_what_is_removed(kazr_copy: Path) -> None:
    before = read_kazr(kazr_copy)
    with netCDF4.Dataset(kazr_copy, "a") as nc:
        qc = nc["qc_reflectivity_best_estimate"]
        del qc.flag_assessments  # without assessments every set bit counts as bad
    after = read_kazr(kazr_copy)
    near = np.isfinite(before.reflectivity.values) & np.isnan(after.reflectivity.values)
    assert near.any()  # the "Indeterminate" near-threshold echoes are now removed
    assert np.isnan(after.reflectivity.values[np.isnan(before.reflectivity.values)]).all()


def test_qc_masks_flag_values_and_legacy_bits() -> None:
    import xarray as xr

    states = xr.DataArray(np.array([0, 1, 2, 3]), attrs={"flag_values": [0, 1, 2, 3],
                                                          "flag_assessments": "Good Indeterminate Bad Bad"})
    bad, _ = qc_masks(states)
    np.testing.assert_array_equal(bad, [False, False, True, True])
    legacy = xr.DataArray(np.array([0, 1, 2, 3, 4]), attrs={
        "bit_1_description": "Value is equal to missing_value", "bit_1_assessment": "Bad",
        "bit_2_description": "Value is suspect", "bit_2_assessment": "Indeterminate",
        "bit_3_description": "Instrument outage", "bit_3_assessment": "Bad"})
    bad, outage = qc_masks(legacy)
    np.testing.assert_array_equal(bad, [False, True, False, True, True])
    np.testing.assert_array_equal(outage, [False, False, False, False, True])


# ------------------------------------------------------------------ units and layouts


def test_linear_reflectivity_and_km_heights(kazr_copy: Path) -> None:
    ref = read_kazr(kazr_copy)
    with netCDF4.Dataset(kazr_copy, "a") as nc:
        r = nc["reflectivity_best_estimate"]
        vals = r[:]
        r[:] = np.ma.where(np.ma.getmaskarray(vals), vals, 10.0 ** (vals / 10.0))
        r.units = "mm6 m-3"
        h = nc["height"]
        h[:] = h[:] / 1000.0
        h.units = "km"
    ds = read_kazr(kazr_copy)
    np.testing.assert_allclose(ds.height.values, ref.height.values, rtol=1e-6)
    np.testing.assert_allclose(ds.reflectivity.values, ref.reflectivity.values, atol=1e-3)


# ------------------------------------------------------------------ bad input


def test_truncated_file_is_corrupt(synthetic: dict[str, Path], tmp_path: Path) -> None:
    for key in ("kazr", "met"):
        data = synthetic[key].read_bytes()
        p = tmp_path / synthetic[key].name
        p.write_bytes(data[: len(data) // 2])
        reader = read_kazr if key == "kazr" else read_met
        with pytest.raises(CorruptFileError) as e:
            reader(p)
        assert str(p) in str(e.value)
    junk = tmp_path / "junk.nc"
    junk.write_text("not a netCDF file at all")
    with pytest.raises(CorruptFileError, match="not a netCDF or GRIB file"):
        read_kazr(junk)
    with pytest.raises(FileNotFoundError):
        read_kazr(tmp_path / "missing.nc")


def test_renamed_variable(kazr_copy: Path) -> None:
    with netCDF4.Dataset(kazr_copy, "a") as nc:
        nc.renameVariable("reflectivity_best_estimate", "radar_thing")
    with pytest.raises(MissingVariableError) as e:
        read_kazr(kazr_copy)
    msg = str(e.value)
    assert str(kazr_copy) in msg and "reflectivity_best_estimate" in msg and "radar_thing" in msg


def test_all_missing_reflectivity(kazr_copy: Path) -> None:
    with netCDF4.Dataset(kazr_copy, "a") as nc:
        nc["reflectivity_best_estimate"][:] = -9999.0
        nc["qc_reflectivity_best_estimate"][:] = 1 | 2  # missing: radar outage all day
    with pytest.raises(EmptyDataError, match="not measured"):
        read_kazr(kazr_copy)
    with netCDF4.Dataset(kazr_copy, "a") as nc:  # no QC at all: all fill means no data
        nc.renameVariable("qc_reflectivity_best_estimate", "unrelated")
    with pytest.raises(EmptyDataError, match="missing/fill"):
        read_kazr(kazr_copy)


def test_wrong_units(kazr_copy: Path, synthetic: dict[str, Path], tmp_path: Path) -> None:
    with netCDF4.Dataset(kazr_copy, "a") as nc:
        nc["reflectivity_best_estimate"].units = "furlongs"
    with pytest.raises(UnitsError, match="furlongs"):
        read_kazr(kazr_copy)
    p = Path(shutil.copy(synthetic["met"], tmp_path / synthetic["met"].name))
    with netCDF4.Dataset(p, "a") as nc:
        nc["temp_mean"].units = "m/s"
    with pytest.raises(UnitsError, match="temp_mean"):
        read_met(p)


def test_all_missing_met(synthetic: dict[str, Path], tmp_path: Path) -> None:
    p = Path(shutil.copy(synthetic["met"], tmp_path / synthetic["met"].name))
    with netCDF4.Dataset(p, "a") as nc:
        nc["temp_mean"][:] = -9999.0
    with pytest.raises(EmptyDataError, match="temp_mean"):
        read_met(p)


def test_netcdf_reads_hold_the_one_process_wide_lock(synthetic: dict[str, Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """netCDF-C / HDF5 are not thread-safe: every open, metadata read and data read of a netCDF file
    happens under NETCDF_LOCK (xarray's NETCDF4_PYTHON_LOCK), and threads reading at once are
    serialized by it."""
    import threading

    import xarray as xr

    from bzpipe.sources import detect, fileio

    assert fileio.NETCDF_LOCK is xr.backends.netCDF4_.NETCDF4_PYTHON_LOCK
    real_open, seen = xr.open_dataset, []

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((fileio.NETCDF_LOCK.locked(), kwargs.get("lock")))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(xr, "open_dataset", spy)
    assert "reflectivity" in read_kazr(synthetic["kazr"])
    assert len(seen) == 1
    assert detect.open_any(synthetic["met"]).sizes["time"] > 0      # a probe of the variables, then the read
    assert len(seen) == 3 and all(held and lock is False for held, lock in seen)
    assert not fileio.NETCDF_LOCK.locked()
    # several threads reading at once: all finish, each read whole
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(3):
                assert read_kazr(synthetic["kazr_next"]).sizes["time"] > 0
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
