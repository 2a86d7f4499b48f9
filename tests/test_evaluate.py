"""Evaluation end to end on a tiny dataset + a tiny trained U-Net; the one-mask rule; the flow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _zarr_fixture import write_tiny_dataset

from bzpipe import evaluate as ev
from bzpipe.checkpoint import load_model
from bzpipe.config import EvalConfig, TrainConfig
from bzpipe.dataset.reader import sample_selection
from bzpipe.errors import StoreError
from bzpipe.metrics import mae
from bzpipe.report import evaluate_and_report
from bzpipe.schema import norm_to_dbz
from bzpipe.store import Store
from bzpipe.torchdata import PatchDataset

torch.set_num_threads(1)
FAST = dict(dataset="tiny", run_name="tiny_run", mc_passes=4, n_bootstrap=40, batch_size=4, n_cases=2,
            xai_samples=4)


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> Path:
    """A tiny dataset (blind zone 4 of 32 rows) and a U-Net trained on it for 2 epochs."""
    from bzpipe.train import train

    root = tmp_path_factory.mktemp("evalstore") / "store"
    write_tiny_dataset(root, n={"train": 8, "val": 4, "test": 8}, rows=32, cols=32, blind_zone_rows=4)
    train(TrainConfig(store_root=str(root), dataset="tiny", run_name="tiny_run", filters=(4, 8, 8, 8, 8),
                      batch_size=4, lr=1e-3, epochs=2, device="cpu", amp=False))
    return root


def test_predict_fields_shapes_and_baselines_on_the_same_patches(trained_root: Path):
    cfg = EvalConfig(store_root=str(trained_root), **FAST)
    model, meta = load_model(trained_root, "tiny_run")
    ds = PatchDataset(trained_root, "tiny", "test", channels=meta["channels"])
    f = ev.predict_fields(model, ds, cfg, indices=np.array([1, 3, 6]))
    assert f.truth.shape == (3, 4, 32) and f.row_above.shape == (3, 32) and f.base_above.shape == (3, 32)
    assert set(f.preds) == {"UNET", "REP", "MAR", "TELEA", "NS"}
    x = torch.stack(ds.__getitems__([1, 3, 6])).numpy()
    np.testing.assert_array_equal(f.truth, norm_to_dbz(x[:, 0, :4]))
    np.testing.assert_array_equal(f.row_above, norm_to_dbz(x[:, 0, 4]))
    for r in range(4):  # REP = the first observed row, copied down
        np.testing.assert_array_equal(f.preds["REP"][:, r], f.row_above)
    assert np.all(f.spread >= 0) and f.spread.shape == (3, 4, 32)
    lo, hi = f.quantiles[0.05], f.quantiles[0.95]
    both = np.isfinite(lo) & np.isfinite(hi)
    assert np.all(lo[both] <= hi[both] + 1e-4)
    assert list(f.sites) == ["oli", "oli", "nsa"] and f.heights.shape == (32,)


def _hand_fields() -> ev.EvalFields:
    """4 patches, blind zone 2 x 3; pixel (0, 0) of every patch has high spread and all the errors."""
    truth = np.full((4, 2, 3), -10.0)
    rep = truth.copy()
    rep[:, 0, 0] = 40.0          # REP wrong by 50 dBZ only at the high-spread pixel
    unet = truth.copy()
    unet[:, 0, 0] = 0.0          # U-Net wrong by 10 dBZ there
    spread = np.ones_like(truth)
    spread[:, 0, 0] = 5.0
    return ev.EvalFields(indices=np.arange(4), truth=truth, preds={"UNET": unet, "REP": rep},
                         row_above=np.full((4, 3), -10.0), base_above=np.full((4, 3), np.nan), spread=spread,
                         quantiles={}, sites=np.array(["nsa", "oli", "nsa", "oli"], dtype=object),
                         times=np.zeros(4, "datetime64[ns]"), heights=np.arange(6) * 100.0 + 50.0)


def test_one_mask_excludes_the_same_pixels_for_every_method():
    f = _hand_fields()
    cfg = EvalConfig(n_bootstrap=20)
    valid, base, info = ev.build_mask(f, None)
    assert valid.all() and info["excluded"] == 0
    s = ev.score_fields(f, valid, base, cfg)
    assert s["scores"]["all"]["REP"]["MAE"].estimate == pytest.approx(50 / 6)
    assert s["scores"]["all"]["UNET"]["MAE"].estimate == pytest.approx(10 / 6)
    valid, base, info = ev.build_mask(f, 0.8)  # cut at the 0.8 quantile of the spread: 1 dBZ
    assert info["excluded"] == 4 and info["spread_cut_dbz"] == 1.0 and not valid[:, 0, 0].any()
    s = ev.score_fields(f, valid, base, cfg)
    # the baseline loses its errors at exactly the pixels the U-Net does: both perfect now
    assert s["scores"]["all"]["REP"]["MAE"].estimate == 0.0
    assert s["scores"]["all"]["UNET"]["MAE"].estimate == 0.0
    assert s["mask"]["excluded"] == 4
    d = s["differences"]["all"]["REP"]["MAE"]
    assert d.estimate == 0.0 and d.low == 0.0 and d.high == 0.0
    assert set(s["scores"]) == {"all", "nsa", "oli"} and s["n_patches"] == {"all": 4, "nsa": 2, "oli": 2}


def test_select_cases_prefers_blind_zone_echo_from_each_site():
    f = _hand_fields()
    f.truth[1] = np.nan  # oli patch 1 clear
    f.truth[3, 0] = np.nan  # oli patch 3 half clear
    assert ev.select_cases(f, 2).tolist() == [0, 3]
    assert ev.select_cases(f, 0).size == 0


def test_run_evaluation_and_report(trained_root: Path):
    cfg = EvalConfig(store_root=str(trained_root), spread_exclusion_quantile=0.95, **FAST)
    store = Store(trained_root)
    out = evaluate_and_report(cfg, store)
    index_key = store.key_of(out["index"])
    assert index_key == "reports/tiny_run/index.html" and store.is_complete(index_key)
    page = store.read_bytes(index_key).decode()
    assert page.count("data:image/png;base64,") == 8 and "<img" in page and 'src="http' not in page
    for name, uri in out["figures"].items():
        assert store.read_bytes(store.key_of(uri))[:8] == b"\x89PNG\r\n\x1a\n", name
    doc = store.read_json("reports/tiny_run/scores.json")
    summ = doc["summary"]
    assert summ["mask"]["excluded"] > 0
    assert "the same pixels are excluded for every method" in summ["mask"]["rule"]
    assert doc["provenance"]["config"]["values"]["spread_exclusion_quantile"] == 0.95
    assert summ["sample_selection"]["rule"] == "every window kept (no sample filter)"   # the tiny build: 0
    assert "Samples: every window kept (no sample filter)" in page
    assert any(k.endswith("checkpoint-last.pt") for k in doc["provenance"]["inputs"])   # the default
    # every patch in exactly one class of the MAE-by-class table, and the page shows it
    reg = summ["regimes"]["all"]
    assert sum(e["n"] for e in reg.values()) == summ["n_patches"]["all"]
    assert set(reg["neither"]["MAE"]) == set(summ["methods"]) and "virga-like" in page
    # the verdict follows from the numbers, and the page says it plainly: a U-Net of 4-8 filters trained
    # for 2 epochs on 8 patches is not ahead of REP and MAR on all four scores
    sc = summ["scores"]["all"]

    def better(b: str, key: str) -> bool:
        u, o = (sc[m]["MAE"] if key == "MAE" else sc[m][key]["CSI"] for m in ("UNET", b))
        if u["estimate"] is None or o["estimate"] is None:
            return False
        return u["estimate"] < o["estimate"] if key == "MAE" else u["estimate"] > o["estimate"]

    ahead = all(better(b, k) for b in ("REP", "MAR") for k in ("MAE", "cloud", "shallow_snowfall", "virga"))
    assert ahead is False
    assert doc["verdict"]["ahead"] is False and out["verdict"]["ahead"] is False
    assert "The U-Net is NOT ahead of REP and MAR" in page and "Why this may be so" in page
    assert "the U-Net is ahead of REP and MAR" not in page
    # scored MAE of a baseline = the metric applied with the same mask, averaged over patches
    res = ev.run_evaluation(cfg, store)
    per = mae(res.fields.preds["MAR"], res.fields.truth, res.valid)
    assert res.summary["scores"]["all"]["MAR"]["MAE"].estimate == pytest.approx(float(np.nanmean(per)))
    assert res.xai is not None and set(res.xai["drop_channel"]) == {"none", "t", "q", "u", "v"}
    assert math.isfinite(res.summary["uncertainty"]["spread_skill_ratio"])


def test_sample_selection_says_which_splits_king_et_al_s_filter_chose() -> None:
    def attrs(filtered=None, **patch):  # type: ignore[no-untyped-def]
        a = {"config": {"values": {"patch": {"echo_block": 10, "min_echo_fraction": 0.0, **patch}}}}
        if filtered is not None:                           # what the build's plan records (counts)
            a["provenance"] = {"counts": {"filtered_splits": filtered}}
        return a

    now = sample_selection(attrs(["val", "test"], filter_train=False))
    assert now["filtered_splits"] == ["val", "test"] and now["rule"].startswith("val/test patches kept only")
    assert now["rule"].endswith("training on every window") and "10 x 10" in now["rule"]
    old = sample_selection(attrs())                       # built before the plan recorded the splits
    assert old["filtered_splits"] == ["train", "val", "test"] and "training on every" not in old["rule"]
    both = sample_selection(attrs(["train", "val", "test"], filter_train=True, echo_block=0,
                                  min_echo_fraction=0.2))
    assert both["filtered_splits"] == ["train", "val", "test"] and "echo in at least 0.2" in both["rule"]
    assert sample_selection(attrs(echo_block=0))["filtered_splits"] == []
    assert sample_selection({})["rule"] == "not recorded in the dataset"
    # where the test split came from: a held-out period, or blocks drawn among the others
    held = {"config": {"values": {"split": {"fractions": [0.8, 0.2, 0.0], "test_from": "2019-11-01"}}}}
    assert sample_selection(held)["split_rule"] == ("test: every split block from 2019-11-01 on (a held-out "
                                                    "period); train/val: 0.8/0.2 of the blocks before it")
    drawn = {"config": {"values": {"split": {"fractions": [0.6, 0.15, 0.25]}}}}
    assert sample_selection(drawn)["split_rule"] == "train/val/test: 0.6/0.15/0.25 of the split blocks, drawn among them"


def test_seed_runs_block_bootstrap_and_bright_patch_exclusion(trained_root: Path):
    """Further seeds are scored on the same patches (mean +- sd); intervals resample site-days; the
    authors' MAX_DBZ exclusion drops bright patches for every method and the report says so."""
    from bzpipe.train import train

    train(TrainConfig(store_root=str(trained_root), dataset="tiny", run_name="tiny_run.seed5", seed=5,
                      filters=(4, 8, 8, 8, 8), batch_size=4, lr=1e-3, epochs=1, device="cpu", amp=False))
    store = Store(trained_root)
    full = ev.run_evaluation(EvalConfig(store_root=str(trained_root), **{**FAST, "n_cases": 0}), store)
    assert full.summary["bootstrap"]["all"]["unit"] == "site x 24 h" and full.summary["seeds"]["n"] == 1
    cut = float(np.median(full.fields.truth_max))
    cfg = EvalConfig(store_root=str(trained_root), seed_runs=["tiny_run.seed5"], max_truth_dbz=cut,
                     **{**FAST, "xai": False})
    out = evaluate_and_report(cfg, store)
    doc = store.read_json("reports/tiny_run/scores.json")["summary"]
    seeds = doc["seeds"]
    assert seeds["runs"] == ["tiny_run", "tiny_run.seed5"] and seeds["n"] == 2
    st = seeds["stats"]["UNET.MAE"]
    assert len(st["values"]) == 2 and st["sd"] is not None and st["mean"] == pytest.approx(np.mean(st["values"]))
    assert "UNET-REP.MAE" in seeds["stats"] and "UNET-MAR.virga_CSI" in seeds["stats"]
    excl = doc["patch_exclusion"]
    kept = full.fields.truth_max <= cut
    assert excl["excluded_patches"] == int((~kept).sum()) > 0 and doc["n_patches"]["all"] == int(kept.sum())
    page = store.read_bytes(store.key_of(out["index"])).decode()
    assert "Spread across training seeds" in page and f"exceeds {cut:g} dBZ" in page
    assert "training seeds (mean ± sd)" in out["markdown"]


