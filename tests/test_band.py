"""Band-limited MC-dropout decoding (bzpipe.model.band) and the cheap dropout masks (bzpipe.model.dropout).

The band-limited path must equal the full forward pass (with the same dropout masks) on the
hidden rows, for every hidden depth per column up to the band it was built for: random
weights with non-trivial batch-norm statistics and a model trained through ``bzpipe.train``,
with and without the REP prior, at 128 x 128 and 64 x 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _zarr_fixture import write_tiny_dataset
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bzpipe.masking import mask_blind_zone
from bzpipe.model import (
    UNet3Plus,
    UNet3PlusConfig,
    dropout,
    mc_dropout,
    mc_dropout_mode,
    mc_predict,
    unet3plus,
)
from bzpipe.model.band import BandDecoder, BandTooNarrowError, band_decoder, plan_band
from bzpipe.model.dropout import FixedMasks, MCDropout, keep_mask, keep_threshold
from bzpipe.model.mc_stats import pass_dbz

torch.set_num_threads(1)
TINY = (4, 8, 8, 8, 8)
TOL = 1e-4          # normalized units (issue 14)


def random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model


def full_and_band(model: UNet3Plus, inputs: torch.Tensor, rows: int, k: int = 2, seed: int = 1,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(full pass, band path) on k passes of ``inputs`` with the same dropout masks: Tensor[k, B, 1, rows, W]."""
    b = inputs.shape[0]
    model.drop.source = FixedMasks(model.drop.p, seed)
    try:
        with torch.no_grad(), mc_dropout_mode(model):
            unet3plus.FOLD_BN_IN_EVAL = False            # the reference: conv, batch norm, ReLU one by one
            full = model(inputs.repeat(k, 1, 1, 1)).unflatten(0, (k, b))[..., :rows, :]
            unet3plus.FOLD_BN_IN_EVAL = True
            dec = BandDecoder(model, inputs.shape[-2], inputs.shape[-1], rows, dtype=dtype)
            band = dec.passes(dec.shared(inputs), k)
    finally:
        model.drop.source = None
        unet3plus.FOLD_BN_IN_EVAL = True
    return full, band


# --------------------------------------------------------------------------- plan


def test_plan_keeps_the_halo_every_level_needs():
    p = plan_band(128, 128, 16)
    assert p.heights == (128, 64, 32, 16, 8)
    assert p.keep == (17, 10, 7, 5, 4) and p.inp == (19, 12, 9, 7)
    for level in range(4):                           # skip conv + fusion conv: 2 rows of halo
        assert p.inp[level] == min(p.keep[level] + 2, p.heights[level])
    # a band reaching the top of the patch is the whole map at every level
    whole = plan_band(32, 32, 32)
    assert whole.keep[:4] == whole.inp == whole.heights[:4]
    with pytest.raises(ValueError, match="band rows"):
        plan_band(64, 64, 0)
    with pytest.raises(ValueError, match="divisible"):
        plan_band(60, 64, 8)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("size,rows,rep", [(128, 16, False), (128, 16, True), (64, 8, False), (64, 8, True),
                                           (64, 1, True), (64, 63, False), (32, 32, True)])
def test_band_equals_full_pass_with_random_weights(size, rows, rep):
    torch.manual_seed(size + rows)
    model = random_bn(UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY, rep_prior=rep)))
    x = torch.rand(3, 5, size, size) * 1.5 - 0.5
    depth = torch.randint(0, rows + 1, (3, size))                    # any depth per column up to the band
    depth[0] = rows                                                 # one window hidden to the full band
    inputs, _ = mask_blind_zone(x, depth, 0)
    full, band = full_and_band(model, inputs, rows)
    assert band.shape == (2, 3, 1, rows, size)
    assert float((full - band).abs().max()) <= TOL
    assert float(full.std()) > 1e-3                                 # a real signal, not a constant


