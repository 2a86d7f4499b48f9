"""The dataset build: layout, normalization round trip, cold filter, resume, dask, real and synthetic inputs.

Most tests start from colocated site-days made from small hand-made schema
Datasets (no file readers involved); the integration tests at the end build
from raw files (synthetic ones, and the real SGP KaZR sample) in a temporary store.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from bzpipe.colocate import colocate
from bzpipe.config import KNOWN_SITES, BuildConfig, resolve_site
from bzpipe.dataset import (
    IncompleteDatasetError,
    open_dataset,
    plan_dataset,
    read_series,
    write_colocated,
    write_dataset,
)
from bzpipe.errors import ConfigError
from bzpipe.schema import CHANNELS, G0, norm_to_dbz
from bzpipe.split import SPLITS
from bzpipe.store import Store
from bzpipe.store.layout import colocated_key
from bzpipe.thermo import RELATIVE_HUMIDITY_TRANSFORM, humidity_feature

DAYS = ("2019-01-01", "2019-01-02")
WARM = ("T09:00", "T10:30")  # each day: surface at +1 C


def make_radar(day: str, step_s: float = 10.0, seed: int = 0) -> xr.Dataset:
    """A cloud layer with a wandering top, brighter downwards; gates from 160 m every 40 m."""
    rng = np.random.default_rng(seed)
    n = int(86400 / step_s)
    t = pd.Timestamp(day) + pd.to_timedelta(np.arange(n) * step_s, unit="s")
    h = 160.0 + 40.0 * np.arange(60)
    top = 1200 + 700 * np.sin(np.arange(n) * step_s / 5000.0 + np.cumsum(rng.normal(0, 0.03, n)))
    z = -15 + 20 * (1 - h[None, :] / np.maximum(top[:, None], 1)) + rng.normal(0, 2, (n, h.size))
    z = np.where(h[None, :] < top[:, None], z, np.nan).astype(np.float32)
    return xr.Dataset({"reflectivity": (("time", "height"), z, {"units": "dBZ"})},
                      coords={"time": t.values, "height": h}, attrs={"source_file": f"radar_{day}.nc"})


def make_era5(day: str, seed: int = 0) -> xr.Dataset:
    """ERA-5 box around NSA, hourly from day-1h to day+25h, temperature trending in time."""
    rng = np.random.default_rng(seed)
    t = pd.Timestamp(day) - pd.Timedelta(hours=1) + pd.to_timedelta(np.arange(27), unit="h")
    p = np.array([1000.0, 925.0, 850.0, 700.0, 500.0])
    zlev = -7000.0 * np.log(p / 1013.0)
    shp = (len(t), len(p), 2, 2)
    hours = ((t - pd.Timestamp("2019-01-01")) / pd.Timedelta(hours=1)).values
    tt = ((250 + 0.2 * hours)[:, None, None, None] - 0.0065 * zlev[None, :, None, None]
          + rng.normal(0, .2, shp))
    data = {"t": tt, "q": 2e-3 * np.exp(-zlev / 2000)[None, :, None, None] * np.ones(shp),
            "u": (5 + zlev / 1000)[None, :, None, None] + 0.05 * hours[:, None, None, None] * np.ones(shp),
            "v": -2 + rng.normal(0, 1, shp), "z": G0 * zlev[None, :, None, None] * np.ones(shp)}
    return xr.Dataset({k: (("time", "pressure_level", "latitude", "longitude"), v.astype(np.float32))
                       for k, v in data.items()},
                      coords={"time": t.values, "pressure_level": p, "latitude": [71.5, 71.25],
                              "longitude": [-156.75, -156.5]})


def make_met(day: str) -> xr.Dataset:
    t = pd.Timestamp(day) + pd.to_timedelta(np.arange(1440), unit="min")
    temp = np.full(t.size, -12.0, np.float32)
    temp[(t >= pd.Timestamp(day + WARM[0])) & (t < pd.Timestamp(day + WARM[1]))] = 1.0
    return xr.Dataset({"temperature": ("time", temp, {"units": "degC"})}, coords={"time": t.values})


def small_config(root: Path | str, **kw) -> BuildConfig:  # type: ignore[no-untyped-def]
    base = dict(store_root=str(root), sites=["nsa"], start="2019-01-01", end="2019-01-02",
                grid={"n_heights": 16, "top_m": 1600.0, "time_step_s": 20.0},
                patch={"width": 16, "blind_zone_rows": 4, "stride": 16, "echo_block": 0},
                split={"max_lag_s": 4 * 3600.0, "block_hours": 3.0, "gap_s": 1800.0}, region_samples=16,
                chunk_samples=8)
    base.update(kw)
    return BuildConfig.model_validate(base)


@pytest.fixture(scope="module")
def colocated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A store with two colocated NSA days (hand-made inputs)."""
    root = tmp_path_factory.mktemp("build") / "store"
    store = Store(root)
    cfg = small_config(root)
    keys = []
    for i, day in enumerate(DAYS):
        ds = colocate(make_radar(day, seed=i), make_era5(day, seed=i), KNOWN_SITES["nsa"], cfg.grid,
                      day, pd.Timestamp(day) + pd.Timedelta(days=1), met=make_met(day))
        key = colocated_key("nsa", date.fromisoformat(day))
        counts = write_colocated(store, key, ds)
        assert counts["bins"] == 4320 and counts["valid_bins"] == 4320
        assert store.is_complete(key)
        keys.append(key)
    return root, keys


