"""CloudSat inference inputs and outputs: ECMWF-AUX along the whole track, ERA-5 track boxes, the
resolution rule, CF metadata and the netCDF-4 export."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _infer_helpers import save_tiny_model, write_granule

from bzpipe.config import InferConfig, SyntheticConfig
from bzpipe.store import Store

NORM = {"reflectivity": {}, "t": {"mean": 255.0, "std": 10.0}, "q": {"mean": 5e-4, "std": 5e-4},
        "u": {"mean": 0.0, "std": 10.0}, "v": {"mean": 0.0, "std": 10.0}}
START = datetime(2019, 1, 2, 12, 0, 0)


@pytest.fixture(scope="module")
def overpass_files(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic NSA overpass (300 profiles) and its ECMWF-AUX companion."""
    from bzpipe.sources.synthetic.cloudsat import generate_overpass

    d = tmp_path_factory.mktemp("granules")
    geo = generate_overpass(d, "nsa", datetime(2019, 1, 3, 3), 300, 5, SyntheticConfig())
    aux = next(d.glob("*_CS_ECMWF-AUX_*.hdf"))
    return geo, aux


def _store_with(tmp_path: Path, *files: Path) -> Store:
    store = Store(tmp_path / "store")
    for f in files:
        store.put_file(f, f"raw/cloudsat/{f.name}")
    return store


def test_ecmwf_aux_round_trip_and_state_on_the_model_rows(overpass_files):
    from bzpipe.infer.state import ecmwf_aux_on_rows
    from bzpipe.sources.cloudsat import check_companion, granule_info, read_ecmwf_aux, read_granule
    from bzpipe.sources.synthetic.cloudsat import ecmwf_aux_arrays, geoprof_arrays

    geo, aux_path = overpass_files
    info = granule_info(aux_path.name)
    assert info.product == "ECMWF-AUX" and info.iteration == "P" and info.granule_id == granule_info(geo.name).granule_id
    g, aux = read_granule(geo), read_ecmwf_aux(aux_path)
    assert check_companion(g, aux) is aux and aux.attrs["orbit_in_file"] == g.attrs["orbit"]
    arr = geoprof_arrays(g["time"].values[0].astype("datetime64[s]").astype(datetime), 300, 5, "nsa", 150)
    want = ecmwf_aux_arrays(arr, 5)
    np.testing.assert_allclose(aux["temperature"].values, want["temperature_k"], rtol=1e-6)
    np.testing.assert_allclose(aux["u"].values, want["u_m_s"], rtol=1e-5, atol=1e-5)
    assert np.isnan(aux["temperature"].values[:, -1]).all()                # under the ground: fill
    np.testing.assert_allclose(aux["ec_height"].values, want["ec_height_m"], atol=0.5)
    # onto the model rows by hand: linear in height above ground between the bracketing EC levels
    heights = np.array([39.0, 500.0, 2500.0])
    fields, covered = ecmwf_aux_on_rows(aux, np.zeros(300), heights)
    assert covered.all()
    ech = aux["ec_height"].values[::-1].astype(float)
    t = aux["temperature"].values[0, ::-1].astype(float)
    ok = np.isfinite(t)
    expect = np.interp(heights, ech[ok], t[ok])
    np.testing.assert_allclose(fields["t"][0], expect, rtol=1e-6)