def test_a_model_is_scored_on_another_build_in_its_own_normalization(trained_root: Path):
    """Another build of the data (another winter, a rebuild) standardizes ERA-5 with its own training
    statistics: the evaluation refuses it unless allowed, and then feeds the model the patches in the
    model's normalization, so the same physical data give the same fill."""
    from _zarr_fixture import write_restandardized_copy

    from bzpipe.errors import DatasetMismatchError

    write_restandardized_copy(trained_root, "tiny", "tiny_other", {"t": 2.0, "q": -1.0, "u": 0.5, "v": 0.0},
                              {"t": 3.0, "q": 0.5, "u": 2.0, "v": 4.0})
    store = Store(trained_root)
    cfg = EvalConfig(store_root=str(trained_root), **{**FAST, "xai": False, "n_cases": 0})
    own = ev.run_evaluation(cfg, store)
    with pytest.raises(DatasetMismatchError, match="allow_dataset_mismatch"):
        ev.run_evaluation(cfg.model_copy(update={"dataset": "tiny_other"}), store)
    other = ev.run_evaluation(cfg.model_copy(update={"dataset": "tiny_other", "allow_dataset_mismatch": True}),
                              store)
    assert other.summary["dataset_check"]["renormalized"] is True
    assert "renormalized" not in own.summary["dataset_check"]
    u_own, u_other = (np.nan_to_num(r.fields.preds["UNET"], nan=-60.0) for r in (own, other))
    np.testing.assert_allclose(u_other, u_own, atol=0.05)