def _copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _colocated_day(store: Store, key: str) -> xr.Dataset:
    return xr.open_zarr(store.uri(key), consolidated=False).load()


# --------------------------------------------------------------------------- layout, normalization


def test_layout_and_normalization_round_trip(colocated, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    root, keys = colocated
    root = _copy_store(root, tmp_path / "s")
    store = Store(root)
    cfg = small_config(root)
    caplog.set_level(logging.INFO, logger="bzpipe.dataset")
    plan = plan_dataset(store, cfg, keys, recipe_id="r1", inputs={"raw/x.nc": "ab" * 32})
    assert "decorrelation" in caplog.text and "warm" in caplog.text
    uri = write_dataset(str(root), plan, cfg)
    assert uri == store.uri("datasets/v1.zarr") and store.is_complete("datasets/v1.zarr")
    assert not store.exists("work/build/v1/progress.json")

    days = {k.split("/")[-1][:10]: _colocated_day(store, k) for k in keys}
    coloc = xr.concat([d[["reflectivity", "t", "q", "u", "v"]] for d in days.values()], dim="time")
    w = cfg.patch.width
    splits = {s: open_dataset(store, "v1").open_split(s) for s in SPLITS}
    assert all(splits[s].sizes["sample"] > 0 for s in SPLITS)
    ds = splits["train"]
    # ---- layout (bzpipe.schema "Zarr dataset")
    assert ds["x"].dims == ("sample", "channel", "row", "col") and ds["x"].dtype == np.float32
    assert ds.sizes["channel"] == 5 and ds.sizes["row"] == 16 and ds.sizes["col"] == w
    x_arr = zarr.open_group(uri, mode="r")["train"]["x"]       # random access: one sample per inner chunk,
    assert x_arr.chunks == (1, 5, 16, w)                         # shards of chunk_samples (issue 14)
    assert x_arr.shards == (min(cfg.chunk_samples, ds.sizes["sample"]), 5, 16, w)
    assert [str(c) for c in ds["channel"].values] == list(CHANNELS)
    np.testing.assert_allclose(ds["height"].values, (np.arange(16) + 0.5) * 100.0)
    assert ds["height"].attrs["units"] == "m" and ds["height"].attrs["standard_name"] == "height"
    assert ds["time_start"].dtype == np.dtype("datetime64[ns]")
    assert set(ds["season"].values.tolist()) == {"DJF"}
    assert set(ds["site"].values.tolist()) == {"nsa"}
    assert ds.attrs["blind_zone_rows"] == 4 and ds.attrs["channels"] == list(CHANNELS)
    assert ds.attrs["config"]["type"] == "BuildConfig"
    assert ds.attrs["provenance"]["inputs"] == {"raw/x.nc": "ab" * 32}
    assert ds.attrs["Conventions"].startswith("CF-")
    norm = ds.attrs["normalization"]
    assert norm["reflectivity"]["dbz_min"] == -60.0 and norm["reflectivity"]["no_echo"] == -1.0
    assert norm["q"]["transform"] == RELATIVE_HUMIDITY_TRANSFORM and norm["q"]["units"] == "1"
    assert np.all(ds["lowest_measured_row"].values == 1)       # first gate at 160 m: row 0 has none

    # ---- round trip of every sample of every split
    train_vals: dict[str, list[np.ndarray]] = {v: [] for v in ("t", "q", "u", "v")}
    for split, d in splits.items():
        x = d["x"].values
        assert np.isfinite(x).all()
        for i, t0 in enumerate(d["time_start"].values):
            src = coloc.sel(time=slice(t0, t0 + np.timedelta64(int((w - 1) * 20), "s")))
            assert src.sizes["time"] == w
            dbz = src["reflectivity"].values.T                   # (row, col)
            back = norm_to_dbz(x[i, 0])
            inside = np.isfinite(dbz[1:]) & (dbz[1:] >= -60) & (dbz[1:] <= 30)
            np.testing.assert_allclose(back[1:][inside], dbz[1:][inside], atol=2e-3)
            assert np.all(x[i, 0, 1:][np.isnan(dbz[1:])] == -1.0)       # no echo -> -1
            np.testing.assert_array_equal(x[i, 0, 0], x[i, 0, 1])       # unmeasured row copies row 1
            for k, v in enumerate(("t", "q", "u", "v"), start=1):
                raw = src[v].values.T
                if v == "q":   # the default build.era5_humidity="relative": q as relative humidity
                    z_msl = (resolve_site("nsa").elevation_m + d["height"].values)[:, None]
                    raw = humidity_feature(src["t"].values.T, raw, z_msl, "relative")
                np.testing.assert_allclose(x[i, k] * norm[v]["std"] + norm[v]["mean"], raw,
                                           rtol=1e-5, atol=1e-6 * abs(norm[v]["mean"]) + 1e-9)
                if split == "train":
                    train_vals[v].append(raw)
    # ---- ERA-5 statistics from the training split only
    for v, parts in train_vals.items():
        a = np.stack(parts).astype(np.float64)
        assert norm[v]["mean"] == pytest.approx(a.mean(), rel=1e-6)
        assert norm[v]["std"] == pytest.approx(a.std(), rel=1e-5)
        assert norm[v]["computed_on"] == "train"
    all_t = np.concatenate([splits[s]["x"].values[:, 1].ravel() for s in SPLITS])
    assert abs(all_t.mean()) > 1e-3          # the other splits are NOT part of the statistics (t trends)


# --------------------------------------------------------------------------- cold filter


def _sample_temperatures(store: Store, keys: list[str], plan, split: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    series = {r["key"]: r for r in read_series(store, keys)}
    out = []
    for col in plan.samples[split]["col"]:
        for key, c0, n, _ in plan.days["nsa"]:
            if c0 <= col < c0 + n:
                out.append(np.max(series[key]["surface_temperature"][col - c0:col - c0 + plan.width]))
    return np.array(out)


def test_cold_filter(colocated, caplog) -> None:  # type: ignore[no-untyped-def]
    root, keys = colocated
    store = Store(root)
    caplog.set_level(logging.INFO, logger="bzpipe.dataset")
    cold = plan_dataset(store, small_config(root), keys)
    warm_bins = cold.counts["sites"]["nsa"]["warm_bins"]
    assert warm_bins == pytest.approx(2 * 90 * 3, abs=4)          # 2 days x 1.5 h of 20 s bins
    assert "270 warm" in caplog.text or f"{warm_bins} warm" in caplog.text
    assert cold.counts["sites"]["nsa"]["temperature_from_met"] == 8640
    every = plan_dataset(store, small_config(root, cold_threshold_c=None), keys)
    assert every.counts["sites"]["nsa"]["warm_bins"] == 0
    n_cold = sum(cold.n_samples(s) for s in SPLITS)
    n_all = sum(every.n_samples(s) for s in SPLITS)
    assert n_all > n_cold
    for s in SPLITS:
        temps = _sample_temperatures(store, keys, cold, s)
        assert temps.size == cold.n_samples(s) and np.all(temps < -2.0)   # every column of every sample
    temps_all = np.concatenate([_sample_temperatures(store, keys, every, s) for s in SPLITS])
    assert np.any(temps_all > 0)                                          # warm samples come back
    with pytest.raises(ConfigError, match=r"gives 0 block\(s\)"):       # nothing cold: refused, with the numbers
        plan_dataset(store, small_config(root, cold_threshold_c=-20.0), keys)


def test_echo_block_starts() -> None:
    from bzpipe.dataset.plan import echo_block_starts

    e = np.zeros((8, 5), bool)
    e[2:5, 1:4] = True                                           # a 3 x 3 block starting at time 2
    assert echo_block_starts(e, 3).tolist() == [False, False, True, False, False, False, False, False]
    assert not echo_block_starts(e, 4).any()
    e[3, 2] = False                                              # a hole: no full block
    assert not echo_block_starts(e, 3).any() and not echo_block_starts(e, 0).any()


def test_sample_filter_decides_on_observed_rows_above_the_blind_zone(colocated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """King et al.'s filter: keep a patch with an echo block above the blind zone; the hidden rows never
    enter the decision (wiping or filling the blind zone changes nothing)."""
    root, keys = colocated
    store = Store(root)
    every = plan_dataset(store, small_config(root), keys)
    filt = plan_dataset(store, small_config(root, patch={"width": 16, "blind_zone_rows": 4, "stride": 16,
                                                         "echo_block": 5, "filter_train": True}), keys)
    n_every = {s: every.n_samples(s) for s in SPLITS}
    n_filt = {s: filt.n_samples(s) for s in SPLITS}
    assert 0 < sum(n_filt.values()) < sum(n_every.values())
    assert filt.counts["dropped_no_echo_block"] == sum(n_every.values()) - sum(n_filt.values())
    series = {r["key"]: r for r in read_series(store, keys, blind_zone_rows=4, echo_block=5)}
    for s in SPLITS:                                             # every kept patch has a block start inside
        for site, col in zip(filt.samples[s]["site"], filt.samples[s]["col"], strict=True):
            key, c0, n = next((d[0], d[1], d[2]) for d in filt.days[site] if d[1] <= col < d[1] + d[2])
            if col - c0 + 16 <= n:                               # (a patch across midnight: in two stores)
                assert series[key]["block_start"][col - c0:col - c0 + 16 - 5 + 1].any()
    # the same stores with the blind zone wiped (no echo) or filled (echo everywhere): the same samples
    for fill in (np.nan, 0.0):
        copy = _copy_store(root, tmp_path / f"bz-{fill}")
        for key in keys:
            ds = _colocated_day(Store(copy), key)
            refl = ds["reflectivity"].values.copy()
            refl[:, :4] = fill
            ds["reflectivity"] = (("time", "height"), refl)
            write_colocated(Store(copy), key, ds)
        again = plan_dataset(Store(copy), small_config(copy, patch={"width": 16, "blind_zone_rows": 4,
                                                                     "stride": 16, "echo_block": 5,
                                                                     "filter_train": True}), keys)
        assert again.samples == filt.samples


def test_filter_train_false_keeps_every_training_window_and_filters_val_and_test(colocated) -> None:  # type: ignore[no-untyped-def]
    root, keys = colocated
    store = Store(root)
    patch = {"width": 16, "blind_zone_rows": 4, "stride": 16, "echo_block": 5, "min_echo_fraction": 0.05}
    every = plan_dataset(store, small_config(root), keys)
    filt = plan_dataset(store, small_config(root, patch={**patch, "filter_train": True}), keys)
    train_all = plan_dataset(store, small_config(root, patch=patch), keys)      # the default: false
    assert filt.n_samples("train") < every.n_samples("train")           # the filter drops training windows
    assert train_all.samples["train"] == every.samples["train"]           # ... unless told not to
    for s in ("val", "test"):
        assert train_all.samples[s] == filt.samples[s]                  # evaluation keeps the filter
    assert train_all.split == filt.split
    assert train_all.counts["filtered_splits"] == ["val", "test"]
    assert filt.counts["filtered_splits"] == ["train", "val", "test"]


def test_eval_stride_overlaps_val_and_test_patches_only(colocated) -> None:  # type: ignore[no-untyped-def]
    root, keys = colocated
    store = Store(root)
    plain = plan_dataset(store, small_config(root), keys)
    over = plan_dataset(store, small_config(root, patch={"width": 16, "blind_zone_rows": 4, "stride": 16,
                                                         "eval_stride": 8, "echo_block": 0}), keys)
    assert over.samples["train"] == plain.samples["train"]
    for s in ("val", "test"):
        assert over.n_samples(s) > plain.n_samples(s)
        assert set(plain.samples[s]["col"]) <= set(over.samples[s]["col"])


# --------------------------------------------------------------------------- resume, incompleteness


class Interrupt(RuntimeError):
    pass


def _x(store: Store, version: str) -> dict[str, np.ndarray]:
    return {s: open_dataset(store, version).open_split(s)["x"].values for s in SPLITS}


def test_resume_after_interrupted_write(colocated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, keys = colocated
    root = _copy_store(root, tmp_path / "s")
    store = Store(root)
    cfg_a, cfg_b = small_config(root, version="a"), small_config(root, version="b")
    write_dataset(str(root), plan_dataset(store, cfg_a, keys, recipe_id="r"), cfg_a)
    ref = _x(store, "a")

    calls: list[tuple[str, int]] = []

    def stop_after_3(split: str, i: int) -> None:
        calls.append((split, i))
        if len(calls) == 3:
            raise Interrupt("simulated crash after 3 region writes")

    plan_b = plan_dataset(store, cfg_b, keys, recipe_id="r")
    n_regions = sum(-(-plan_b.n_samples(s) // cfg_b.region_samples) for s in SPLITS)
    assert n_regions > 4
    with pytest.raises(Interrupt):
        write_dataset(str(root), plan_b, cfg_b, on_region_written=stop_after_3)
    assert store.exists("datasets/b.zarr") and not store.is_complete("datasets/b.zarr")
    with pytest.raises(IncompleteDatasetError, match="interrupted"):
        open_dataset(store, "b").open_split("train")
    progress = store.read_json("work/build/b/progress.json")
    assert sum(len(v) for v in progress["done"].values()) == 3

    resumed: list[tuple[str, int]] = []
    plan_b2 = plan_dataset(store, cfg_b, keys, recipe_id="r")        # recomputed: the same plan
    assert plan_b2.plan_id() == plan_b.plan_id()
    write_dataset(str(root), plan_b2, cfg_b, on_region_written=lambda s, i: resumed.append((s, i)))
    assert len(resumed) == n_regions - 3 and not set(resumed) & set(calls)
    got = _x(store, "b")
    for s in SPLITS:
        np.testing.assert_array_equal(got[s], ref[s])
    assert store.entry("datasets/b.zarr").sha256 == store.entry("datasets/a.zarr").sha256


def test_open_refuses_missing_or_incomplete(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(IncompleteDatasetError, match="missing"):
        open_dataset(store, "nope").open_split("train")
    (tmp_path / "datasets" / "half.zarr").mkdir(parents=True)
    with pytest.raises(IncompleteDatasetError, match="half-written"):
        open_dataset(store, "half").open_split("train")


def test_region_writes_on_a_local_cluster_match(colocated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bzpipe.cluster import dask_client

    root, keys = colocated
    root = _copy_store(root, tmp_path / "s")
    store = Store(root)
    cfg = small_config(root, version="local")
    write_dataset(str(root), plan_dataset(store, cfg, keys, recipe_id="r"), cfg)
    cfg_d = small_config(root, version="dask")
    with dask_client(n_workers=2, threads_per_worker=1, processes=False) as client:
        write_dataset(str(root), plan_dataset(store, cfg_d, keys, recipe_id="r"), cfg_d)
        assert len(client.scheduler_info()["workers"]) == 2
        on_client = read_series(store, keys, blind_zone_rows=4, echo_block=5)     # read on the workers
    alone = read_series(store, keys, blind_zone_rows=4, echo_block=5)            # read here
    assert [r["key"] for r in on_client] == [r["key"] for r in alone] == keys
    for a, b in zip(on_client, alone):
        assert all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")
                   for k in ("time", "n_gates", "echo_above", "block_start"))
        assert all(np.array_equal(a["era5_low"][v], b["era5_low"][v], equal_nan=True) for v in a["era5_low"])
    assert store.entry("datasets/dask.zarr").sha256 == store.entry("datasets/local.zarr").sha256
    root_attrs = json.loads((Path(root) / "datasets" / "dask.zarr" / "zarr.json").read_text())["attributes"]
    assert json.loads(root_attrs["normalization"])["t"]["computed_on"] == "train"


# --------------------------------------------------------------------------- integration: raw files


def _need_readers() -> None:
    era5 = pytest.importorskip("bzpipe.sources.era5")
    arm = pytest.importorskip("bzpipe.sources.arm")
    if not hasattr(era5, "read_era5") or not hasattr(arm, "read_kazr"):
        pytest.skip("the ERA-5 / ARM readers are not available yet")


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw synthetic NSA files for 2 days (3 h of radar each), ERA-5 Dec 2018 legacy + Jan 2019 CDS."""
    _need_readers()
    from bzpipe.config import IngestConfig, SyntheticConfig
    from bzpipe.sources.synthetic.arm_files import write_kazr_day, write_met_day
    from bzpipe.sources.synthetic.era5_files import write_era5_month

    root = tmp_path_factory.mktemp("synth") / "store"
    files = tmp_path_factory.mktemp("synth-files")
    store = Store(root)
    scfg = SyntheticConfig(hours_per_day=3.0, n_gates=200, gate_spacing_m=50.0, time_step_s=4.0)
    levels = IngestConfig().era5_levels_hpa
    for day in (date(2019, 1, 1), date(2019, 1, 2)):
        p = write_kazr_day(files, "nsa", day, scfg, 7)
        store.put_file(p, f"raw/kazr/nsa/{p.name}")
        p = write_met_day(files, "nsa", day, scfg, 7)
        store.put_file(p, f"raw/met/nsa/{p.name}")
    for (y, m), layout in (((2018, 12), "legacy"), ((2019, 1), "cds")):
        p = write_era5_month(files, "nsa", y, m, levels, 0.5, 7, layout=layout)
        store.put_file(p, f"raw/era5/nsa/{p.name}")
    return root


def synthetic_config(root: Path, **kw) -> BuildConfig:  # type: ignore[no-untyped-def]
    base = dict(store_root=str(root), sites=["nsa"], start="2019-01-01", end="2019-01-02",
                grid={"n_heights": 32, "top_m": 10000.0, "time_step_s": 8.0},
                patch={"width": 16, "blind_zone_rows": 4, "echo_block": 0},
                split={"max_lag_s": 3600.0, "block_hours": 1.0, "gap_s": 600.0},
                region_samples=32, chunk_samples=8, n_workers=2, dask_processes=False)
    base.update(kw)
    return BuildConfig.model_validate(base)


def test_build_from_synthetic_files_on_a_local_cluster(synthetic_store: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    from bzpipe.dataset import build_dataset

    caplog.set_level(logging.INFO, logger="bzpipe.dataset")
    root = synthetic_store
    cfg = synthetic_config(root, version="lib")
    uri = build_dataset(cfg)
    store = Store(root)
    assert uri == store.uri("datasets/lib.zarr") and store.is_complete("datasets/lib.zarr")
    for day in ("2019-01-01", "2019-01-02"):
        assert store.is_complete(f"work/colocated/nsa/{day}.zarr")
    train = open_dataset(store, "lib").open_split("train")
    assert train.sizes["sample"] > 0 and train.sizes["row"] == 32 and train.sizes["col"] == 16
    assert np.isfinite(train["x"].values).all()
    refl = train["x"].values[:, 0]
    assert (refl > -1).any() and (refl == -1).any() and refl.max() <= 1.0    # echo and clear air
    prov = train.attrs["provenance"]
    raw = {k: e.sha256 for k, e in store.manifest("raw/").items()}
    assert prov["inputs"] == raw and len(raw) == 6                         # checksums from the manifest
    assert "decorrelation" in caplog.text and "temperature from met" in caplog.text
    # idempotent: a second run with the same inputs and config does nothing
    created = store.entry("datasets/lib.zarr").created
    caplog.clear()
    assert build_dataset(cfg) == uri
    assert store.entry("datasets/lib.zarr").created == created and "nothing to do" in caplog.text
    # a different config for the same version is refused (not silently mixed)
    from bzpipe.errors import StoreError

    with pytest.raises(StoreError, match="exists"):
        build_dataset(synthetic_config(root, version="lib", patch={"width": 8, "blind_zone_rows": 4}))


def test_an_era5_month_is_read_once_per_worker_and_again_when_replaced(synthetic_store: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """colocate_day reads each ERA-5 file once per process (a month serves all its days); a file whose
    checksum changed is read again, so a replaced month never colocates from stale values."""
    import bzpipe.dataset.inputs as inputs

    # the raw files only: other tests of this module colocate the fixture's days
    root = Path(shutil.copytree(synthetic_store, tmp_path / "store", ignore=shutil.ignore_patterns("work", "datasets")))
    store = Store(root)
    cfg = synthetic_config(root)
    reads: list[str] = []
    real = inputs._read_era5_any
    monkeypatch.setattr(inputs, "_read_era5_any", lambda p: reads.append(Path(p).name) or real(p))
    inputs._era5_file.cache_clear()
    days = inputs.find_inputs(store, cfg)
    assert [d.era5 for d in days] == [["raw/era5/nsa/era5_nsa_201812.nc", "raw/era5/nsa/era5_nsa_201901.nc"],
                                      ["raw/era5/nsa/era5_nsa_201901.nc"]]
    first = [inputs.colocate_day(str(root), d, cfg) for d in days]
    assert sorted(reads) == ["era5_nsa_201812.nc", "era5_nsa_201901.nc"]          # each file once
    t_old = _colocated_day(store, first[1]["key"])["t"].values
    # January replaced by a warmer month (another checksum): read again, and the day changes
    from bzpipe.sources.synthetic.era5_files import write_era5_month

    new = write_era5_month(tmp_path / "files", "nsa", 2019, 1, [1000, 850, 700, 500, 300], 0.5, 8)
    store.put_file(new, "raw/era5/nsa/era5_nsa_201901.nc")
    reads.clear()
    again = inputs.colocate_day(str(root), inputs.find_inputs(store, cfg)[1], cfg)
    assert reads == ["era5_nsa_201901.nc"] and not again["skipped"]
    assert not np.allclose(_colocated_day(store, again["key"])["t"].values, t_old, equal_nan=True)
    inputs._era5_file.cache_clear()


@pytest.mark.prefect
def test_build_dataset_flow(synthetic_store: Path, prefect_server) -> None:  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.build_dataset import build_dataset as flow

    cfg = synthetic_config(synthetic_store, version="flow")
    uri = flow(config=cfg, overrides=["split.fractions=[0.6, 0.2, 0.2]"])
    store = Store(synthetic_store)
    assert uri == store.uri("datasets/flow.zarr") and store.is_complete("datasets/flow.zarr")
    ds = open_dataset(store, "flow").open_split("val")
    assert ds["x"].dims == ("sample", "channel", "row", "col")
    assert ds.attrs["config"]["values"]["split"]["fractions"] == [0.6, 0.2, 0.2]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dataset-flow"])))
    assert arts and arts[0].type == "table" and "Decorrelation" in (arts[0].description or "")
    rows = json.loads(arts[0].data) if isinstance(arts[0].data, str) else arts[0].data
    total = sum(r["samples"] for r in rows)
    assert total == sum(open_dataset(store, "flow").open_split(s).sizes["sample"] for s in SPLITS)
    assert {r["split"] for r in rows} <= set(SPLITS) and {r["site"] for r in rows} == {"nsa"}


def test_build_from_the_real_sgp_kazr_file(shared_data: Path, tmp_path: Path) -> None:
    """The real 1-h SGP KaZR a1 sample (1-min steps) with a synthetic ERA-5 column; no met file."""
    _need_readers()
    from bzpipe.colocate import height_edges
    from bzpipe.config import IngestConfig
    from bzpipe.dataset import build_dataset
    from bzpipe.schema import dbz_to_norm
    from bzpipe.sources.arm import read_kazr
    from bzpipe.sources.synthetic.era5_files import write_era5_month

    src = shared_data / "kazr" / "sgpkazrgeC1.a1.20190529.000002.cdf"
    store = Store(tmp_path / "store")
    store.put_file(src, f"raw/kazr/sgp/{src.name}")
    p = write_era5_month(tmp_path, "sgp", 2019, 5, IngestConfig().era5_levels_hpa, 0.25, 3)
    store.put_file(p, f"raw/era5/sgp/{p.name}")
    kw = dict(store_root=str(store.root), sites=["sgp"], start="2019-05-29", end="2019-05-29",
              grid={"time_step_s": 60.0}, patch={"width": 16, "stride": 4, "blind_zone_rows": 16, "echo_block": 0},
              split={"fractions": (0.5, 0.25, 0.25), "gap_s": 120.0, "block_hours": 1 / 3},
              region_samples=8, chunk_samples=4, n_workers=1, dask_processes=False)
    # no met file: the cold filter falls back to ERA-5 (this synthetic column is about -22 C at
    # the lowest row); a threshold below that leaves no training sample, and the build says so
    with pytest.raises(ValueError, match=r"training split is empty|gives 0 block\(s\)"):
        build_dataset(BuildConfig.model_validate({**kw, "version": "cold", "cold_threshold_c": -40.0}))
    cfg = BuildConfig.model_validate({**kw, "cold_threshold_c": None, "version": "real"})
    build_dataset(cfg)
    n = {s: open_dataset(store, "real").open_split(s).sizes["sample"] for s in SPLITS}
    assert n["train"] > 0 and sum(n.values()) >= 3
    ds = open_dataset(store, "real").open_split("train")
    assert ds.sizes["row"] == 128 and ds["height"].values[0] == pytest.approx(10000 / 256)
    assert np.all(ds["lowest_measured_row"].values == 1)       # first gate at 100.7 m: row 0 unmeasured
    # hand check of the regridding: one column of one sample against the reader's gates
    radar = read_kazr(src)
    edges = height_edges(cfg.grid)
    i, col = 0, 3
    t = ds["time_start"].values[i] + np.timedelta64(60 * col, "s")
    prof = radar["reflectivity"].sel(time=slice(t, t + np.timedelta64(59, "s"))).values
    assert prof.shape[0] == 1
    h = radar["height"].values
    for row in (1, 5, 20, 60):
        inside = (h >= edges[row]) & (h < edges[row + 1])
        lin = np.where(np.isnan(prof[0, inside]), 0.0, 10 ** (prof[0, inside] / 10)).mean()
        dbz = 10 * np.log10(lin) if lin > 0 else np.nan
        want = float(dbz_to_norm(np.array([dbz]))[0])
        assert ds["x"].values[i, 0, row, col] == pytest.approx(want, abs=1e-5)
    assert np.isfinite(ds["x"].values).all()


def test_build_on_an_s3_store(s3_root: str, tmp_path: Path) -> None:
    """The same day colocated and written on S3 (moto) and locally: identical dataset digests."""
    day = DAYS[0]
    digests = []
    for root in (s3_root, str(tmp_path / "local")):
        store = Store(root)
        cfg = small_config(root, split={"gap_s": 600.0, "block_hours": 2.0}, region_samples=64,
                           chunk_samples=16)
        ds = colocate(make_radar(day), make_era5(day), KNOWN_SITES["nsa"], cfg.grid, day,
                      pd.Timestamp(day) + pd.Timedelta(days=1), met=make_met(day))
        key = colocated_key("nsa", date.fromisoformat(day))
        write_colocated(store, key, ds)
        uri = write_dataset(root, plan_dataset(store, cfg, [key], recipe_id="r"), cfg)
        assert uri == store.uri("datasets/v1.zarr") and store.is_complete("datasets/v1.zarr")
        assert open_dataset(store, "v1").open_split("train")["x"].sizes["sample"] > 0
        digests.append(store.entry("datasets/v1.zarr").sha256)
    assert uri.startswith(str(tmp_path)) and digests[0] == digests[1]


def test_dask_client_connects_to_an_existing_scheduler(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from distributed import LocalCluster

    from bzpipe.cluster import current_client, dask_client, scheduler_address

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
        assert scheduler_address() == cluster.scheduler_address
        assert scheduler_address("tcp://elsewhere:1") == "tcp://elsewhere:1"   # config / parameter first
        with dask_client(n_workers=3) as client:
            assert client.scheduler.address == cluster.scheduler_address
            assert current_client() is client
            assert client.submit(sum, [1, 2, 3]).result() == 6
        assert cluster.status.name == "running"                                # not ours to close
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    assert scheduler_address() is None


def test_bad_radar_file_is_named(synthetic_store: Path, tmp_path: Path) -> None:
    from bzpipe.dataset import colocate_day, find_inputs
    from bzpipe.errors import InputFileError

    store = Store(tmp_path / "bad")
    for k in Store(synthetic_store).list("raw/era5/"):
        store.write_bytes(k, Store(synthetic_store).read_bytes(k))
    name = "nsaarsclkazr1kolliasC1.c0.20190101.000000.nc"
    store.write_bytes(f"raw/kazr/nsa/{name}", b"\x89HDF\r\n\x1a\n truncated")
    cfg = synthetic_config(store.root, end="2019-01-01")
    (day,) = find_inputs(store, cfg)
    with pytest.raises(InputFileError, match=name):
        colocate_day(store.root, day, cfg)
    assert not store.exists("work/colocated/nsa/2019-01-01.zarr")
