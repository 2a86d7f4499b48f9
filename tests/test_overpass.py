"""Overpass validation: a synthetic overpass over NSA, drawn from the same scene as the synthetic KaZR,
scored against that KaZR put through the CPR forward operator."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
import torch
from _infer_helpers import save_tiny_model

from bzpipe.config import CprOperatorConfig, InferConfig, IngestConfig, SyntheticConfig
from bzpipe.store import Store

torch.set_num_threads(1)
NORM = {"reflectivity": {}, "t": {"mean": 255.0, "std": 10.0}, "q": {"mean": 5e-4, "std": 5e-4},
        "u": {"mean": 0.0, "std": 10.0}, "v": {"mean": 0.0, "std": 10.0}}
OVERPASS = datetime(2019, 3, 1, 3, 0)


def test_scores_by_hand():
    from bzpipe import overpass as ov

    truth = np.full((4, 6), np.nan)
    truth[:, :2] = [[0.0, -10.0], [-20.0, np.nan], [5.0, 5.0], [np.nan, np.nan]]
    seen = np.ones((4, 6), bool)
    hidden = np.full(4, 2)
    first = np.array([-5.0, np.nan, 10.0, np.nan])
    perfect = truth.copy()
    off = np.where(np.isfinite(truth), truth + 3.0, np.nan)           # 3 dB too bright where there is echo
    rep = np.where(np.arange(6)[None, :] < 2, first[:, None], truth)
    s = ov.score({"UNET": perfect, "REP": rep, "OFF": off}, truth, seen, hidden, first)
    assert s["n_pixels"] == 8
    assert s["pearson_r"]["UNET"] == pytest.approx(1.0) and s["mae_dbz"]["UNET"] == 0.0
    assert s["mae_dbz"]["OFF"] == pytest.approx(3.0 * 5 / 8)            # 5 echo pixels of 8 (no echo = -60)
    # REP: [-5,-5], [-60,-60], [10,10], [-60,-60] vs truth [0,-10], [-20,-60], [5,5], [-60,-60]
    p = np.array([-5, -5, -60, -60, 10, 10, -60, -60.0])
    t = np.array([0, -10, -20, -60, 5, 5, -60, -60.0])
    assert s["pearson_r"]["REP"] == pytest.approx(np.corrcoef(p, t)[0, 1])
    assert s["mae_dbz"]["REP"] == pytest.approx(np.abs(p - t).mean())
    cloud = s["events"]["UNET"]["cloud"]
    assert (cloud["hits"], cloud["correct_negatives"], cloud["POD"]) == (3, 1, 1.0)


def test_reprocess_then_overpass_flow_writes_the_report(prefect_server, store_root):
    """The pipeline's last two steps on a small scale: a coincident overpass (granule + ECMWF-AUX in the
    landing area) is filled, then the overpass flow fetches the day's KaZR / met / ERA-5 through the
    ingest flow (offline source) and writes reports/<run>/overpass.json and overpass.png."""
    from bzpipe import overpass as ov
    from bzpipe.infer.output import open_output
    from bzpipe.sources.synthetic.cloudsat import generate_overpass
    from flows.overpass import overpass
    from flows.reprocess import reprocess_granule

    save_tiny_model(store_root, "tiny5", channels=5, width=64, n_heights=64, top_m=5000.0, normalization=NORM,
                    cpr_resolution=False)
    landing = store_root / "landing" / "cloudsat"
    geo = generate_overpass(landing, "nsa", OVERPASS, 400, 7, SyntheticConfig())
    cfg = InferConfig(store_root=str(store_root), run_name="tiny5", mc_passes=2, window_overlap=16,
                      sites=["nsa"], allow_resolution_mismatch=True,
                      overpass={"radius_km": 100.0, "window_h": 3.0, "report_run": "check"})
    res = reprocess_granule(str(geo), config=cfg)
    store = Store(store_root)
    assert res["status"] == "done"
    assert store.is_complete(f"raw/cloudsat/{geo.name.replace('2B-GEOPROF', 'ECMWF-AUX').replace('_P1_', '_P_')}")
    assert not store.exists("raw/era5/nsa/era5_nsa_201903.nc")       # ECMWF-AUX covers the track: no ERA-5
    out = open_output(store, res["output_key"])
    assert (out["atmosphere_source"].values == 1).all() and int(out["resolution_mismatch"]) == 1

    ingest = IngestConfig(store_root=str(store_root), sites=["nsa"], seed=7,
                          synthetic=SyntheticConfig(hours_per_day=6, cloudsat_profiles=400))
    rep = overpass(config=cfg, ingest=ingest, operator=CprOperatorConfig())
    assert store.is_complete("raw/kazr/nsa/nsaarsclkazr1kolliasC1.c0.20190301.000000.nc")
    assert rep["report_key"] == "reports/check/overpass.json"
    doc = store.read_json("reports/check/overpass.json")
    assert set(doc["pearson_r"]) == {"UNET", "REP", "MAR"} and doc["n_overpasses"] == 1
    assert doc["pearson_r"]["REP"] is not None and doc["pearson_r"]["MAR"] is not None
    assert doc["resolution_mismatch"] == 1 and doc["model_id"] == res["model_id"]
    one = doc["overpasses"][0]
    assert one["site"] == "nsa" and one["distance_km"] < 30.0
    assert one["time"][:15] in ("2019-03-01T02:5", "2019-03-01T03:0")
    assert doc["n_profiles"] > 100 and doc["n_pixels"] > 1000
    assert store.read_bytes("reports/check/overpass.png")[:4] == b"\x89PNG"
    # the coincident pair is one scene: above the hidden rows the CPR's own observation and the KaZR
    # through the operator agree closely (that is what makes the blind-zone comparison meaningful)
    passes = ov.find_overpasses(store, ov.output_keys(store, res["model_id"], cfg.settings_id()), ["nsa"], 100.0)
    near = open_output(store, res["output_key"]).isel(profile=passes[0].profiles).load()
    truth, seen = ov.kazr_cpr_view(store, "nsa", passes[0].time, np.asarray(passes[0].along_m),
                                   near["height"].values, CprOperatorConfig(), window_h=3.0, seed=cfg.seed)
    above = (np.arange(64)[None, :] >= near["hidden_rows"].values[:, None] + 2) & seen
    t = np.nan_to_num(truth[above], nan=-60.0)
    o = np.nan_to_num(near["grid_observed"].values[above], nan=-60.0)
    assert np.corrcoef(t, o)[0, 1] > 0.6
    json.dumps(doc)                                                  # plain JSON (no NaN)
