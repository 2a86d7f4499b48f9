"""CloudSat reader (pyhdf, HDF-EOS2) on the real R05 granule and on synthetic 2B-GEOPROF granules."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyhdf.SD import SD, SDC

from bzpipe.errors import (
    CorruptFileError,
    EmptyDataError,
    InputFileError,
    MissingVariableError,
    WrongReleaseError,
)
from bzpipe.sources.cloudsat import check_release, format_granule_name, granule_info, read_granule
from bzpipe.sources.cloudsat.hdfeos import SwathFile
from bzpipe.sources.cloudsat.tai import tai93_to_utc, utc_to_tai93
from bzpipe.sources.synthetic.cloudsat_hdf import granule_file_name, write_geoprof_granule

REAL_NAME = "2019002175851_67551_CS_2B-CLDCLASS_GRANULE_P1_R05_E08_F03.hdf"
NPROF, NBIN = 200, 125


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def real_path(shared_data: Path) -> Path:
    path = shared_data / "cloudsat" / REAL_NAME
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def real(real_path: Path):
    return read_granule(real_path, require_reflectivity=False)


def synthetic_inputs(n: int = NPROF, seed: int = 0) -> dict:
    """Physically shaped inputs: 125 bins of 239.83 m from ~25 km down to ~-5 km, bin 0 on top."""
    rng = np.random.default_rng(seed)
    refl = rng.uniform(-35.0, 45.0, (n, NBIN))
    refl[rng.random((n, NBIN)) < 0.6] = np.nan
    surface = rng.uniform(-200.0, 200.0, (n, 1))
    height = surface + 239.83 * (np.arange(NBIN)[::-1] - 20)
    land = np.arange(n) < n // 2
    dem = np.where(land, rng.uniform(0.0, 3000.0, n).round(), 0.0)
    return dict(
        reflectivity_dbz=refl, height_m=height,
        cloud_mask=rng.integers(0, 41, (n, NBIN)).astype(np.int8),
        # a CPR track: ~1.1 km per 0.16 s profile (the reader refuses a track that jumps)
        latitude=-10.0 + 0.0099 * np.arange(n), longitude=170.0 + 0.001 * np.arange(n),
        profile_time_s=np.arange(n) * 0.16, start=datetime(2019, 1, 2, 17, 58, 51, 738000),
        dem_elevation_m=dem, land_sea_flag=np.where(land, 1, 2).astype(np.uint8), granule_number=67551,
    )


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    inputs = synthetic_inputs()
    folder = tmp_path_factory.mktemp("granules")
    path = write_geoprof_granule(folder, **inputs)
    return inputs, path


# ---------------------------------------------------------------------- names
def test_granule_info_parses_r05_and_r04_names():
    info = granule_info(f"s3://bucket/raw/cloudsat/{REAL_NAME}")
    assert info.granule_id == "2019002175851_67551"
    assert info.start == datetime(2019, 1, 2, 17, 58, 51, tzinfo=UTC)  # day 002 = Jan 2
    assert (info.orbit, info.product, info.release, info.epoch, info.fix) == (67551, "2B-CLDCLASS", "R05",
                                                                              "E08", "F03")
    assert info.version == "P1_R05"
    r04 = granule_info("2015200212411_49074_CS_2B-GEOPROF_GRANULE_P_R04_E06.hdf")
    assert r04.start == datetime(2015, 7, 19, 21, 24, 11, tzinfo=UTC)  # day 200 of 2015
    assert (r04.orbit, r04.product, r04.iteration, r04.release, r04.fix) == (49074, "2B-GEOPROF", "P", "R04",
                                                                             None)
    lidar = granule_info("2008291000000_13000_CS_2B-GEOPROF-LIDAR_GRANULE_P2_R05_E02_F00.hdf")
    assert lidar.product == "2B-GEOPROF-LIDAR"


@pytest.mark.parametrize("bad", [
    "2019002175851_67551_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf",     # no CS
    "2019002175851_67551_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.nc",   # wrong suffix
    "2019402175851_67551_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf",  # day 402
    "20190021758_67551_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf",    # short time
    "readme.hdf",
])
def test_granule_info_rejects_other_names(bad):
    with pytest.raises(InputFileError, match="CloudSat|start time") as exc:
        granule_info(bad)
    assert bad in str(exc.value)


@settings(max_examples=40, deadline=None)
@given(start=st.datetimes(min_value=datetime(2006, 6, 1), max_value=datetime(2023, 12, 31)),
       orbit=st.integers(0, 99999), release=st.sampled_from(["R04", "R05"]))
def test_file_name_round_trip(start, orbit, release):
    name = granule_file_name(start, orbit, release=release, version="F03" if release == "R05" else None)
    info = granule_info(name)
    assert info.start == start.replace(microsecond=0, tzinfo=UTC)
    assert (info.orbit, info.release, info.product) == (orbit, release, "2B-GEOPROF")
    assert format_granule_name(info.start, info.orbit, info.product, release=info.release, epoch=info.epoch,
                               fix=info.fix, iteration=info.iteration) == name


def test_tai93_conversion_counts_leap_seconds():
    # Real granule: UTC_start 64731.738 s (17:58:51.738), TAI_start 820605541.74 s: 10 leap seconds since 1993.
    assert abs((tai93_to_utc(820605541.74) - datetime(2019, 1, 2, 17, 58, 51, 740000, tzinfo=UTC))
               .total_seconds()) < 1e-6
    t = datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)  # just before the last leap second
    assert utc_to_tai93(t + timedelta(seconds=1)) - utc_to_tai93(t) == 2.0
    assert tai93_to_utc(utc_to_tai93(t)) == t


# ---------------------------------------------------------------------- the real granule
def test_real_granule_shape_and_attrs(real, real_path):
    assert dict(real.sizes) == {"profile": 36950, "bin": 125}
    assert real.attrs["granule_id"] == "2019002175851_67551"
    assert real.attrs["orbit"] == 67551
    assert real.attrs["release"] == "R05"
    assert real.attrs["product"] == "2B-CLDCLASS"
    assert real.attrs["start_time"] == "2019-01-02T17:58:51Z"
    assert real.attrs["source_file"] == str(real_path)
    assert "reflectivity" not in real and "cloud_mask" not in real  # 2B-CLDCLASS has neither
    assert check_release(real) is real


def test_real_granule_heights(real):
    h = real["height"].values
    assert h.dtype == np.float32
    valid_profiles = ~np.isnan(h).all(axis=1)
    assert valid_profiles.sum() > 20000  # the rest of this sample's Height is fill (-9999)
    hv = h[valid_profiles]
    assert not np.isnan(hv).any()
    assert -5000 <= hv.min() < -4000 and 24000 < hv.max() <= 25100  # m MSL, bin 0 on top
    spacing = -np.diff(hv, axis=1)
    assert spacing.min() >= 238.5 and spacing.max() <= 240.5  # ~240 m bins, decreasing downward
    assert np.allclose(spacing.mean(), real.attrs["vertical_binsize_m"], atol=0.5)


def test_real_granule_geolocation_and_time(real, real_path):
    lat, lon = real["latitude"].values, real["longitude"].values
    assert not np.isnan(lat).any() and not np.isnan(lon).any()
    assert -82.0 < lat.min() < -81.0 and 81.0 < lat.max() < 82.0  # CloudSat's 98.2 deg inclination
    assert -180.0 <= lon.min() and lon.max() <= 180.0
    t = real["time"].values
    assert t.dtype == np.dtype("datetime64[ns]")
    assert (np.diff(t) > np.timedelta64(0)).all()
    step = np.diff(t).astype(np.int64) / 1e9
    assert 0.15 < step.min() and step.max() < 0.17  # ~0.16 s between CPR profiles
    t0 = np.datetime64("2019-01-02T17:58:51.738", "ns")
    assert abs(t[0] - t0) < np.timedelta64(5, "ms")
    assert np.datetime64("2019-01-02T19:37:23", "ns") <= t[-1] < np.datetime64("2019-01-02T19:37:24", "ns")
    assert t[-1] - t[0] < np.timedelta64(99, "m")
    with SwathFile(real_path) as sw:  # TAI_start independently anchors the first profile
        tai = tai93_to_utc(float(sw.read("TAI_start")[0]))
    assert abs(t[0] - np.datetime64(tai.replace(tzinfo=None), "ns")) < np.timedelta64(5, "ms")


def test_real_granule_surface_fields(real):
    dem, lsf = real["dem_elevation"].values, real["land_sea_flag"].values
    assert not np.isnan(dem).any()
    ocean = lsf == 2
    assert ocean.sum() > 10000
    assert (dem[ocean] == 0.0).all()  # stored -9999 = ocean -> sea level
    assert -100 < dem[~ocean].min() and dem[~ocean].max() < 8850  # land incl. Antarctica
    assert dem[lsf == 1].max() > 3000
    ct = real["cloud_type"].values
    assert ct.min() == 0 and ct.max() <= 8
    assert (ct > 0).mean() > 0.01  # some cloud in a full orbit


def test_real_granule_requires_reflectivity_by_default(real_path):
    with pytest.raises(MissingVariableError, match="Radar_Reflectivity") as exc:
        read_granule(real_path)
    assert REAL_NAME in str(exc.value)


def test_real_granule_structure_metadata(real_path):
    with SwathFile(real_path) as sw:
        meta = sw.struct_metadata()
        assert sw.swath_name == "2B-CLDCLASS"
        assert meta["dimensions"]["nray"] == 36950 and meta["dimensions"]["nbin"] == 125
        assert meta["geo_fields"]["Height"]["dims"] == ["nray", "nbin"]
        assert sw.field_attrs("Height").fill == -9999
        assert sw.field_attrs("DEM_elevation").missing == 9999
        assert sw.attributes["Height.units"] == "m"  # a 1-char CHAR8 attribute


def test_check_release_rejects_other_release(real):
    with pytest.raises(WrongReleaseError, match="R05.*R04|'R05', expected 'R04'") as exc:
        check_release(real, expected="R04")
    assert REAL_NAME in str(exc.value)


# ---------------------------------------------------------------------- synthetic round trip
def test_synthetic_round_trip(synth):
    inputs, path = synth
    assert path.name == "2019002175851_67551_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left over
    ds = read_granule(path)
    assert dict(ds.sizes) == {"profile": NPROF, "bin": NBIN}
    refl = ds["reflectivity"].values
    assert refl.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(refl), np.isnan(inputs["reflectivity_dbz"]))
    assert np.nanmax(np.abs(refl - inputs["reflectivity_dbz"])) <= 0.005 + 1e-4  # 0.01 dB packing
    assert np.abs(ds["height"].values - inputs["height_m"]).max() <= 0.5  # int16 metres
    np.testing.assert_array_equal(ds["cloud_mask"].values, inputs["cloud_mask"])
    assert ds["cloud_mask"].dtype == np.int8
    np.testing.assert_allclose(ds["latitude"].values, inputs["latitude"], atol=1e-5)
    np.testing.assert_allclose(ds["longitude"].values, inputs["longitude"], atol=1e-4)
    expected_t = np.datetime64(inputs["start"], "ns") + (inputs["profile_time_s"] * 1e9).round().astype(
        "timedelta64[ns]")
    assert np.abs(ds["time"].values - expected_t).max() < np.timedelta64(5, "ms")  # float32 UTC_start
    np.testing.assert_array_equal(ds["dem_elevation"].values, inputs["dem_elevation_m"])
    np.testing.assert_array_equal(ds["land_sea_flag"].values, inputs["land_sea_flag"])
    assert ds.attrs["granule_id"] == "2019002175851_67551"
    assert (ds.attrs["orbit"], ds.attrs["release"], ds.attrs["product"]) == (67551, "R05", "2B-GEOPROF")
    assert ds.attrs["start_time"] == "2019-01-02T17:58:51Z"


def test_synthetic_layout_matches_real(synth, real_path):
    """Every field the two files share sits in the same place (SDS/Vdata, group), with the same
    attributes, so the reader goes through one code path for both."""
    _, path = synth
    with SwathFile(real_path) as real_sw, SwathFile(path) as syn_sw:
        shared = set(real_sw.fields) & set(syn_sw.fields)
        assert {"Height", "Latitude", "Longitude", "Profile_time", "UTC_start", "TAI_start",
                "DEM_elevation", "Navigation_land_sea_flag", "Vertical_binsize"} <= shared
        for name in shared:
            r, s = real_sw.fields[name], syn_sw.fields[name]
            assert (r.kind, r.group) == (s.kind, s.group), name
            assert real_sw.field_attrs(name).fill == syn_sw.field_attrs(name).fill, name
            assert real_sw.field_attrs(name).valid_range == syn_sw.field_attrs(name).valid_range, name
            assert real_sw.read(name).dtype == syn_sw.read(name).dtype, name
        assert syn_sw.swath_name == "2B-GEOPROF"
        meta = syn_sw.struct_metadata()
        assert meta["dimensions"] == {"nray": NPROF, "scalar": 1, "nbin": NBIN}
        assert meta["data_fields"]["Radar_Reflectivity"] == {"type": "DFNT_INT16", "dims": ["nray", "nbin"]}
        assert meta["geo_fields"]["UTC_start"]["dims"] == ["scalar"]
        assert syn_sw.field_attrs("Radar_Reflectivity").factor == 100.0
        assert syn_sw.read("Radar_Reflectivity").dtype == np.int16
        assert syn_sw.global_attributes["HDFEOSVersion"] == real_sw.global_attributes["HDFEOSVersion"]


def test_synthetic_out_of_range_and_midnight(tmp_path):
    inputs = synthetic_inputs(n=64, seed=1)
    inputs["reflectivity_dbz"][0, :3] = [-45.0, 55.0, -39.99]  # valid range is -40..50 dBZ
    inputs["cloud_mask"][1, 0] = -9
    inputs["start"] = datetime(2019, 1, 2, 23, 59, 55)
    path = write_geoprof_granule(tmp_path, **inputs)
    assert path.name.startswith("2019002235955_67551_")
    ds = read_granule(path)
    assert np.isnan(ds["reflectivity"].values[0, 0]) and np.isnan(ds["reflectivity"].values[0, 1])
    assert abs(ds["reflectivity"].values[0, 2] - -39.99) < 1e-4
    assert ds["cloud_mask"].values[1, 0] == -9
    t = ds["time"].values
    assert t[0] == np.datetime64("2019-01-02T23:59:55", "ns")
    assert t[-1] > np.datetime64("2019-01-03T00:00:00", "ns")  # 64 x 0.16 s crosses midnight
    assert (np.diff(t) > np.timedelta64(0)).all()


def test_source_name_and_attribute_fallback(synth, tmp_path):
    """Through Store.local_path an S3 object arrives as 'object.hdf': ``source`` names it."""
    _, path = synth
    local = tmp_path / "object.hdf"
    shutil.copyfile(path, local)
    uri = f"s3://bucket/raw/cloudsat/{path.name}"
    ds = read_granule(local, source=uri)
    assert ds.attrs["source_file"] == uri and ds.attrs["granule_id"] == "2019002175851_67551"
    plain = read_granule(local)  # no CloudSat name at all: swath attributes give the same ids
    assert (plain.attrs["granule_id"], plain.attrs["orbit"], plain.attrs["release"]) == (
        "2019002175851_67551", 67551, "R05")


def test_concurrent_reads_from_threads(synth):
    """HDF4 is not thread-safe; the reader serialises pyhdf sessions (Prefect runs tasks in threads)."""
    from concurrent.futures import ThreadPoolExecutor

    _, path = synth
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: read_granule(path), range(8)))
    for ds in results[1:]:
        np.testing.assert_array_equal(ds["reflectivity"].values, results[0]["reflectivity"].values)
        np.testing.assert_array_equal(ds["time"].values, results[0]["time"].values)


def test_r04_granule_fails_release_check(tmp_path):
    inputs = synthetic_inputs(n=32)
    path = write_geoprof_granule(tmp_path, **inputs, release="R04", epoch="E06", version=None)
    assert path.name == "2019002175851_67551_CS_2B-GEOPROF_GRANULE_P_R04_E06.hdf"
    ds = read_granule(path)
    assert ds.attrs["release"] == "R04"
    with pytest.raises(WrongReleaseError, match="R04") as exc:
        check_release(ds)
    assert path.name in str(exc.value)


def test_writer_rejects_mismatched_shapes(tmp_path):
    inputs = synthetic_inputs(n=16)
    inputs["latitude"] = inputs["latitude"][:-1]
    with pytest.raises(ValueError, match="latitude"):
        write_geoprof_granule(tmp_path, **inputs)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("keep", [0, 100, 5_000_000, -744])
def test_truncated_real_granule(real_path, tmp_path, keep):
    data = real_path.read_bytes()
    bad = tmp_path / REAL_NAME
    bad.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(CorruptFileError) as exc:
        read_granule(bad, require_reflectivity=False)
    assert str(bad) in str(exc.value)
    assert exc.value.path == str(bad)


def test_text_file_named_hdf(tmp_path):
    bad = tmp_path / "2019002175851_67551_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf"
    bad.write_text("<html><body>503 Service Unavailable</body></html>\n")
    with pytest.raises(CorruptFileError, match="not an HDF4 file") as exc:
        read_granule(bad)
    assert bad.name in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_granule(tmp_path / "nope.hdf")


def test_plain_hdf4_without_swath(tmp_path):
    path = tmp_path / "2019002175851_67551_CS_2B-GEOPROF_GRANULE_P1_R05_E08_F03.hdf"
    sd = SD(str(path), SDC.WRITE | SDC.CREATE)
    sds = sd.create("Radar_Reflectivity", SDC.INT16, (4, 5))
    sds[:] = np.zeros((4, 5), np.int16)
    sds.endaccess()
    sd.end()
    with pytest.raises(CorruptFileError, match="no HDF-EOS2 swath"):
        read_granule(path)


def test_all_fill_reflectivity(tmp_path):
    inputs = synthetic_inputs(n=24)
    inputs["reflectivity_dbz"][:] = np.nan
    path = write_geoprof_granule(tmp_path, **inputs)
    with pytest.raises(EmptyDataError, match="Radar_Reflectivity") as exc:
        read_granule(path)
    assert path.name in str(exc.value)
    geometry = read_granule(path, require_reflectivity=False)  # geometry only: no error, all NaN
    assert np.isnan(geometry["reflectivity"].values).all()
    assert not np.isnan(geometry["height"].values).any()