@pytest.mark.parametrize("rep", [False, True])
def test_band_equals_full_pass_with_the_state_blanked_in_the_hole(rep):
    """King et al.'s blanking (blank_state): both paths see the ERA-5 state only above the hole, so
    neither changes when the state under it does."""
    torch.manual_seed(3)
    model = random_bn(UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY, rep_prior=rep, blank_state=True)))
    x = torch.rand(2, 5, 64, 64) * 1.5 - 0.5
    depth = torch.randint(4, 9, (2, 64))
    inputs, mask = mask_blind_zone(x, depth, 0)
    other = inputs.clone()
    other[:, 1:-1] = torch.where(mask > 0, torch.randn_like(other[:, 1:-1]) * 3, other[:, 1:-1])
    full, band = full_and_band(model, inputs, 8)
    full2, band2 = full_and_band(model, other, 8)
    assert float((full - band).abs().max()) <= TOL
    assert float((full - full2).abs().max()) <= TOL and float((band - band2).abs().max()) <= TOL
    seen = random_bn(UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY, rep_prior=rep)))
    a, _ = full_and_band(seen, inputs, 8)
    b, _ = full_and_band(seen, other, 8)
    assert float((a - b).abs().max()) > 1e-3                        # bzpipe's default sees the state there


def test_band_equals_full_pass_for_the_paper_size_model():
    torch.manual_seed(0)
    model = random_bn(UNet3Plus(UNet3PlusConfig(in_channels=6)))
    x = torch.rand(1, 5, 128, 128) * 1.5 - 0.5
    inputs, _ = mask_blind_zone(x, torch.randint(10, 17, (1, 128)), 0)
    full, band = full_and_band(model, inputs, 16, k=2)
    assert float((full - band).abs().max()) <= TOL


def test_band_skips_the_deep_supervision_heads_and_shares_the_first_level():
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY))
    calls = []
    for h in model.aux_heads:
        h.register_forward_pre_hook(lambda *a: calls.append(1))
    inputs, _ = mask_blind_zone(torch.rand(2, 5, 64, 64), 8, 0)
    dec = BandDecoder(model, 64, 64, 8)
    with torch.no_grad():
        sh = dec.shared(inputs)
        first = [dec.passes(sh, 3) for _ in range(2)]
    assert not calls                                               # heads never run (the band path has none)
    assert sh["e0"].shape == (2, 4, 64, 64)                        # encoder level 0: once per window
    assert not torch.equal(first[0], first[1])                     # fresh masks per call
    assert not torch.equal(first[0][0], first[0][1])               # and per pass


def _train_with_and_without_rep_prior(root: Path, batch_size: int, epochs: int) -> dict[bool, UNet3Plus]:
    """Tiny models trained through bzpipe.train on the store's ``tiny`` dataset, without and with the
    REP prior (runs ``rep0``, ``rep1``), loaded back from their last checkpoints."""
    from bzpipe.checkpoint import load_model
    from bzpipe.config import TrainConfig
    from bzpipe.train import train

    out = {}
    for rep in (False, True):
        cfg = TrainConfig(store_root=str(root), dataset="tiny", run_name=f"rep{int(rep)}", filters=TINY,
                          batch_size=batch_size, lr=3e-3, epochs=epochs, patience=50, rep_prior=rep,
                          device="cpu")
        train(cfg)
        out[rep] = load_model(str(root), cfg.run_name, "last")[0]
    return out


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory) -> tuple[Path, dict[bool, UNet3Plus]]:
    """Tiny 64 x 64 models trained through bzpipe.train (a few epochs), with and without the REP prior,
    and the store that holds them and their dataset."""
    root = tmp_path_factory.mktemp("band") / "store"
    write_tiny_dataset(root, n={"train": 16, "val": 4, "test": 4}, rows=64, cols=64, blind_zone_rows=8)
    return root, _train_with_and_without_rep_prior(root, batch_size=8, epochs=3)


@pytest.fixture(scope="module")
def trained(trained_store) -> dict[bool, UNet3Plus]:
    return trained_store[1]