def test_companion_of_another_orbit_or_length_is_quarantined_with_the_reason(overpass_files, tmp_path):
    from bzpipe.infer.granule import process_granule
    from bzpipe.infer.output import open_output
    from bzpipe.quarantine import quarantine_record
    from bzpipe.sources.synthetic.cloudsat import generate_overpass

    geo, aux = overpass_files
    # the ECMWF-AUX of another orbit under this granule's name
    other = generate_overpass(tmp_path / "other", "nsa", datetime(2019, 1, 3, 9), 300, 5, SyntheticConfig())
    wrong = tmp_path / aux.name
    shutil.copy(next(other.parent.glob("*ECMWF-AUX*.hdf")), wrong)
    store = _store_with(tmp_path, geo, wrong)
    save_tiny_model(store.root, "tiny5", channels=5, width=64, normalization=NORM)
    cfg = InferConfig(store_root=store.root, run_name="tiny5", mc_passes=2, window_overlap=16,
                      atmosphere_sources=("ecmwf_aux",), fill_out_of_domain=True)
    res = process_granule(store.root, f"raw/cloudsat/{geo.name}", cfg)
    assert res.status == "done"
    rec = quarantine_record(store, f"raw/cloudsat/{aux.name}")
    assert rec is not None and "ECMWF-AUX of orbit" in rec["reason"] and aux.name in rec["reason"]
    out = open_output(store, res.output_key)
    assert (out["atmosphere_source"].values == 0).all() and (out["fill_status"].values == 3).all()
    # a different profile count
    from bzpipe.sources.cloudsat import read_ecmwf_aux
    from bzpipe.sources.synthetic.cloudsat_hdf import write_ecmwf_aux_granule

    a = read_ecmwf_aux(aux)
    short = tmp_path / "short"
    p = write_ecmwf_aux_granule(short, ec_height_m=a["ec_height"].values, temperature_k=a["temperature"].values[:250],
                                specific_humidity=a["specific_humidity"].values[:250], u_m_s=a["u"].values[:250],
                                v_m_s=a["v"].values[:250], pressure_pa=a["temperature"].values[:250] * 0 + 9e4,
                                latitude=a["latitude"].values[:250], longitude=a["longitude"].values[:250],
                                profile_time_s=0.16 * np.arange(250), start=START.replace(day=3, hour=2, minute=59, second=36),
                                granule_number=int(a.attrs["orbit"]))
    store2 = _store_with(tmp_path / "b", geo)
    store2.put_file(p, f"raw/cloudsat/{aux.name}")
    save_tiny_model(store2.root, "tiny5", channels=5, width=64, normalization=NORM)
    res2 = process_granule(store2.root, f"raw/cloudsat/{geo.name}", cfg.model_copy(update={"store_root": store2.root}))
    rec2 = quarantine_record(store2, f"raw/cloudsat/{aux.name}")
    assert res2.status == "done" and rec2 is not None and "has 250 profiles" in rec2["reason"]


def test_every_valid_profile_gets_the_state_from_ecmwf_aux(overpass_files, tmp_path):
    from bzpipe.infer.granule import process_granule
    from bzpipe.infer.output import open_output

    geo, aux = overpass_files
    store = _store_with(tmp_path, geo, aux)
    save_tiny_model(store.root, "tiny5", channels=5, width=64, normalization=NORM)
    cfg = InferConfig(store_root=store.root, run_name="tiny5", mc_passes=2, window_overlap=16,
                      domain_latitude_margin_deg=0.5)
    res = process_granule(store.root, f"raw/cloudsat/{geo.name}", cfg)
    out = open_output(store, res.output_key).load()
    valid = out["profile_valid"].values.astype(bool)
    assert valid.all() and (out["atmosphere_source"].values == 1).all()
    t = out["surface_air_temperature"].values
    assert np.isfinite(t).all() and 220 < t.min() and t.max() < 275
    # in the training latitudes (NSA/OLI +- 0.5 deg) filled, outside not (and flagged)
    lat = out["latitude"].values
    inside = (lat >= 70.495 - 0.5) & (lat <= 71.323 + 0.5)
    assert inside.any() and (~inside).any()
    assert (out["fill_status"].values[inside] == 0).all() and (out["fill_status"].values[~inside] == 4).all()
    prov = __import__("json").loads(out.attrs["provenance"])
    assert any("ECMWF-AUX" in k for k in prov["inputs"])
    assert out.attrs["atmosphere_sources"] == "ecmwf_aux era5"


