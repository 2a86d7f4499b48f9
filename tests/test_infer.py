"""CloudSat blind-zone filling: geometry, regridding, windows, colocation, the granule run, Dask, real geometry."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
import xarray as xr
from _infer_helpers import granule_arrays, save_tiny_model, write_granule
from torch import nn

from bzpipe.checksums import sha256_file
from bzpipe.config import InferConfig
from bzpipe.infer.curtain import to_cpr_bins, to_model_grid
from bzpipe.infer.era5_track import colocate_many, colocate_track, coverage, normalize_era5
from bzpipe.infer.geometry import (
    ModelGrid,
    agl_edges_ascending,
    bin_edges,
    blind_zone_bins,
    grid_settings,
    surface_bin,
    surface_height,
)
from bzpipe.infer.predict import predict_curtain
from bzpipe.infer.regrid import interp_rows, layer_average, regrid_dbz
from bzpipe.infer.windows import Blender, taper, window_starts, window_weights
from bzpipe.schema import G0

torch.set_num_threads(1)

REAL_GRANULE = "cloudsat/2019002175851_67551_CS_2B-CLDCLASS_GRANULE_P1_R05_E08_F03.hdf"


# --------------------------------------------------------------------------- geometry


def column(n_bins: int = 10, top: float = 2280.0) -> np.ndarray:
    """One profile: centres 2280, 2040, ..., 120 m (bin 9 spans 0-240 m)."""
    return (top - 240.0 * np.arange(n_bins))[None, :]


def test_bin_edges_surface_bin_and_blind_zone_by_hand():
    h = np.vstack([column(), column(), column(), np.full((1, 10), np.nan)])
    dem = np.array([100.0, 250.0, -9999.0, 0.0])       # land in bin 9, land in bin 8, ocean fill, no geometry
    ground = surface_height(dem)
    np.testing.assert_array_equal(ground, [100.0, 250.0, 0.0, 0.0])
    e = bin_edges(h)
    np.testing.assert_allclose(e[0, [0, 1, -2, -1]], [2400.0, 2160.0, 240.0, 0.0])
    assert np.isnan(e[3]).all()
    np.testing.assert_array_equal(surface_bin(h, ground), [9, 8, 9, -1])
    bz = blind_zone_bins(h, ground, 1200.0)
    # DEM 100: bin bottoms AGL are -100, 140, 380, 620, 860, 1100, 1340 ... -> bins 4..9
    np.testing.assert_array_equal(np.flatnonzero(bz[0]), [4, 5, 6, 7, 8, 9])
    # DEM 250: surface bin 8 (bottom -10), bins above with bottom < 1200 AGL: 230, 470, 710, 950, 1190 -> 3..8
    np.testing.assert_array_equal(np.flatnonzero(bz[1]), [3, 4, 5, 6, 7, 8])
    assert not bz[3].any()
    asc = agl_edges_ascending(h, ground)
    np.testing.assert_allclose(asc[0, :3], [-100.0, 140.0, 380.0])


def test_model_grid_blind_rows_and_settings_lookup():
    g = ModelGrid(128, 10000.0)
    assert g.dz_m == pytest.approx(78.125)
    assert g.blind_rows(1200.0) == 16          # 15.36 rows -> 16 (1250 m)
    assert g.blind_rows(1250.0) == 16 and g.blind_rows(1250.1) == 17
    np.testing.assert_allclose(g.centres()[:2], [39.0625, 117.1875])
    # the training config record of a dataset build, as the dataset's root attrs hold it (JSON text)
    attrs = {"config": json.dumps({"type": "BuildConfig", "values": {
        "grid": {"n_heights": 64, "top_m": 6400.0}, "patch": {"width": 96, "blind_zone_rows": 12}}})}
    s = grid_settings({"channels": ["reflectivity"]}, attrs)
    assert (s["n_heights"], s["top_m"], s["width"], s["blind_zone_rows"]) == (64, 6400.0, 96, 12)
    with pytest.raises(KeyError, match="n_heights"):
        grid_settings({"channels": ["reflectivity"]})


# --------------------------------------------------------------------------- regridding


def test_interp_rows_matches_numpy_per_row():
    rng = np.random.default_rng(1)
    xp = np.cumsum(rng.uniform(0.1, 2.0, (50, 13)), axis=1) - 5
    fp = rng.normal(size=(50, 13))
    xq = rng.uniform(-8, 25, (50, 7))
    got = interp_rows(xq, xp, fp)
    want = np.stack([np.interp(xq[i], xp[i], fp[i]) for i in range(50)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_linear_z_layer_average_by_hand():
    src = np.array([[0.0, 240.0, 480.0]])                  # two 240 m layers
    dbz = np.array([[10.0, 20.0]])                          # Z = 10 and 100
    dst = np.array([[0.0, 120.0, 360.0, 400.0, 600.0]])
    out, observed = regrid_dbz(dbz, src, dst)
    assert out[0, 0] == pytest.approx(10.0, abs=1e-5)
    assert out[0, 1] == pytest.approx(10 * math.log10((10 * 120 + 100 * 120) / 240), abs=1e-5)   # 17.40 dBZ
    assert out[0, 2] == pytest.approx(20.0, abs=1e-5)
    assert not observed[0, 3] and np.isnan(out[0, 3])     # only 80 of 200 m covered (< 50 %)
    out2, obs2 = regrid_dbz(dbz, src, dst, min_coverage=0.3)
    assert obs2[0, 3] and out2[0, 3] == pytest.approx(20.0, abs=1e-5)
    # no echo counts as Z = 0 (still observed); an invalid layer carries no weight
    ne, _ = regrid_dbz(np.array([[np.nan, 20.0]]), src, dst)
    assert ne[0, 1] == pytest.approx(10 * math.log10(100 * 120 / 240), abs=1e-5)                  # 16.99 dBZ
    assert np.isnan(ne[0, 0])
    inv, obs_inv = regrid_dbz(dbz, src, dst, valid=np.array([[False, True]]))
    assert inv[0, 1] == pytest.approx(20.0, abs=1e-5) and not obs_inv[0, 0]


def test_layer_average_conserves_the_column_integral():
    rng = np.random.default_rng(2)
    src = np.sort(rng.uniform(0, 5000, (20, 31)), axis=1)
    src[:, 0], src[:, -1] = 0.0, 5000.0
    vals = rng.uniform(0, 50, (20, 30))
    dst = np.linspace(0, 5000, 17)
    mean, cov = layer_average(vals, src, dst)
    np.testing.assert_allclose(cov, 1.0)
    np.testing.assert_allclose((mean * np.diff(dst)).sum(1), (vals * np.diff(src, axis=1)).sum(1), rtol=1e-10)


# --------------------------------------------------------------------------- windows and blending


def test_window_starts_cover_the_track():
    np.testing.assert_array_equal(window_starts(300, 128, 32), [0, 96, 172])
    np.testing.assert_array_equal(window_starts(100, 128, 32), [0])
    np.testing.assert_array_equal(window_starts(256, 128, 0), [0, 128])
    with pytest.raises(ValueError):
        window_starts(300, 128, 128)


def test_cosine_tapers_sum_to_one_and_blending_is_exact():
    up, down = taper(64, 16, 0)[:16], taper(64, 0, 16)[-16:]
    np.testing.assert_allclose(up + down, 1.0)
    starts = window_starts(300, 64, 16)
    w = window_weights(starts, 64, 300)
    total = np.zeros(300)
    for s, wi in zip(starts, w):
        total[s:s + 64] += wi
    assert total.min() > 0.49                 # every column weighted
    # a field every window predicts identically is reproduced exactly
    field = np.sin(np.arange(300) / 7.0)[None, :] * np.ones((3, 1))
    b = Blender(300, 64, starts)
    for i, s in enumerate(starts):
        b.add(i, {"m": field[:, s:s + 64]})
    np.testing.assert_allclose(b.result()["m"], field, atol=1e-12)


def test_blended_std_is_the_mixture_std():
    starts = np.array([0, 2])                 # width 4, overlap 2: columns 2, 3 shared
    b = Blender(6, 4, starts)
    b.add(0, {"m": np.zeros((1, 4))}, std_of="m", std=np.ones((1, 4)))
    b.add(1, {"m": np.full((1, 4), 2.0)}, std_of="m", std=np.ones((1, 4)))
    r = b.result(std_of="m")
    w = taper(4, 0, 2)[2:], taper(4, 2, 0)[:2]             # weights of the two windows on cols 2, 3
    mix_mean = (w[0] * 0 + w[1] * 2) / (w[0] + w[1])
    mix_var = (w[0] * 1 + w[1] * (1 + 4)) / (w[0] + w[1]) - mix_mean ** 2
    np.testing.assert_allclose(r["m"][0, 2:4], mix_mean)
    np.testing.assert_allclose(r["std"][0, 2:4], np.sqrt(mix_var))
    np.testing.assert_allclose(r["std"][0, [0, 1, 4, 5]], 1.0)


class NoisyConstant(nn.Module):
    """Stand-in model: 0.25 + dropout(0.1) -> MC samples 0.25 or 0.45 (p = 0.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.25 + self.drop(torch.full_like(x[:, :1], 0.1)) + 0 * self.dummy


def test_predict_curtain_fills_only_the_blind_zone_with_mc_statistics():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (1, 16, 150)).astype(np.float32)
    active = np.ones(150, bool)
    active[:40] = False                                  # a first window without valid profiles is skipped
    out = predict_curtain(NoisyConstant(), x, width=32, overlap=8, blind_rows=4, n_passes=40,
                          quantiles=(0.05, 0.5, 0.95), batch_size=64, generator_seed=0, active=active)
    mean, std, q = out["mean"], out["std"], out["quantiles"]
    assert mean.shape == (16, 150) and q.shape == (3, 16, 150)
    np.testing.assert_array_equal(mean[4:], x[0, 4:])            # above the blind zone: bit-identical
    assert (std[4:] == 0).all()
    np.testing.assert_array_equal(mean[:, :24], x[0, :, :24])     # skipped columns keep the observation
    filled = mean[:4, 48:]
    assert np.all((filled > 0.25) & (filled < 0.45))
    assert abs(filled.mean() - 0.35) < 0.02                       # E = 0.25 + 0.5 * 0.2
    assert abs(std[:4, 48:].mean() - 0.1) < 0.02                 # Bernoulli(0.5) * 0.2 -> std 0.1
    assert np.all(q[0, :4, 48:] <= q[2, :4, 48:])