@pytest.fixture(scope="module")
def trained128(tmp_path_factory) -> dict[bool, UNet3Plus]:
    """Tiny 128 x 128 models (16-row blind zone, the paper's patch) trained through bzpipe.train, with
    and without the REP prior."""
    root = tmp_path_factory.mktemp("band128") / "store"
    write_tiny_dataset(root, n={"train": 8, "val": 4, "test": 4}, rows=128, cols=128, blind_zone_rows=16)
    return _train_with_and_without_rep_prior(root, batch_size=4, epochs=2)


@pytest.mark.parametrize("size,rows", [(64, 10), (128, 16)])
@pytest.mark.parametrize("rep", [False, True])
def test_band_equals_full_pass_for_a_trained_checkpoint(request, size, rows, rep):
    from _zarr_fixture import tiny_patches

    model = request.getfixturevalue("trained" if size == 64 else "trained128")[rep]
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))   # trained statistics
    x = torch.from_numpy(tiny_patches(4, size, size, np.random.default_rng(5)))
    depth = torch.from_numpy(np.random.default_rng(6).integers(rows // 2, rows + 1, (4, size)))
    depth[0, 0] = rows                                                # the full band hidden somewhere
    inputs, _ = mask_blind_zone(x, depth, 0)
    full, band = full_and_band(model, inputs, rows, k=3)
    assert float((full - band).abs().max()) <= TOL
    # and through mc_predict (statistics of the same passes), merged with the observation
    _, mask = mask_blind_zone(x, depth, 0)
    model.drop.source = FixedMasks(model.drop.p, 3)
    try:
        a = mc_predict(model, inputs, n_passes=4, max_batch=8, x=x, mask=mask)
        b = mc_predict(model, inputs, n_passes=4, max_batch=8, x=x, mask=mask, band_rows=rows)
    finally:
        model.drop.source = None
    for key in ("mean", "std", "quantiles"):
        assert float((a[key] - b[key]).abs().max()) <= TOL, key
    torch.testing.assert_close(b["mean"][:, :, rows:], x[:, :1, rows:], atol=1e-5, rtol=0)  # above: observed


@pytest.mark.parametrize("ramp", [0, 2])
def test_evaluation_uses_the_band_path_and_matches_the_full_one(trained_store, ramp):
    from bzpipe.config import EvalConfig
    from bzpipe.evaluate import UNET, predict_fields
    from bzpipe.torchdata import PatchDataset

    root, models = trained_store
    model = models[True]
    assert EvalConfig().mc_path == "band"
    ds = PatchDataset(str(root), "tiny", "test", channels="3+_5")
    fields = {}
    masks = FixedMasks(model.drop.p, seed=4)      # drawn at full size by the full pass, sliced by the band
    for path in ("full", "band"):
        cfg = EvalConfig(store_root=str(root), dataset="tiny", mc_passes=3, baselines=("REP",), xai=False,
                         ramp_rows=ramp, mc_path=path)
        model.drop.source = masks
        try:
            fields[path] = predict_fields(model, ds, cfg)
        finally:
            model.drop.source = None
    a, b = fields["band"].preds[UNET], fields["full"].preds[UNET]
    both = np.isfinite(a) & np.isfinite(b)
    assert both.mean() > 0.05                                            # some echo to compare
    np.testing.assert_allclose(a[both], b[both], atol=60 * TOL)          # dBZ: 60 per normalized unit
    # echo / no echo may differ only where a pass sits on the -0.5 threshold, i.e. at about -60 dBZ
    flip = np.isfinite(a) != np.isfinite(b)
    assert np.all(np.fmax(a[flip], b[flip]) < -60 + 60 * TOL)
    np.testing.assert_allclose(fields["band"].spread, fields["full"].spread, atol=60 * TOL)


def test_reduced_precision_band_path_within_half_a_dbz(trained):
    """bf16 (and fp16 where the CPU has it) against fp32, same masks: mean |delta| <= 0.5 dBZ in the blind zone."""
    from _zarr_fixture import tiny_patches

    model = trained[False]
    x = torch.from_numpy(tiny_patches(4, 64, 64, np.random.default_rng(7)))
    inputs, _ = mask_blind_zone(x, 8, 0)
    _, ref = full_and_band(model, inputs, 8, k=4, dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        try:
            _, low = full_and_band(model, inputs, 8, k=4, dtype=dtype)
        except RuntimeError:                                  # fp16 convolutions missing on this CPU
            if dtype is torch.float16:
                continue
            raise
        assert low.dtype == torch.float32
        delta = float((pass_dbz(low) - pass_dbz(ref)).abs().mean())
        assert delta <= 0.5, (dtype, delta)


def test_band_decoder_follows_the_batch_norm_it_reads():
    """Folded batch norm reads running stats, eps and affine from the layers (e.g. Keras' eps 1e-3)."""
    torch.manual_seed(1)
    model = random_bn(UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY)))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.01
    inputs, _ = mask_blind_zone(torch.rand(2, 5, 32, 32), 4, 0)
    full, band = full_and_band(model, inputs, 4)
    assert float((full - band).abs().max()) <= TOL
    # the cached decoder is rebuilt when the weights change (e.g. a new checkpoint loaded in place)
    d1 = band_decoder(model, 32, 32, 4)
    assert band_decoder(model, 32, 32, 4) is d1
    with torch.no_grad():
        model.fuse[0][1].running_mean.add_(0.1)
    assert band_decoder(model, 32, 32, 4) is not d1


def test_eval_blocks_run_folded_and_fused_with_the_same_output():
    """Inference runs every conv + BN + ReLU block as one folded conv; it matches the three layers."""
    torch.manual_seed(2)
    model = random_bn(UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY))).eval()
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        fast = model(x)
        unet3plus.FOLD_BN_IN_EVAL = False
        try:
            ref = model(x)
        finally:
            unet3plus.FOLD_BN_IN_EVAL = True
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert float((fast - ref).abs().max()) <= 1e-5
    assert float((cl - ref).abs().max()) <= 1e-5
    model.train()                                           # training: the plain layers (batch statistics)
    out = model(x)
    assert out.requires_grad


