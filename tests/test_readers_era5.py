"""ERA-5 / IFS readers on the real samples (netCDF, GRIB), synthetic layouts and damaged input."""

from __future__ import annotations

import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from bzpipe.errors import CorruptFileError, EmptyDataError, MissingVariableError, UnitsError
from bzpipe.schema import G0
from bzpipe.sources.era5 import read_era5, read_era5_single_level, read_ifs_column
from bzpipe.sources.synthetic import write_era5_month

LEVELS = [1000, 925, 850, 700, 500, 300]


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("era5")
    return {layout: write_era5_month(d / layout, "nsa", 2019, 3, LEVELS, 0.25, seed=1, layout=layout)
            for layout in ("cds", "legacy")}


def copy(p: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(p, tmp_path / p.name))


def check_schema(ds: xr.Dataset) -> None:
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert np.all(np.diff(ds.pressure_level.values) < 0)
    assert np.all(np.diff(ds.latitude.values) < 0) and np.all(np.diff(ds.longitude.values) > 0)
    assert ds.longitude.min() >= -180 and ds.longitude.max() < 180
    for v in ds.data_vars:
        assert ds[v].dtype == np.float32
        assert ds[v].dims[-4:] == ("time", "pressure_level", "latitude", "longitude")


# ------------------------------------------------------------------ real samples


def test_real_tuv_netcdf_and_grib_agree(shared_data: Path) -> None:
    nc = read_era5(shared_data / "era5" / "tuv_pl.nc", variables=("t", "u", "v"))
    gr = read_era5(shared_data / "era5" / "tuv_pl.grib", variables=("t", "u", "v"))
    for ds in (nc, gr):
        check_schema(ds)
        assert ds.sizes == {"time": 1, "pressure_level": 6, "latitude": 7, "longitude": 12}
        np.testing.assert_array_equal(ds.pressure_level.values, [1000, 850, 700, 500, 400, 300])
        assert ds.time.values[0] == np.datetime64("2018-08-01T12:00")
        assert ds.t.attrs["units"] == "K" and 200.0 < float(ds.t.min()) and float(ds.t.max()) < 330.0
    assert nc.attrs["layout"] == "legacy-netcdf" and gr.attrs["layout"] == "grib"
    # the netCDF is the GRIB packed to int16: equal within the packing step
    for v in ("t", "u", "v"):
        np.testing.assert_allclose(nc[v].values, gr[v].values, atol=0.002)
    # August: warmer at 1000 hPa on the equator than at the poles, colder aloft
    t = nc.t.sel(time=nc.time[0])
    t1000 = t.sel(pressure_level=1000)
    assert float(t1000.sel(latitude=0).mean()) > float(t1000.sel(latitude=-90).mean()) + 30
    assert float(t.sel(pressure_level=300).mean()) < float(t.sel(pressure_level=1000).mean()) - 40


def test_real_ensemble_grib(shared_data: Path) -> None:
    path = shared_data / "era5" / "era5-levels-members.grib"
    ds = read_era5(path, variables=("t", "z"))
    check_schema(ds)
    assert ds.attrs["ensemble_member"] == "0"
    assert ds.sizes == {"time": 4, "pressure_level": 2, "latitude": 61, "longitude": 120}
    np.testing.assert_array_equal(ds.time.values, np.array(["2017-01-01T00", "2017-01-01T12", "2017-01-02T00",
                                                            "2017-01-02T12"], dtype="datetime64[ns]"))
    z500 = ds.z.sel(pressure_level=500) / G0
    assert 4600 < float(z500.min()) and float(z500.max()) < 6000  # 500 hPa geopotential height, m
    every = read_era5(path, variables=("t", "z"), member=None)
    assert every.sizes["number"] == 10 and every.t.dims[0] == "number"
    np.testing.assert_array_equal(every.t.sel(number=0).values, ds.t.values)
    assert float(abs(every.t.sel(number=3) - ds.t).max()) > 0.1  # members differ
    with pytest.raises(MissingVariableError) as e:
        read_era5(path)  # q, u, v are not in this file
    assert "q (looked for q" in str(e.value) and str(path) in str(e.value)