def test_a_model_from_another_store_is_scored_on_chosen_patches(trained_root: Path, tmp_path: Path):
    """run_evaluation reads the model from ``model_store`` and the data from ``store`` (how
    benchmarks/dev_winter.py scores a demo model on another winter's build), on the ``indices`` given:
    the same data in another store give the fill of the model's own store, patch for patch."""
    data_root = tmp_path / "data"
    write_tiny_dataset(data_root, n={"train": 8, "val": 4, "test": 8}, rows=32, cols=32, blind_zone_rows=4)
    cfg = EvalConfig(store_root=str(trained_root), **{**FAST, "xai": False, "n_cases": 0})
    idx = np.array([0, 3, 6])
    own = ev.run_evaluation(cfg, Store(trained_root), indices=idx)
    with pytest.raises(StoreError, match="no checkpoint here"):    # the data's store holds no model
        ev.run_evaluation(cfg.model_copy(update={"store_root": str(data_root)}), Store(data_root), indices=idx)
    other = ev.run_evaluation(cfg.model_copy(update={"store_root": str(data_root), "allow_dataset_mismatch": True}),
                              Store(data_root), model_store=Store(trained_root), indices=idx)
    assert other.summary["n_patches"]["all"] == own.summary["n_patches"]["all"] == 3
    np.testing.assert_array_equal(other.fields.indices, idx)
    for m in ("UNET", "REP"):
        np.testing.assert_array_equal(other.fields.preds[m], own.fields.preds[m])