# --------------------------------------------------------------------------- bad input


def test_a_hidden_depth_deeper_than_the_band_raises():
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY))
    x = torch.rand(2, 5, 64, 64)
    depth = torch.full((2, 64), 8)
    depth[1, 40] = 9                                                # one column one row deeper
    inputs, mask = mask_blind_zone(x, depth, 0)
    dec = BandDecoder(model, 64, 64, 8)
    with pytest.raises(BandTooNarrowError, match=r"9 rows \(sample 1, column 40\).*8-row band"):
        dec.shared(inputs)
    with pytest.raises(BandTooNarrowError):
        mc_predict(model, inputs, n_passes=2, band_rows=8, x=x, mask=mask)
    # a ramp above the blind zone is hidden too: it must fit in the band
    inputs, _ = mask_blind_zone(x, 6, 3)
    with pytest.raises(BandTooNarrowError):
        mc_predict(model, inputs, n_passes=2, band_rows=8)
    assert mc_predict(model, inputs, n_passes=2, band_rows=9)["mean"].shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match="built for 64x64"):
        dec.shared(torch.rand(1, 6, 32, 64))


def test_non_unet_models_run_the_full_pass():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros_like(x[:, :1]) + 0.5

    x = torch.rand(2, 1, 16, 16)
    inputs, mask = mask_blind_zone(x, 4, 0)
    r = mc_predict(Constant(), inputs, n_passes=3, band_rows=4, x=x, mask=mask)
    torch.testing.assert_close(r["mean"][:, :, 4:], x[:, :, 4:], atol=1e-5, rtol=0)
    torch.testing.assert_close(r["mean"][:, :, :4], torch.full((2, 1, 4, 16), 0.5), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- batching and the 2**31 guard


class _Largest(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.biggest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t.dtype != torch.bool and t.ndim == 4:
                self.biggest = max(self.biggest, t.numel())
        return out


@pytest.mark.parametrize("size,rows", [(64, 8), (32, 31), (64, 64)])
def test_band_largest_activation_bounds_every_tensor_of_a_pass(size, rows):
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=(4, 8, 16, 32, 64), skip=4))
    dec = BandDecoder(model, size, size, rows)
    inputs, _ = mask_blind_zone(torch.rand(1, 5, size, size), min(rows, size - 1), 0)
    k = 3
    with torch.no_grad():
        sh = dec.shared(inputs)
        with _Largest() as spy:
            dec.passes(sh, k)
    assert spy.biggest <= k * dec.largest_activation()
    assert dec.largest_activation() <= model.largest_activation(size, size)