def test_a_kazr_resolution_model_is_refused_unless_allowed(tmp_path):
    from bzpipe.infer.batch import process_safely
    from bzpipe.infer.fill import ResolutionMismatchError
    from bzpipe.infer.granule import process_granule
    from bzpipe.infer.output import open_output

    store = Store(tmp_path / "store")
    path = write_granule(tmp_path / "store" / "raw" / "cloudsat", n=80)
    save_tiny_model(store.root, "kazr", width=64, cpr_resolution=False)
    cfg = InferConfig(store_root=store.root, run_name="kazr", mc_passes=2, window_overlap=16)
    with pytest.raises(ResolutionMismatchError, match="set infer.allow_resolution_mismatch=true") as e:
        process_granule(store.root, f"raw/cloudsat/{path.name}", cfg)
    assert "build.forward_operator.enabled=true" in str(e.value)
    failed = process_safely(store.root, f"raw/cloudsat/{path.name}", cfg.model_dump(mode="json"), None)
    assert failed["status"] == "failed" and "allow_resolution_mismatch" in failed["reason"]
    ok = process_granule(store.root, f"raw/cloudsat/{path.name}",
                         cfg.model_copy(update={"allow_resolution_mismatch": True}))
    out = open_output(store, ok.output_key)
    assert int(out["resolution_mismatch"]) == 1 and out.attrs["model_resolution"] == "kazr"
    assert out["resolution_mismatch"].attrs["flag_meanings"].split()[1] == "model_trained_at_kazr_resolution"


def test_track_boxes_cover_the_needed_profiles():
    from bzpipe.infer.era5_track import track_boxes

    n = 3000
    lat = np.linspace(57.0, 81.6, n)
    lon = np.linspace(-144.0, 152.0, n)
    t = np.datetime64("2019-03-01T02:56") + np.arange(n) * np.timedelta64(160, "ms")
    need = np.ones(n, bool)
    need[1000:1200] = False
    boxes = track_boxes(lat, lon, t, need, max_span_deg=10.0)
    covered = np.zeros(n, bool)
    for b in boxes:
        nth, w, s, e = b["area"]
        assert nth - s <= 10.5 and e - w <= 10.5 and all(abs(v * 4 - round(v * 4)) < 1e-9 for v in b["area"])
        i0, i1 = b["profiles"]
        assert (lat[i0:i1 + 1] <= nth).all() and (lat[i0:i1 + 1] >= s).all()
        assert (lon[i0:i1 + 1] >= w).all() and (lon[i0:i1 + 1] <= e).all()
        assert b["days"] == ["2019-03-01"] and b["hours"] in ([2, 3], [2, 3, 4], [3, 4])   # the bracketing hours
        covered[i0:i1 + 1] = True
    assert covered[need].all() and not covered[1000:1200].any()


def test_era5_track_boxes_through_the_cds_path(tmp_path):
    """No ECMWF-AUX: the profiles outside the stored site boxes get ERA-5 boxes along the track,
    requested with cdsapi (from the CDS double on 127.0.0.1), stored and then read by the fill."""
    from doubles.cds import CdsDouble

    from bzpipe.credentials import CdsCredentials
    from bzpipe.infer.companion import fetch_track_era5, track_era5_keys
    from bzpipe.infer.granule import process_granule
    from bzpipe.infer.output import open_output
    from bzpipe.sources.synthetic import generate_cloudsat_granule

    geo = generate_cloudsat_granule(tmp_path / "g", START, 200, 2, SyntheticConfig(), site="nsa", ecmwf_aux=False)
    store = _store_with(tmp_path, geo)
    save_tiny_model(store.root, "tiny5", channels=5, width=64, normalization=NORM)
    cfg = InferConfig(store_root=store.root, run_name="tiny5", mc_passes=2, window_overlap=16, era5_source="cds",
                      fill_out_of_domain=True)
    with CdsDouble("k-1", box_deg=1.0) as cds:
        keys = fetch_track_era5(store, cfg, f"raw/cloudsat/{geo.name}", CdsCredentials(cds.url, "k-1"))
        req = cds.submitted_requests()
    assert keys and keys == track_era5_keys(store, geo.name[:19]) and len(req) == len(keys)
    assert all(r["day"] == ["02"] and r["time"][0] == "12:00" for r in req)
    res = process_granule(store.root, f"raw/cloudsat/{geo.name}", cfg)
    out = open_output(store, res.output_key)
    src = out["atmosphere_source"].values
    assert (src == 2).any()                                 # the double serves the NSA box: part of the track
    assert ((src == 2) == (out["fill_status"].values != 3)).all()
    # nothing is requested again for a granule whose boxes are stored
    with CdsDouble("k-1", box_deg=1.0) as cds:
        fetch_track_era5(store, cfg, f"raw/cloudsat/{geo.name}", CdsCredentials(cds.url, "k-1"))
        assert len(cds.submitted_requests()) <= len(req)