# --------------------------------------------------------------------------- granule <-> model grid


def granule_ds(n: int = 40, land_from: int | None = 20) -> xr.Dataset:
    a = granule_arrays(n, land_from=land_from)
    return xr.Dataset(
        {"reflectivity": (("profile", "bin"), a["reflectivity_dbz"].astype(np.float32)),
         "height": (("profile", "bin"), a["height_m"].astype(np.float32)),
         "cloud_mask": (("profile", "bin"), a["cloud_mask"]),
         "dem_elevation": ("profile", a["dem_elevation_m"].astype(np.float32)),
         "latitude": ("profile", a["latitude"]), "longitude": ("profile", a["longitude"]),
         "time": ("profile", np.datetime64("2019-01-02T12:00") + (a["profile_time_s"] * 1e9).astype("timedelta64[ns]"))},
        attrs={"granule_id": "2019002120000_67000", "product": "2B-GEOPROF", "release": "R05"})


def test_curtain_on_the_model_grid_and_back():
    ds = granule_ds()
    grid = ModelGrid(32, 5000.0)                     # 156.25 m rows
    c = to_model_grid(ds, grid, 1200.0)
    h = grid.centres()
    # cloud of 0 dBZ between 2 and 4 km AGL (bin edges at multiples of 240 m - 120 over the ocean)
    inside = (h > 2200) & (h < 3800)
    np.testing.assert_allclose(c.dbz[:, inside], 0.0, atol=1e-4)
    assert np.isnan(c.dbz[:, (h > 4200)]).all()      # noise with cloud mask 0 is no echo
    np.testing.assert_allclose(c.dbz[:20, h < 850], 10.0, atol=1e-4)
    # land (300 m): the surface bin (-180..60 m AGL) has no echo, so row 0 (0-156 m) averages
    # 60 m of Z = 0 with 96.25 m of 10 dBZ
    np.testing.assert_allclose(c.dbz[20:, 0], 10 * math.log10(10 * 96.25 / 156.25), atol=1e-4)
    np.testing.assert_allclose(c.dbz[20:, 1:5], 10.0, atol=1e-4)
    assert c.observed.all()
    np.testing.assert_array_equal(c.surface_bin[:20], 104)       # ocean: bin centred on 0 m
    np.testing.assert_array_equal(c.surface_bin[20:], 103)       # 300 m land: bin 120-360 m
    assert (c.blind_bins.sum(1) == 6).all()
    # back to CPR bins: a constant field on the grid gives that constant in the blind-zone bins
    back = to_cpr_bins(np.full((40, 32), 5.0), grid, c)
    np.testing.assert_allclose(back[c.blind_bins], 5.0, atol=1e-4)
    assert np.isnan(back[~c.blind_bins]).all()
    # the ocean surface bin (-120..120 m) is half under ground: it takes its above-ground half, all row 0
    ramp = np.where(h < 160, 20.0, 0.0)[None, :].repeat(40, 0)      # 20 dBZ in row 0 (0-156 m), 0 dBZ above
    b2 = to_cpr_bins(ramp, grid, c)
    assert b2[0, 104] == pytest.approx(20.0, abs=1e-3)
    # bin 103 (120-360 m): 36.25 m of row 0 (Z=100) and 203.75 m of Z=1, averaged in linear Z
    assert b2[0, 103] == pytest.approx(10 * math.log10((100 * 36.25 + 203.75) / 240), abs=1e-3)


