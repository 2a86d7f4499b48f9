"""Explainability against hand-built models; report figures, verdict and HTML on hand-made summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bzpipe import xai
from bzpipe.metrics.summary import ScoreSettings, summarize, to_json
from bzpipe.model import UNet3Plus, UNet3PlusConfig
from bzpipe.report import figures, markdown_summary, verdict
from bzpipe.report.html import render

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"
CHANNELS = ["reflectivity", "t", "q", "u", "v"]


class Linear1x1(nn.Module):
    """out = sum_k w_k * in_k per pixel; one 'encoder' level for the hooks."""

    def __init__(self, w: list[float]) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([nn.Conv2d(len(w), 1, 1, bias=False)])
        with torch.no_grad():
            self.encoder[0].weight.copy_(torch.tensor(w).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder[0](x)


class CopyChannel(nn.Module):
    """Predicts reflectivity = input channel ``c`` (ignores everything else)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.c:self.c + 1] + 0 * self.dummy


def test_saliency_of_a_linear_model_is_its_weights_in_the_blind_zone():
    w = [0.5, -2.0, 0.0, 1.0, 0.25, 3.0]  # 5 channels + mask
    model = Linear1x1(w)
    inputs = torch.randn(2, 6, 8, 5)
    sal = xai.saliency(model, inputs, blind_rows=3)
    assert sal.shape == (2, 6, 8, 5)
    expected = np.abs(np.array(w))[:, None, None] / (3 * 5)
    np.testing.assert_allclose(sal[:, :, :3], np.broadcast_to(expected, (2, 6, 3, 5)), rtol=1e-6)
    assert np.all(sal[:, :, 3:] == 0)  # rows above the blind zone do not enter this model's objective


def test_drop_channel_importance_hand_example():
    x = torch.zeros(2, 5, 8, 4)
    x[:, 0] = 0.25  # truth: -60 + 0.75 * 60 = -15 dBZ
    x[:, 1] = 0.25  # the model copies t: perfect
    x[:, 2] = 0.9
    res = xai.drop_channel_importance(CopyChannel(1), x, 3, CHANNELS, method="mean")
    assert res["none"]["mae"] == pytest.approx(0.0)
    assert res["t"]["delta_mae"] == pytest.approx(15.0, abs=1e-4)  # t -> 0 = -30 dBZ
    assert res["q"]["delta_mae"] == 0.0 and res["u"]["delta_mae"] == 0.0 and "reflectivity" not in res
    # shuffle: patches with different t swap their t -> each off by 30 dBZ
    x[1, 0] = x[1, 1] = 0.75  # +15 dBZ
    shuf = xai.drop_channel_importance(CopyChannel(1), x, 3, CHANNELS, method="shuffle", seed=3)
    assert shuf["t"]["delta_mae"] == pytest.approx(30.0, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        xai.drop_channel_importance(CopyChannel(1), x[:1], 3, CHANNELS, method="shuffle")
    with pytest.raises(ValueError, match="channel names"):
        xai.drop_channel_importance(CopyChannel(1), x, 3, CHANNELS[:3])


def test_encoder_feature_maps_of_the_unet_and_hooks_removed():
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=(4, 8, 8, 8, 8))).eval()
    feats = xai.encoder_feature_maps(model, torch.randn(1, 6, 32, 32))
    assert list(feats) == [f"encoder.{i}" for i in range(5)]
    for i, f in enumerate((4, 8, 8, 8, 8)):
        assert feats[f"encoder.{i}"].shape == (1, f, 32 >> i, 32 >> i)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert model.training is False
    with pytest.raises(ValueError, match="encoder"):
        xai.encoder_feature_maps(CopyChannel(0), torch.zeros(1, 6, 4, 4))


def test_explain_bundle_and_figures():
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=(4, 8, 8, 8, 8)))
    model.train()
    out = xai.explain(model, torch.randn(3, 5, 32, 32), 4, CHANNELS, drop="shuffle", max_feature_maps=3)
    assert model.training  # modes restored
    assert out["saliency_mean"].shape == (6, 32, 32) and out["input_names"][-1] == "mask"
    assert sum(out["channel_share"].values()) == pytest.approx(1.0)
    assert out["features"]["encoder.0"].shape == (3, 32, 32)
    assert out["features"]["encoder.4"].shape == (3, 2, 2)
    assert figures.saliency_png(out)[:8] == PNG and figures.features_png(out)[:8] == PNG


# --------------------------------------------------------------------------- summary-driven report pieces