def test_cf_metadata_and_the_netcdf4_export(overpass_files, tmp_path, capsys):
    import netCDF4

    from bzpipe.cli import main
    from bzpipe.infer.cf import PAPER_DOI
    from bzpipe.infer.granule import process_granule

    geo, aux = overpass_files
    store = _store_with(tmp_path, geo, aux)
    save_tiny_model(store.root, "tiny5", channels=5, width=64, normalization=NORM)
    cfg = InferConfig(store_root=store.root, run_name="tiny5", mc_passes=2, window_overlap=16)
    res = process_granule(store.root, f"raw/cloudsat/{geo.name}", cfg)
    zarr_path = store.uri(res.output_key)
    out = xr.open_zarr(zarr_path, consolidated=False)
    assert {"latitude", "longitude", "time", "height", "cpr_height"} <= set(out.coords)
    assert out["latitude"].attrs["standard_name"] == "latitude" and out["time"].attrs["standard_name"] == "time"
    assert out["height"].attrs["standard_name"] == "height" and out["height"].attrs["units"] == "m"
    for name in ("reflectivity_observed", "reflectivity_filled", "mc_mean", "mc_quantiles", "grid_observed"):
        assert out[name].attrs["standard_name"] == "equivalent_reflectivity_factor"
        assert out[name].attrs["units"] == "dBZ"
    for name, v in out.variables.items():
        assert v.attrs.get("long_name"), name
        if "flag_meanings" in v.attrs:
            assert len(v.attrs["flag_values"]) == len(v.attrs["flag_meanings"].split()), name
        elif name != "time":
            assert v.attrs.get("units"), name
    for flag in ("filled_flag", "blind_zone_flag", "grid_filled_flag", "profile_valid", "atmosphere_source",
                 "out_of_domain", "fill_status", "surface_source", "resolution_mismatch"):
        assert "flag_values" in out[flag].attrs and "flag_meanings" in out[flag].attrs, flag
    g = out.attrs
    assert g["Conventions"] == "CF-1.10" and PAPER_DOI in g["references"]
    assert g["title"] and g["history"] and "granule" in g["source"] and "ECMWF-AUX" in g["source"]

    nc = tmp_path / "export" / "granule.nc"
    assert main(["export", zarr_path, str(nc)]) == 0
    assert capsys.readouterr().out.strip() == str(nc)
    back = xr.open_dataset(nc, engine="netcdf4")
    assert set(back.coords) >= {"latitude", "longitude", "time", "height"}
    np.testing.assert_array_equal(back["reflectivity_filled"].values, out["reflectivity_filled"].values)
    dt = np.abs((back["time"].values - out["time"].values).astype("timedelta64[ns]").astype(np.int64))
    assert dt.max() < 1000                                            # microsecond integers
    assert back.attrs["Conventions"] == "CF-1.10" and "bzpipe export" in back.attrs["history"]
    with netCDF4.Dataset(nc) as d:
        assert d.data_model == "NETCDF4"
        assert d["reflectivity_filled"].filters()["zlib"] is True
        assert d["reflectivity_filled"].standard_name == "equivalent_reflectivity_factor"
        assert "latitude" in d["reflectivity_filled"].coordinates
        assert list(d["fill_status"].flag_values) == [0, 1, 2, 3, 4, 5]
    assert main(["export", str(tmp_path / "missing.zarr"), str(nc)]) == 2
    assert "no such Zarr store" in capsys.readouterr().err


def test_landing_scan_skips_companions_and_stages_them_with_the_granule(overpass_files, tmp_path):
    from bzpipe.infer.batch import list_landing
    from bzpipe.infer.companion import companion_key, stage_companion
    from bzpipe.infer.staging import stage_granule

    geo, aux = overpass_files
    store = Store(tmp_path / "store")
    for f in (geo, aux):
        store.put_file(f, f"landing/cloudsat/{f.name}")
    assert [f.name for f in list_landing(store, "landing/cloudsat")] == [geo.name]
    key = stage_granule(store, store.uri(f"landing/cloudsat/{geo.name}"))
    assert companion_key(store, key) is None
    assert stage_companion(store, store.uri(f"landing/cloudsat/{geo.name}")) == f"raw/cloudsat/{aux.name}"
    assert companion_key(store, key) == f"raw/cloudsat/{aux.name}"