def test_mc_predict_band_batches_stay_under_the_tensor_limit(monkeypatch):
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=3, filters=TINY))
    per = BandDecoder(model, 32, 32, 4).largest_activation()
    monkeypatch.setattr(mc_dropout, "MAX_TENSOR_ELEMENTS", 5 * per + 1)       # room for 5 pass-samples
    seen = []
    real = BandDecoder.passes

    def spy(self, sh, k):
        seen.append(k * int(sh["B"]))
        return real(self, sh, k)

    monkeypatch.setattr(BandDecoder, "passes", spy)
    inputs, _ = mask_blind_zone(torch.rand(4, 2, 32, 32), 4, 0)
    out = mc_predict(model, inputs, n_passes=6, max_batch=64, band_rows=4)
    assert max(seen) <= 5 and sum(seen) == 4 * 6
    torch.testing.assert_close(out["mean"][:, :, 4:], inputs[:, :1, 4:], atol=1e-5, rtol=0)  # above: observed


# --------------------------------------------------------------------------- dropout masks


def test_keep_mask_is_bernoulli_with_the_exact_keep_probability():
    assert keep_threshold(0.2) == round(0.8 * 2**16) - 2**15       # 16-bit words: P(keep) = 52429 / 65536
    assert keep_threshold(0.0) == 2**15                             # every int16 word is kept
    assert keep_threshold(1.0) == -2**15                            # none is
    g = torch.Generator().manual_seed(0)
    m = keep_mask((1000, 1000), 0.2, generator=g)
    assert m.dtype == torch.bool
    assert abs(float(m.float().mean()) - 0.8) < 5 * (0.16 / 1e6) ** 0.5
    # independent elements: neighbours agree as often as independent draws would
    a, b = m[:, :-1].float(), m[:, 1:].float()
    assert abs(float((a * b).mean()) - 0.64) < 3e-3
    assert keep_mask((3, 4), 0.0).all() and not keep_mask((3, 4), 1.0).any()
    # p below 2**-17 rounds to "keep every word", which an int16 comparison cannot express: no draw
    assert keep_mask((3, 4), 1e-6).all()
    x = torch.ones(5, 7)
    assert dropout.drop_inplace(x, 1e-6) is x and bool((x == 1).all())
    # reproducible from the torch seed, channels_last layout on request
    torch.manual_seed(3)
    m1 = keep_mask((2, 3, 4, 5), 0.5)
    torch.manual_seed(3)
    assert torch.equal(m1, keep_mask((2, 3, 4, 5), 0.5))
    cl = keep_mask((2, 3, 4, 5), 0.5, channels_last=True)
    assert cl.shape == (2, 3, 4, 5) and cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        keep_mask((2,), 1.5)