def _summary(unet_good: bool, clear: bool = False, n: int = 24, virga: bool = True) -> dict:
    """Hand-made blind zones: the first half of the patches can hold shallow snowfall (weak echo above),
    the second half virga (strong echo above); every other patch holds the event in the truth."""
    rng = np.random.default_rng(0)
    truth = np.full((n, 3, 8), np.nan) if clear else rng.uniform(-40, 0, size=(n, 3, 8))
    above = np.full((n, 8), -30.0)
    above[n // 2:] = -10.0 if virga else -30.0
    if not clear:
        event = np.arange(n) % 2 == 0
        low = np.where((np.arange(n) < n // 2) == event, 1, 0).astype(bool)   # lowest row reaches -20 or not
        truth[:, 0] = np.where(low[:, None], rng.uniform(-15, 0, (n, 8)), rng.uniform(-40, -25, (n, 8)))

    def noise(s: float) -> np.ndarray:
        return rng.normal(0, s, truth.shape)

    good, bad = truth + noise(0.5), np.full(truth.shape, np.nan)
    preds = {"UNET": good if unet_good else bad, "REP": bad if unet_good else good, "MAR": bad}
    if clear:
        preds = {k: np.full(truth.shape, np.nan) for k in preds}
    spread = np.abs(noise(1.0))
    s = summarize(truth, preds, above, np.ones(truth.shape, bool),
                  np.array(["nsa", "oli"] * (n // 2)), np.arange(12) * 100.0 + 50, np.full((n, 8), 450.0),
                  ScoreSettings(n_bootstrap=30), reference="UNET", spread=spread,
                  quantiles={0.05: preds["UNET"] - 2, 0.5: preds["UNET"], 0.95: preds["UNET"] + 2},
                  mean_key="UNET")
    return to_json(s)


def test_verdict_states_ahead_or_not_from_the_numbers():
    good = verdict(_summary(True))
    assert good["ahead"]
    assert good["headline"].startswith("On the test split the U-Net is ahead of REP and MAR")
    assert good["reasons"] == [] and all(c["significant"] for c in good["checks"])
    bad = verdict(_summary(False), context={"epoch": 1, "val_loss": 0.3, "split": "test"})
    assert not bad["ahead"] and bad["headline"].startswith("The U-Net is NOT ahead of REP and MAR")
    assert "MAE vs REP" in bad["headline"] and any("epoch 1" in r for r in bad["reasons"])
    assert any("only 24 test patches" in r for r in bad["reasons"])
    clear = verdict(_summary(True, clear=True))
    assert not clear["ahead"] and any("undefined" in r for r in clear["reasons"])
    # the four headline scores against both baselines
    assert {c["key"] for c in good["checks"]} == {"MAE", "cloud_CSI", "shallow_snowfall_CSI", "virga_CSI"}
    assert len(good["checks"]) == 8


def test_an_event_absent_from_the_test_split_is_said_not_scored():
    s = _summary(True, virga=False)
    assert s["events_in_truth"]["all"]["virga"] == 0 and s["undefined_events"]["all"] == ["virga"]
    for m in ("UNET", "REP", "MAR"):
        assert s["scores"]["all"][m]["virga"]["CSI"]["estimate"] is None       # not 0/0 shown as a score
    v = verdict(s)
    assert not v["ahead"] and "virga CSI vs REP (not scored: no virga event in the test split)" in v["headline"]
    assert any("no virga event in the truth" in r for r in v["reasons"])
    page = render("t", v, s, {}, {})
    assert "virga 0" in page and "n/a" in page


def test_figures_and_html_are_self_contained():
    s = _summary(True)
    for png in (figures.performance_diagram_png(s), figures.scores_png(s), figures.psd_png(s),
                figures.cloud_base_png(s), figures.uncertainty_png(s)):
        assert png[:8] == PNG
    clear = _summary(True, clear=True)  # NaN scores everywhere must not break a figure
    assert figures.performance_diagram_png(clear)[:8] == PNG and figures.scores_png(clear)[:8] == PNG
    truth = np.random.default_rng(1).uniform(-50, 10, (2, 16, 12))
    cases = {"truth": truth, "methods": {"REP": truth, "MAR": truth, "UNET": truth},
             "spread": np.ones((2, 4, 12)), "band": (0.05, 0.95, truth[:, :4] - 3, truth[:, :4] + 3),
             "heights": np.arange(16) * 100.0 + 50, "blind_rows": 4, "sites": ["nsa", "oli"],
             "sample": [3, 9]}
    assert figures.curtains_png(cases)[:8] == PNG
    assert figures.curtains_png({"truth": np.zeros((0, 16, 0))})[:8] == PNG
    v = verdict(_summary(False))
    page = render("t", v, s, {"psd": figures.psd_png(s)}, {"config": {"a": 1}})
    assert "data:image/png;base64," in page and "http" not in page.replace("<!DOCTYPE html>", "")
    assert "class='verdict bad'" in page and "NOT ahead" in page
    assert page.count("<table>") >= 1 + 3 * 5  # verdict, then per site: scores, differences, 3 events
    md = markdown_summary(s, verdict(s))
    assert md.startswith("**On the test split the U-Net is ahead") and "| UNET |" in md and "[" in md


def test_verdict_reports_a_tie_as_not_ahead_with_its_reason():
    s = _summary(True)
    for m in ("REP", "MAR"):  # give the baselines the U-Net's CSI
        s["scores"]["all"][m]["cloud"]["CSI"] = dict(s["scores"]["all"]["UNET"]["cloud"]["CSI"])
    v = verdict(s)
    assert not v["ahead"] and "tied: U-Net 1" in v["headline"]
    assert any("CSI is tied" in r for r in v["reasons"])