@pytest.mark.prefect
def test_evaluate_flow_writes_report_and_artifacts(prefect_server, trained_root: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.evaluate import evaluate

    cfg = EvalConfig(store_root=str(trained_root), xai=False, **FAST)
    uri = evaluate(config=cfg, overrides=["n_cases=1"])
    store = Store(trained_root)
    assert uri == store.uri("reports/tiny_run/index.html") and store.is_complete(store.key_of(uri))
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["evaluation-tiny-run", "evaluation-report-tiny-run"])))}
    assert set(arts) == {"evaluation-tiny-run", "evaluation-report-tiny-run"}
    md = arts["evaluation-tiny-run"].data
    assert "| UNET |" in md and "| REP |" in md and "MAE (dBZ)" in md and "U-Net" in md
    doc = json.loads(store.read_bytes("reports/tiny_run/scores.json"))
    assert doc["config"]["n_cases"] == 1


def test_evaluate_flow_fails_clearly_without_a_model(tmp_path: Path):
    from bzpipe.errors import StoreError
    from flows.evaluate import check_inputs

    root = tmp_path / "store"
    write_tiny_dataset(root, n=2, rows=32, cols=32, blind_zone_rows=4)
    with pytest.raises(StoreError, match="no trained model"):
        check_inputs.fn(EvalConfig(store_root=str(root), dataset="tiny", run_name="nothing"))