def test_real_forecast_grib_with_relative_humidity(shared_data: Path) -> None:
    ds = read_era5(shared_data / "era5" / "pl_regular_ll.grib")
    check_schema(ds)
    assert ds.sizes["time"] == 8  # 4 analysis times x 2 steps flattened to valid times
    assert np.all(np.diff(ds.time.values) > np.timedelta64(0, "ns"))
    assert "derived" in ds.q.attrs and ds.q.attrs["source_variable"] == "r"
    assert float(ds.q.min()) >= 0.0 and float(ds.q.max()) < 0.03
    # moister near the surface in the tropics than at 300 hPa
    q = ds.q.sel(latitude=0)
    assert float(q.sel(pressure_level=1000).mean()) > 10 * float(q.sel(pressure_level=300).mean())


def test_real_single_level_2m_temperature(shared_data: Path) -> None:
    ds = read_era5_single_level(shared_data / "era5" / "era5_2t_1.nc")
    assert ds.t2m.dims == ("time", "latitude", "longitude") and ds.sizes == {"time": 1, "latitude": 9,
                                                                             "longitude": 18}
    assert ds.time.values[0] == np.datetime64("2021-03-01T12:00")
    assert 210.0 < float(ds.t2m.min()) and float(ds.t2m.max()) < 320.0
    assert float(ds.t2m.sel(latitude=0).mean()) > float(ds.t2m.sel(latitude=80).mean()) + 20


def test_real_ifs_column(shared_data: Path) -> None:
    ds = read_ifs_column(shared_data / "era5" / "cloudnetpy_ecmwf_model.nc")
    assert ds.sizes == {"time": 25, "level": 137}
    assert ds.time.values[0] == np.datetime64("2021-11-20T00:00") and ds.time.values[-1] == np.datetime64(
        "2021-11-21T00:00")
    h = ds.height.values
    assert np.all(np.diff(h, axis=1) > 0) and 0 < h[0, 0] < 20.0  # lowest model level ~10 m above ground
    assert ds.level.values[0] == 137
    p = ds.pressure.values
    assert 900 < p[0, 0] < 1050 and ds.pressure.attrs["units"] == "hPa"
    assert 260 < float(ds.t[:, 0].mean()) < 290 and float(ds.q.min()) >= 0
    assert ds.attrs["location"] == "Munich" and ds.attrs["latitude"] == pytest.approx(48.12, abs=0.01)


# ------------------------------------------------------------------ synthetic layouts


def test_both_synthetic_layouts_read_back_equal(months: dict[str, Path]) -> None:
    cds, leg = read_era5(months["cds"]), read_era5(months["legacy"])
    check_schema(cds)
    assert cds.sizes == leg.sizes and cds.sizes["time"] == 31 * 24
    for v in ("t", "q", "u", "v", "z"):
        span = float(cds[v].max() - cds[v].min())
        np.testing.assert_allclose(leg[v].values, cds[v].values, atol=span / 65532.0 * 0.51 + 1e-6 * span)
    # March at the NSA: cold near the surface, geopotential of 500 hPa about 5 km
    assert 230 < float(cds.t.sel(pressure_level=1000).mean()) < 275
    assert 4500 < float(cds.z.sel(pressure_level=500).mean()) / G0 < 5800