# --------------------------------------------------------------------------- ERA-5 along the track


def era5_box(lat0: float = 70.0, lon0: float = -157.0) -> xr.Dataset:
    """Hand-made ERA-5: geopotential height 1000 m per 100 hPa below 1000 hPa; t = 280 - 0.005 * z."""
    p = np.array([1000.0, 900.0, 800.0, 700.0])
    z_m = np.array([100.0, 1100.0, 2100.0, 3100.0])
    times = np.array(["2019-01-02T11:00", "2019-01-02T12:00", "2019-01-02T13:00"], dtype="datetime64[ns]")
    lat = lat0 + np.array([1.0, 0.75, 0.5, 0.25, 0.0])
    lon = lon0 + np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    shape = (3, 4, 5, 5)
    z = np.broadcast_to((z_m * G0)[None, :, None, None], shape)
    t = 280.0 - 0.005 * np.broadcast_to(z_m[None, :, None, None], shape) \
        + np.arange(3)[:, None, None, None]                         # +1 K per hour
    u = np.broadcast_to(lon[None, None, None, :], shape)             # u tells the column's longitude
    dims = ("valid_time", "pressure_level", "latitude", "longitude")
    return xr.Dataset({"z": (dims, z), "t": (dims, t), "q": (dims, np.full(shape, 1e-3)),
                       "u": (dims, u), "v": (dims, np.zeros(shape))},
                      coords={"valid_time": times, "pressure_level": p, "latitude": lat, "longitude": lon})