def test_mc_dropout_module_matches_nn_dropout_in_distribution():
    d = MCDropout(0.2)
    assert isinstance(d, nn.Dropout)
    x = torch.full((400, 500), 2.0)
    d.train()
    y = d(x)
    vals = set(torch.unique(y).tolist())
    assert vals == {0.0, 2.5}                                      # kept elements rescaled by 1 / (1 - p)
    assert abs(float(y.mean()) - 2.0) < 0.02                       # unbiased
    up = d.upsampled(torch.full((1, 1, 2, 2), 2.0), lambda t: torch.nn.functional.interpolate(t, scale_factor=4))
    assert set(torch.unique(up).tolist()) <= {0.0, 2.5}
    d.eval()
    assert torch.equal(d(x), x)
    # injected masks: the same masks for the same site, a band gets the lowest rows
    src = FixedMasks(0.5, seed=0)
    d.train()
    d.source = src
    full = d(torch.ones(2, 3, 8, 8), "dec0.1")
    band = d(torch.ones(2, 3, 3, 8), "dec0.1")
    assert torch.equal(band, full[:, :, :3])
    with pytest.raises(ValueError, match="drawn at"):
        d(torch.ones(2, 3, 9, 8), "dec0.1")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grad_channels_last", [False, True])
@pytest.mark.parametrize("exclusive", [False, True])
def test_inplace_dropout_gradient_is_the_kept_pattern(channels_last, grad_channels_last, exclusive, monkeypatch):

    monkeypatch.setattr(dropout, "DRAW_BLOCK", 1000)                # several blocks, a partial last one
    x = torch.ones(2, 3, 20, 30, requires_grad=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = dropout.drop_inplace((x * 1.0).contiguous(memory_format=fmt), 0.3, exclusive_grad=exclusive)
    kept = y.detach() != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.05
    w = torch.arange(y.numel(), dtype=torch.float32).reshape(y.shape)   # grad arrives in another layout
    w = w.contiguous(memory_format=torch.channels_last if grad_channels_last else torch.contiguous_format)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(kept, w, 0.0))


def test_training_gradients_flow_through_the_bool_masks():
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY)).to(memory_format=torch.channels_last)
    model.train()
    inputs, _ = mask_blind_zone(torch.rand(2, 5, 32, 32), 4, 2)
    out = model(inputs.contiguous(memory_format=torch.channels_last), heads=True)
    sum(o.abs().mean() for o in out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_predict_curtain_band_and_full_paths_agree(monkeypatch):
    """CloudSat inference uses the band path by default and it matches the full path (same masks)."""
    from bzpipe.infer.predict import predict_curtain

    torch.manual_seed(0)
    model = random_bn(UNet3Plus(UNet3PlusConfig(in_channels=2, filters=TINY, dropout=0.3)))
    with torch.no_grad():
        model.head.bias.fill_(0.3)                                   # echo, so the spread is not all "no echo"
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 1.0, (1, 32, 100)).astype(np.float32)
    hidden = rng.integers(2, 6, 100)                                 # per-profile hidden depth
    calls = []
    real = BandDecoder.passes
    monkeypatch.setattr(BandDecoder, "passes", lambda self, sh, k: calls.append(k) or real(self, sh, k))
    outs = {}
    masks = FixedMasks(0.3, seed=2)                                  # drawn full size by the full pass
    for path in ("full", "band"):
        model.drop.source = masks
        try:
            outs[path] = predict_curtain(model, x, width=32, overlap=8, blind_rows=hidden, n_passes=4,
                                         batch_size=8, mc_path=path)
        finally:
            model.drop.source = None
    assert calls                                                     # the band path ran
    assert float(outs["band"]["std"][:2].mean()) > 1e-3              # a real MC spread to compare
    for key in ("mean", "std", "quantiles"):
        np.testing.assert_allclose(outs["band"][key], outs["full"][key], atol=TOL)
    auto = predict_curtain(model, x, width=32, overlap=8, blind_rows=hidden, n_passes=2, batch_size=0)
    assert auto["mean"].shape == (32, 100)                           # batch 0: automatic (64 on CPU)
    np.testing.assert_array_equal(outs["band"]["mean"][6:], x[0, 6:])
    with pytest.raises(BandTooNarrowError):
        predict_curtain(model, x, width=32, overlap=8, blind_rows=hidden, n_passes=2, band_rows=4)
    with pytest.raises(ValueError, match="mc_path"):
        predict_curtain(model, x, width=32, overlap=8, blind_rows=4, n_passes=2, mc_path="fast")