def test_legacy_expver_dimension_is_combined(tmp_path: Path) -> None:
    t = np.full((3, 2, 1, 2, 2), np.nan, dtype=np.float32)  # (time, expver, level, lat, lon)
    t[:2, 0] = 250.0  # ERA5 final for the first two hours
    t[1:, 1] = 260.0  # ERA5T overlaps the second hour and covers the third
    ds = xr.Dataset({k: (("time", "expver", "level", "latitude", "longitude"), t,
                         {"units": {"t": "K", "q": "kg kg**-1", "u": "m s**-1", "v": "m s**-1",
                                    "z": "m**2 s**-2"}[k]}) for k in ("t", "q", "u", "v", "z")},
                    coords={"time": ("time", np.array([0, 1, 2], dtype=np.int32),
                                     {"units": "hours since 2020-01-01 00:00:00.0", "calendar": "gregorian"}),
                            "expver": np.array([1, 5], dtype=np.int32),
                            "level": ("level", [850], {"units": "millibars"}),
                            "latitude": [71.5, 71.25], "longitude": [203.25, 203.5]})
    p = tmp_path / "mixed.nc"
    ds.to_netcdf(p, engine="netcdf4")
    out = read_era5(p)
    np.testing.assert_array_equal(out.t.values[:, 0, 0, 0], [250.0, 250.0, 260.0])
    np.testing.assert_allclose(out.longitude.values, [-156.75, -156.5])


# ------------------------------------------------------------------ bad input


def test_truncated_files_are_corrupt(months: dict[str, Path], shared_data: Path, tmp_path: Path) -> None:
    sources = [months["cds"], months["legacy"], shared_data / "era5" / "era5-levels-members.grib"]
    for src in sources:
        data = src.read_bytes()
        p = tmp_path / ("half_" + src.name)
        cut = len(data) // 2 + (1000 if src.suffix == ".grib" else 0)  # mid-message for GRIB
        p.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError) as e:
            read_era5(p, variables=("t",))
        assert str(p) in str(e.value)


def test_renamed_variable(months: dict[str, Path], tmp_path: Path) -> None:
    p = copy(months["cds"], tmp_path)
    with netCDF4.Dataset(p, "a") as nc:
        nc.renameVariable("q", "humidity_thing")
        del nc["humidity_thing"].standard_name
        del nc["humidity_thing"].GRIB_cfName
    with pytest.raises(MissingVariableError) as e:
        read_era5(p)
    assert "q (looked for q, hus" in str(e.value) and "standard_name specific_humidity" in str(e.value)
    assert read_era5(p, variables=("t", "u", "v", "z")).sizes["time"] == 31 * 24  # not asked for: fine
    (tmp_path / "b").mkdir()
    p2 = copy(months["cds"], tmp_path / "b")
    with netCDF4.Dataset(p2, "a") as nc:  # renamed, but its CF standard_name still identifies it
        nc.renameVariable("t", "temp_x")
    np.testing.assert_array_equal(read_era5(p2).t.values, read_era5(months["cds"]).t.values)


def test_all_missing_variable(months: dict[str, Path], tmp_path: Path) -> None:
    p = copy(months["legacy"], tmp_path)
    with netCDF4.Dataset(p, "a") as nc:
        v = nc["u"]
        v.set_auto_maskandscale(False)
        v[:] = np.int16(-32767)
    with pytest.raises(EmptyDataError, match="u: every value is missing"):
        read_era5(p)


def test_wrong_units(months: dict[str, Path], tmp_path: Path) -> None:
    p = copy(months["cds"], tmp_path)
    with netCDF4.Dataset(p, "a") as nc:
        nc["z"].units = "furlongs"
    with pytest.raises(UnitsError, match="z: unexpected units 'furlongs'"):
        read_era5(p)
    (tmp_path / "b").mkdir()
    p2 = copy(months["cds"], tmp_path / "b")
    with netCDF4.Dataset(p2, "a") as nc:  # known alternative units are converted
        nc["t"][:] = nc["t"][:] - 273.15
        nc["t"].units = "degC"
        nc["q"][:] = nc["q"][:] * 1000.0
        nc["q"].units = "g kg**-1"
    a, b = read_era5(p2), read_era5(months["cds"])
    np.testing.assert_allclose(a.t.values, b.t.values, atol=1e-3)
    np.testing.assert_allclose(a.q.values, b.q.values, rtol=1e-5)