def test_era5_colocation_by_hand():
    era5 = era5_box()
    t = np.array(["2019-01-02T12:10", "2019-01-02T12:40"], dtype="datetime64[ns]")
    out = colocate_track(era5, t, np.array([70.3, 70.6]), np.array([-156.6, 203.1]), np.array([0.0, 600.0]),
                         np.array([100.0, 600.0, 5000.0]))
    # profile 0 at 12:10: +1 K at 12:00, +2 K at 13:00 -> +7/6 K; column at lon -156.5; ground 0 m
    np.testing.assert_allclose(out["t"][0], np.array([280.0 - 0.5, 280.0 - 3.0, 280.0 - 15.5]) + 7 / 6, atol=1e-4)
    # profile 1 at 12:40 (+5/3 K); lon 203.1 == -156.9 -> column -157.0; ground 600 m -> z_msl = agl + 600
    np.testing.assert_allclose(out["t"][1][:2], np.array([280 - 0.005 * 700, 280 - 0.005 * 1200]) + 5 / 3,
                               atol=1e-4)
    np.testing.assert_allclose(out["u"][:, 0], [-156.5, -157.0])
    assert out["t"][1][2] == pytest.approx(280 - 0.005 * 3100 + 5 / 3)   # above the top level: constant
    late = colocate_track(era5, np.array(["2019-01-02T15:00"], dtype="datetime64[ns]"), np.array([70.3]),
                          np.array([-156.6]), np.array([0.0]), np.array([100.0]))
    assert late["t"][0, 0] == pytest.approx(279.5 + 2)                  # after the last hour: held constant
    np.testing.assert_array_equal(coverage(era5, np.array([70.5, 72.0, 70.5]), np.array([-156.5, -156.5, -150.0])),
                                  [True, False, False])
    fields, covered = colocate_many([era5], t, np.array([70.3, 75.0]), np.array([-156.6, -156.6]),
                                    np.zeros(2), np.array([100.0]))
    np.testing.assert_array_equal(covered, [True, False])
    assert np.isnan(fields["t"][1]).all()
    norm = normalize_era5({"t": np.array([[270.0]])}, {"t": {"mean": 260.0, "std": 5.0}})
    assert norm["t"][0, 0] == pytest.approx(2.0)
    norm = normalize_era5({"t": np.array([[270.0]])}, {"mean": {"t": 250.0}, "std": {"t": 10.0}})
    assert norm["t"][0, 0] == pytest.approx(2.0)


# --------------------------------------------------------------------------- one granule, end to end


@pytest.fixture
def tiny_model(store_root):
    return save_tiny_model(store_root, "tiny", width=64)


def test_fill_granule_changes_only_blind_zone_bins(store_root, tiny_model, tmp_path):
    from bzpipe.infer.granule import process_granule
    from bzpipe.infer.output import open_output
    from bzpipe.store import Store

    path = write_granule(store_root / "raw" / "cloudsat", n=150, land_from=75)
    store = Store(store_root)
    cfg = InferConfig(store_root=str(store_root), run_name="tiny", mc_passes=3, window_overlap=16, batch_size=32)
    res = process_granule(str(store_root), store.key_of(str(path)), cfg)
    assert res.status == "done", res.reason
    out = open_output(store, res.output_key).load()
    obs, filled, flag = (out[v].values for v in ("reflectivity_observed", "reflectivity_filled", "filled_flag"))
    np.testing.assert_array_equal(np.isnan(filled[flag == 0]), np.isnan(obs[flag == 0]))
    np.testing.assert_array_equal(filled[(flag == 0) & ~np.isnan(obs)], obs[(flag == 0) & ~np.isnan(obs)])
    assert (flag.sum(axis=1) == 6).all()                         # surface bin + 5 above: 1.2 km
    assert set(np.flatnonzero(flag[0])) == set(range(99, 105))
    assert np.isfinite(out["reflectivity_std"].values[flag == 1]).all()
    assert out.attrs["model_id"] == tiny_model and res.model_id == tiny_model
    prov = json.loads(out.attrs["provenance"])
    assert prov["model_id"] == tiny_model and prov["granule_id"] == res.granule_id
    assert prov["config"]["values"]["mc_passes"] == 3 and prov["code_version"]
    assert store.entry(res.output_key).producer["granule_sha256"] == sha256_file(path)
    assert prov["inputs"][str(path)] == sha256_file(path)
    assert store.exists(res.plot_key) and store.read_bytes(res.plot_key)[:4] == b"\x89PNG"
    # model grid: observed above the hidden rows, MC statistics inside them; every row that overlaps a
    # flagged bin is hidden: the top flagged bin ends at 1320 m (ocean) / 1260 m (land) AGL -> 9 rows
    rows = 9
    assert (out["hidden_rows"].values == rows).all()
    np.testing.assert_array_equal(out["mc_mean"].values[:, rows:], out["grid_observed"].values[:, rows:])
    assert (out["mc_std"].values[:, :rows] > 0).mean() > 0.9 and (out["mc_std"].values[:, rows:] == 0).all()
    assert (out["fill_status"].values == 0).all() and int(out["resolution_mismatch"]) == 0
    # idempotent: a second run with the same model skips
    again = process_granule(str(store_root), store.key_of(str(path)), cfg)
    assert again.status == "skipped" and again.output_key == res.output_key
    # a new model version (a retrained checkpoint) reprocesses into its own output, the old one stays
    from bzpipe.infer.predict import current_model_id

    assert current_model_id(str(store_root), "tiny") == tiny_model
    new_id = save_tiny_model(store_root, "tiny", width=64, seed=1)
    assert new_id != tiny_model and current_model_id(str(store_root), "tiny") == new_id
    newer = process_granule(str(store_root), store.key_of(str(path)), cfg)
    assert newer.status == "done" and newer.model_id == new_id
    assert newer.output_key == f"outputs/cloudsat/{new_id}-{cfg.settings_id()}/{res.granule_id}.zarr"
    assert store.is_complete(res.output_key) and store.is_complete(newer.output_key)
    # a model swapped between planning and running is refused, not silently used
    with pytest.raises(RuntimeError, match="not the planned"):
        process_granule(str(store_root), store.key_of(str(path)), cfg, model_id=tiny_model)


def test_incomplete_output_is_not_complete_and_is_replaced(store_root, tiny_model):
    from bzpipe.infer.granule import process_granule
    from bzpipe.store import Store

    path = write_granule(store_root / "raw" / "cloudsat", n=64)
    store = Store(store_root)
    cfg = InferConfig(store_root=str(store_root), run_name="tiny", mc_passes=2, plot=False)
    key = f"outputs/cloudsat/{tiny_model}-{cfg.settings_id()}/2019002120000_67000.zarr"
    (store_root / key).mkdir(parents=True)            # a crash left a half-written store
    (store_root / key / "zarr.json").write_text("{}")
    assert store.exists(key) and not store.is_complete(key)
    res = process_granule(str(store_root), store.key_of(str(path)), cfg)
    assert res.status == "done" and store.is_complete(key)
    assert xr.open_zarr(store.uri(key), consolidated=False).sizes["profile"] == 64


def test_bad_granules_are_quarantined_and_the_batch_goes_on(store_root, tiny_model, shared_data):
    import shutil

    from bzpipe.infer.batch import run_batch
    from bzpipe.quarantine import quarantine_record
    from bzpipe.store import Store

    raw = store_root / "raw" / "cloudsat"
    good = write_granule(raw, n=64, number=67001)
    trunc_src = write_granule(raw / "tmp", n=64, number=67002)
    trunc = raw / trunc_src.name
    trunc.write_bytes(trunc_src.read_bytes()[: trunc_src.stat().st_size // 3])
    shutil.rmtree(raw / "tmp")
    a = granule_arrays(64)
    a["reflectivity_dbz"][:] = np.nan
    allfill = write_granule(raw, number=67003, arrays=a)
    r04 = write_granule(raw, n=64, number=67004, release="R04", version=None, start=datetime(2015, 7, 19, 21, 24))
    cldclass = raw / REAL_GRANULE.split("/")[1]
    shutil.copyfile(shared_data / REAL_GRANULE, cldclass)
    store = Store(store_root)
    cfg = InferConfig(store_root=str(store_root), run_name="tiny", mc_passes=2, plot=False)
    keys = [store.key_of(str(p)) for p in (trunc, good, allfill, r04, cldclass)]
    results = {r["granule"]: r for r in run_batch(None, str(store_root), keys, cfg)}
    assert results[good.name]["status"] == "done"
    want = {trunc.name: "corrupt or truncated file", allfill.name: "only fill values",
            r04.name: "wrong release", cldclass.name: "missing variable (SDS)"}
    for name, cat in want.items():
        assert results[name]["status"] == "quarantined", results[name]
        rec = quarantine_record(store, name)
        assert rec["category"] == cat and name in rec["reason"] or name in rec["file"]
    assert "Radar_Reflectivity" in quarantine_record(store, cldclass.name)["reason"]
    assert "R04" in quarantine_record(store, r04.name)["reason"]


def test_landing_scan_bookkeeping(store_root, tiny_model):
    from datetime import timedelta

    from bzpipe.infer.batch import (
        idempotency_key,
        list_landing,
        pending_granules,
        record_emitted,
        select_by_date,
        should_emit,
    )
    from bzpipe.quarantine import quarantine
    from bzpipe.store import Store

    store = Store(store_root)
    landing = store_root / "landing" / "cloudsat"
    a = write_granule(landing, n=64, number=67020, start=datetime(2019, 1, 2, 3, 0))
    b = write_granule(landing, n=64, number=67021, start=datetime(2019, 1, 4, 3, 0))
    (landing / "notes.txt").write_text("not a granule")
    files = list_landing(store, "landing/cloudsat")
    assert [f.name for f in files] == [a.name, b.name]
    assert [f.name for f in select_by_date(files, datetime(2019, 1, 3).date(), None)] == [b.name]
    quarantine(store, b.name, ValueError("bad"))
    assert [f.name for f in pending_granules(store, files, tiny_model, "s")] == [a.name]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert should_emit(store, tiny_model, a.name, 600, now=t0)
    record_emitted(store, tiny_model, files[0], event_id="e1", now=t0)
    assert not should_emit(store, tiny_model, a.name, 600, now=t0 + timedelta(seconds=599))
    assert should_emit(store, tiny_model, a.name, 600, now=t0 + timedelta(seconds=601))
    assert should_emit(store, "another-model", a.name, 600, now=t0)
    assert idempotency_key(a.name, tiny_model, "123:4.5") == f"cloudsat:{a.name}:123:4.5:{tiny_model}"


def test_dask_batch_loads_the_model_once_per_worker(store_root, tiny_model):
    from distributed import Client, LocalCluster

    from bzpipe.infer.batch import run_batch
    from bzpipe.store import Store

    raw = store_root / "raw" / "cloudsat"
    paths = [write_granule(raw, n=64, number=67010 + i, start=datetime(2019, 1, 2, 12, i)) for i in range(3)]
    store = Store(store_root)
    cfg = InferConfig(store_root=str(store_root), run_name="tiny", mc_passes=2, plot=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        results = run_batch(client, str(store_root), [store.key_of(str(p)) for p in paths], cfg, tiny_model)

        def cache_size() -> int:
            from bzpipe.infer import predict

            return len(predict._MODELS)

        sizes = client.run(cache_size)
    assert [r["status"] for r in results] == ["done"] * 3
    assert list(sizes.values()) == [1]
    assert all(store.is_complete(r["output_key"]) for r in results)


def test_five_channel_model_reads_era5_along_the_track(store_root):
    from bzpipe.checkpoint import load_model
    from bzpipe.infer.fill import fill_granule

    norm = {"reflectivity": {}, "t": {"mean": 270.0, "std": 10.0}, "q": {"mean": 1e-3, "std": 1e-3},
            "u": {"mean": 0.0, "std": 10.0}, "v": {"mean": 0.0, "std": 10.0}}
    save_tiny_model(store_root, "tiny5", channels=5, width=32, normalization=norm, cold_threshold_c=10.0)
    model, meta = load_model(str(store_root), "tiny5")
    ds = granule_ds(n=80, land_from=None)
    ds["latitude"] = ("profile", np.linspace(70.2, 71.6, 80))    # leaves the 70-71 deg box after ~half
    ds["longitude"] = ("profile", np.full(80, -156.6))
    cfg = InferConfig(store_root=str(store_root), mc_passes=2, window_overlap=8)
    out = fill_granule(ds, model, meta, cfg, era5=[era5_box()], model_id=meta["model_id"])
    src = out["atmosphere_source"].values
    assert (out["out_of_domain"].values == 0).all()               # 7 degC air, trained up to 10 degC
    assert (src[:40] == 2).all() and (src[-20:] == 0).all()
    # a profile without an atmospheric state is never filled from the training mean: unfilled, flagged
    n_filled = out["filled_flag"].values.sum(1)
    assert (n_filled[src == 2] == 6).all() and (n_filled[src == 0] == 0).all()
    assert (out["fill_status"].values[src == 2] == 0).all() and (out["fill_status"].values[src == 0] == 3).all()
    blind = out["blind_zone_flag"].values == 1
    assert np.isnan(out["reflectivity_filled"].values[(src == 0)[:, None] & blind]).all()
    assert np.isnan(out["mc_mean"].values[src == 0][:, :9]).all()
    none = fill_granule(ds, model, meta, cfg, era5=None)
    assert (none["fill_status"].values == 3).all() and int(none["filled_flag"].sum()) == 0
    # ... or filled by a configured radar-only model, and flagged as such
    save_tiny_model(store_root, "tiny1", channels=1, width=32)
    ro = load_model(str(store_root), "tiny1")
    both = fill_granule(ds, model, meta, cfg, era5=[era5_box()], radar_only=ro)
    assert (both["fill_status"].values[src == 0] == 1).all() and (both["fill_status"].values[src == 2] == 0).all()
    assert (both["filled_flag"].values.sum(1) == 6).all()
    np.testing.assert_array_equal(both["mc_mean"].values[src == 2], out["mc_mean"].values[src == 2])


def test_out_of_domain_profiles_are_flagged_and_not_filled_unless_allowed(store_root):
    from bzpipe.checkpoint import load_model
    from bzpipe.infer.fill import fill_granule

    norm = {"reflectivity": {}, "t": {"mean": 270.0, "std": 10.0}, "q": {"mean": 1e-3, "std": 1e-3},
            "u": {"mean": 0.0, "std": 10.0}, "v": {"mean": 0.0, "std": 10.0}}
    save_tiny_model(store_root, "cold5", channels=5, width=32, normalization=norm, cold_threshold_c=-2.0)
    model, meta = load_model(str(store_root), "cold5")
    ds = granule_ds(n=80, land_from=None)
    ds["latitude"] = ("profile", np.r_[np.full(40, 70.5), np.full(40, 60.0)])   # training band: 65.5..76.3
    ds["longitude"] = ("profile", np.full(80, -156.6))
    era5 = era5_box()
    era5 = xr.concat([era5, era5.assign_coords(latitude=era5.latitude - 10.5)], dim="latitude")
    cfg = InferConfig(store_root=str(store_root), mc_passes=2, window_overlap=8)
    out = fill_granule(ds, model, meta, cfg, era5=[era5])
    t_low = out["surface_air_temperature"].values
    assert np.all(t_low - 273.15 > -2.0)                          # ERA-5 here: ~7 degC at the surface
    np.testing.assert_array_equal(out["out_of_domain"].values, np.r_[np.full(40, 1), np.full(40, 3)])
    assert (out["fill_status"].values == 4).all() and int(out["filled_flag"].sum()) == 0
    dom = json.loads(out.attrs["training_domain"])
    assert dom["cold_threshold_c"] == -2.0 and dom["latitude_band"] == pytest.approx([65.495, 76.323])
    allowed = fill_granule(ds, model, meta, cfg.model_copy(update={"fill_out_of_domain": True}), era5=[era5])
    assert (allowed["fill_status"].values == 2).all() and (allowed["filled_flag"].values.sum(1) == 6).all()
    np.testing.assert_array_equal(allowed["out_of_domain"].values, out["out_of_domain"].values)


# --------------------------------------------------------------------------- the real granule's geometry


def test_real_granule_geometry_filled_with_synthetic_reflectivity(shared_data, tmp_path):
    """The real R05 granule (2B-CLDCLASS: real Height, DEM, lat/lon, Profile_time; no reflectivity).

    Its reflectivity is synthetic: the scene generator's along-track curtain
    (``bzpipe.sources.synthetic.scene.along_track_curtain``), averaged in linear Z onto
    each real profile's own 240 m bins above its own ground.  Everything else - the
    surface bin, the blind zone, the regridding to the model grid and back, the
    windowing over all 36,950 profiles - runs on the real geometry.
    """
    from bzpipe.checkpoint import load_model
    from bzpipe.infer.granule import fill_and_write
    from bzpipe.infer.output import open_output
    from bzpipe.infer.regrid import regrid_dbz as regrid
    from bzpipe.sources.cloudsat import read_granule
    from bzpipe.sources.synthetic.scene import along_track_curtain
    from bzpipe.store import Store
    from bzpipe.store.layout import png_key

    ds = read_granule(shared_data / REAL_GRANULE, require_reflectivity=False)
    assert ds.sizes["profile"] == 36950 and ds.sizes["bin"] == 125
    # synthetic truth on a fine AGL grid along the real track, averaged onto the real bins
    lat, lon = np.radians(ds["latitude"].values), np.radians(ds["longitude"].values)
    step = 2 * 6371e3 * np.arcsin(np.sqrt(np.sin(np.diff(lat) / 2) ** 2
                                          + np.cos(lat[:-1]) * np.cos(lat[1:]) * np.sin(np.diff(lon) / 2) ** 2))
    s = np.concatenate([[0.0], np.cumsum(step)])
    fine_edges = np.arange(0.0, 6040.0, 80.0)                     # the model grid tops at 5 km
    # 50 m/s: the 40,460 km orbit maps onto 9 days of the site's weather (10 m/s: 47 days, five times
    # the texture tables to compute for the same ~20 % echo above the blind zone)
    truth = along_track_curtain("nsa", datetime(2019, 1, 2, 18, tzinfo=UTC), s - s.mean(),
                                0.5 * (fine_edges[:-1] + fine_edges[1:]), seed=7, advection_m_s=50.0)
    ground = surface_height(ds["dem_elevation"].values)
    edges = agl_edges_ascending(ds["height"].values, ground)
    on_bins, _ = regrid(truth, fine_edges, np.where(np.isfinite(edges), edges, 0.0), min_coverage=0.5)
    refl = on_bins[:, ::-1]
    refl[~np.isfinite(edges[:, 1:][:, ::-1])] = np.nan

    store = Store(tmp_path / "store")
    save_tiny_model(store.root, "tiny", n_heights=32, top_m=5000.0, width=128)
    model, meta = load_model(store, "tiny")
    cfg = InferConfig(store_root=store.root, mc_passes=2, window_overlap=16, batch_size=32,
                      fill_out_of_domain=True)             # the whole orbit, not only the Arctic
    timings: dict[str, float] = {}
    key, entry, out = fill_and_write(store, ds, model, meta, cfg, model_id=meta["model_id"],
                                     inputs={str(shared_data / REAL_GRANULE): "real"}, reflectivity=refl,
                                     timings=timings, reflectivity_source="synthetic scene on real geometry")
    valid = out["profile_valid"].values.astype(bool)
    lat = ds["latitude"].values
    outside = (lat < 70.495 - 5) | (lat > 71.323 + 5)
    np.testing.assert_array_equal(out["out_of_domain"].values[valid] == 2, outside[valid])
    assert (out["fill_status"].values[valid & outside] == 2).all()
    assert (out["fill_status"].values[valid & ~outside] == 0).all()
    assert valid.sum() == 20854                                   # profiles with a full Height column
    sb = out["surface_bin"].values
    h = ds["height"].values
    # the surface bin holds the ground: its centre within half a bin of the DEM height
    centre = h[np.flatnonzero(valid), sb[valid]]
    assert np.abs(centre - ground[valid]).max() <= 121.0
    flag = out["filled_flag"].values.astype(bool)
    assert set(np.unique(flag[valid].sum(1))) <= {5, 6} and not flag[~valid].any()
    obs, filled = out["reflectivity_observed"].values, out["reflectivity_filled"].values
    keep = ~flag & np.isfinite(obs)
    np.testing.assert_array_equal(filled[keep], obs[keep])
    # the model grid sees the synthetic echo where the truth has it (above the blind zone)
    g = out["grid_observed"].values[valid][:, 8:]
    assert 0.02 < np.isfinite(g).mean() < 0.9
    assert store.is_complete(key) and store.exists(png_key(key))
    assert png_key(key) == f"outputs/cloudsat/{meta['model_id']}-{cfg.settings_id()}/2019002175851_67551.png"
    reopened = open_output(store, key)
    assert reopened.sizes == {"profile": 36950, "bin": 125, "height": 32, "quantile": 3}
    assert set(timings) >= {"regrid", "inference", "write"}


def test_s3_store_landing_to_zarr_output(s3_root, tmp_path):
    """Landing area, raw copy, checkpoint and Zarr output all on S3 (moto server on 127.0.0.1)."""
    from bzpipe.infer.batch import list_landing, pending_granules
    from bzpipe.infer.granule import process_granule
    from bzpipe.infer.output import open_output
    from bzpipe.infer.staging import stage_granule
    from bzpipe.store import Store

    store = Store(s3_root)
    model_id = save_tiny_model(s3_root, "tiny", width=64)
    local = write_granule(tmp_path, n=80, number=67500)
    store.put_file(local, f"landing/cloudsat/{local.name}")
    files = list_landing(store, "landing/cloudsat")
    assert [(f.name, f.granule_id, f.size) for f in files] == [(local.name, "2019002120000_67500",
                                                                local.stat().st_size)]
    cfg = InferConfig(store_root=s3_root, run_name="tiny", mc_passes=2, window_overlap=16)
    assert pending_granules(store, files, model_id, cfg.settings_id()) == files
    key = stage_granule(store, files[0].uri)
    assert key == f"raw/cloudsat/{local.name}" and store.entry(key).sha256 == sha256_file(local)
    res = process_granule(s3_root, key, cfg)
    assert res.status == "done", res.reason
    assert res.output_key == f"outputs/cloudsat/{model_id}-{cfg.settings_id()}/2019002120000_67500.zarr"
    out = open_output(store, res.output_key)
    assert out.sizes["profile"] == 80 and int(out["filled_flag"].sum()) == 80 * 6
    assert store.read_bytes(res.plot_key)[:4] == b"\x89PNG"
    assert pending_granules(store, list_landing(store, "landing/cloudsat"), model_id, cfg.settings_id()) == []


def test_grid_comes_from_the_training_dataset_when_the_checkpoint_lacks_it(store_root):
    """A checkpoint meta as bzpipe.train writes it (model, channels, dataset URI, no grid)."""
    from _zarr_fixture import write_tiny_dataset

    from bzpipe.infer.fill import channels_of, model_settings

    uri = write_tiny_dataset(store_root, rows=32, cols=48, n=2)
    meta = {"model": {"in_channels": 6}, "channels": ["reflectivity", "t", "q", "u", "v"], "channel_set": "3+_5",
            "blind_zone_rows": 4, "dataset": {"uri": uri, "sha256": "", "n_train": 2, "n_val": 2}}
    s = model_settings(meta)
    assert (s["n_heights"], s["width"]) == (32, 48)
    assert s["top_m"] == pytest.approx(10000.0)                  # row centres (i + 0.5) * 312.5 m
    assert channels_of(meta) == 5 and channels_of({"channel_set": "3+_1"}) == 1
