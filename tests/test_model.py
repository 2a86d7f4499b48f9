"""UNet3+ architecture, masking / merging, and MC-dropout inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bzpipe.masking import (
    blind_zone_weight,
    echo_weighted,
    mask_blind_zone,
    masked_mae,
    masked_pinball,
    merge_prediction,
    supervision_loss,
)
from bzpipe.model import UNet3Plus, UNet3PlusConfig, mc_dropout_mode, mc_predict
from bzpipe.model.mc_stats import quantiles_along0

torch.set_num_threads(1)
TINY = (4, 8, 8, 8, 8)


def tiny_model(in_channels: int = 6, ds: bool = True, dropout: float = 0.2) -> UNet3Plus:
    torch.manual_seed(0)
    return UNet3Plus(UNet3PlusConfig(in_channels=in_channels, filters=TINY, dropout=dropout,
                                     deep_supervision=ds))


# --------------------------------------------------------------------------- architecture


def test_output_and_deep_supervision_shapes():
    m = tiny_model()
    x = torch.randn(3, 6, 32, 48)
    out = m(x)
    assert out.shape == (3, 1, 32, 48)
    heads = m(x, heads=True)
    assert len(heads) == 5 and all(h.shape == (3, 1, 32, 48) for h in heads)
    # the last head is the final (d1) output; in eval mode (no dropout) the two calls agree
    m.eval()
    assert torch.allclose(m(x), m(x, heads=True)[-1])
    with pytest.raises(ValueError, match="divisible by 16"):
        m(torch.randn(1, 6, 30, 32))
    with pytest.raises(ValueError, match="deep_supervision"):
        tiny_model(ds=False)(x, heads=True)


def _expected_parameter_count(cin: int, f: tuple[int, ...], deep_supervision: bool) -> int:
    """Hand count of UNet3+ as in the authors' own Keras unet3plus (bp_models.py; conv3x3 with bias + BN)."""
    conv = lambda ci, co: ci * co * 9 + co  # noqa: E731  3x3 kernel + bias
    bn = lambda c: 2 * c                    # noqa: E731  gamma + beta (running stats are buffers)
    s, fused = f[0], 5 * f[0]
    n, prev = 0, cin
    for c in f:                                            # encoder: 2 x (conv + BN)
        n += conv(prev, c) + bn(c) + conv(c, c) + bn(c)
        prev = c
    for level in range(4):                                 # d1..d4: 5 skip convs + fusion conv
        for src in range(5):
            c_src = f[src] if (src <= level or src == 4) else fused
            n += conv(c_src, s) + bn(s)
        n += conv(fused, fused) + bn(fused)
    n += conv(fused, 1)                                    # final linear head on d1
    if deep_supervision:                                   # heads on e5, d4, d3, d2
        n += conv(f[4], 1) + 3 * conv(fused, 1)
    return n


def test_parameter_count_matches_paper():
    m = UNet3Plus(UNet3PlusConfig(in_channels=6))          # 5 channels + the mask; construct only, no forward
    n = m.num_parameters()
    assert n == _expected_parameter_count(6, (32, 64, 128, 256, 512), True) == 6_758_789
    assert abs(n - 6.8e6) / 6.8e6 < 0.01                   # "about 6.8 M parameters"
    # without the deep-supervision heads the count drops by exactly the four heads
    m2 = UNet3Plus(UNet3PlusConfig(in_channels=6, deep_supervision=False))
    assert n - m2.num_parameters() == 512 * 9 + 1 + 3 * (160 * 9 + 1)
    # the aggregation convs have 5 x 32 = 160 channels
    assert m.fuse[0][0].in_channels == m.fuse[0][0].out_channels == 160
    # the tiny config used by the tests follows the same formula
    assert tiny_model().num_parameters() == _expected_parameter_count(6, TINY, True)


def test_every_parameter_gets_a_gradient():
    m = tiny_model()
    m.train()
    x = torch.randn(4, 5, 32, 32)
    inputs, mask = mask_blind_zone(x, 6, 3)
    loss = supervision_loss(m(inputs, heads=True), x[:, :1], mask)
    loss.backward()
    bias_before_bn = set()
    for mod in m.modules():   # a conv bias right before batch norm is cancelled by BN's mean removal
        if isinstance(mod, nn.Sequential) and len(mod) >= 2 and isinstance(mod[1], nn.BatchNorm2d):
            bias_before_bn.add(id(mod[0].bias))
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if id(p) in bias_before_bn:
            assert p.grad.abs().max() < 1e-5, name
        else:
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


# --------------------------------------------------------------------------- masking


def test_pinball_loss_is_king_et_al_mae_at_the_median_and_has_its_quantile_as_minimizer():
    """``train.loss_quantile``: 0.5 is blind_MAE bit for bit; at q the best constant fill of a pixel is
    the q-th quantile of its targets (0.6: echo once its probability exceeds 0.4, the no-echo value
    -1 otherwise)."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 1, 12, 8, generator=g), torch.randn(3, 1, 12, 8, generator=g)
    mask = (torch.rand(3, 1, 12, 8, generator=g) > 0.4).float() * 0.7
    assert torch.equal(masked_pinball(pred, target, mask, 0.5), masked_mae(pred, target, mask))
    assert torch.equal(supervision_loss([pred, pred], target, mask, 0.5), masked_mae(pred, target, mask))
    # a pixel that is clear (-1) 55 % of the time and echo (0.2) 45 % of the time
    samples = torch.tensor([-1.0] * 55 + [0.2] * 45).reshape(100, 1, 1, 1)
    ones = torch.ones_like(samples)
    grid = torch.linspace(-1.0, 0.2, 13)

    def best(q: float) -> float:
        losses = [float(masked_pinball(c.expand_as(samples), samples, ones, q)) for c in grid]
        return float(grid[int(np.argmin(losses))])

    assert best(0.5) == -1.0                      # the median: no echo
    assert abs(best(0.6) - 0.2) < 1e-6            # the 0.6 quantile: echo
    with pytest.raises(ValueError, match="quantile"):
        masked_pinball(pred, target, mask, 1.0)


def test_echo_weight_moves_the_echo_decision_and_keeps_a_sure_echo_s_median():
    """``train.echo_weight`` w: 1 is the mask itself (King et al.); with w the best constant fill of a
    pixel is echo once its echo probability exceeds 1 / (1 + w), and a pixel that is always echo keeps
    the median of its intensities."""
    g = torch.Generator().manual_seed(1)
    target = torch.where(torch.rand(2, 1, 10, 6, generator=g) > 0.5, -1.0, 0.3)
    mask = torch.rand(2, 1, 10, 6, generator=g)
    assert echo_weighted(mask, target, 1.0) is mask
    w = echo_weighted(mask, target, 1.5)
    assert torch.equal(w, mask * torch.where(target > -0.75, 1.5, 1.0))
    grid = torch.linspace(-1.0, 0.6, 17)

    def best(samples: list[float], weight: float) -> float:
        x = torch.tensor(samples).reshape(-1, 1, 1, 1)
        losses = [float(supervision_loss([c.expand_as(x)], x, torch.ones_like(x), echo_weight=weight))
                  for c in grid]
        return float(grid[int(np.argmin(losses))])

    uncertain = [-1.0] * 55 + [0.2] * 45          # echo with probability 0.45
    assert best(uncertain, 1.0) == -1.0           # below 1/2: clear
    assert abs(best(uncertain, 1.5) - 0.2) < 1e-6  # above 1 / 2.5: echo
    assert abs(best([0.0] * 30 + [0.2] * 31 + [0.6] * 30, 1.5) - 0.2) < 1e-6   # always echo: the median
    with pytest.raises(ValueError, match="echo weight"):
        echo_weighted(mask, target, 0.0)


def test_mask_weights_hand_computed():
    w = blind_zone_weight((1, 1, 8, 2), blind_rows=3, ramp_rows=2)
    np.testing.assert_allclose(w[0, 0, :, 0].numpy(), [1, 1, 1, 2 / 3, 1 / 3, 0, 0, 0], rtol=1e-6)
    # per-sample ramps and per-column blind zones
    w = blind_zone_weight((2, 1, 6, 3), blind_rows=torch.tensor([[1, 2, 0], [3, 3, 3]]),
                          ramp_rows=torch.tensor([0, 1]))
    np.testing.assert_allclose(w[0, 0, :, 0].numpy(), [1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(w[0, 0, :, 1].numpy(), [1, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(w[0, 0, :, 2].numpy(), [0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(w[1, 0, :, 0].numpy(), [1, 1, 1, 0.5, 0, 0])


def test_mask_blind_zone_hides_only_reflectivity():
    x = torch.randn(2, 5, 16, 8)
    inputs, mask = mask_blind_zone(x, 4, torch.tensor([0, 2]))
    assert inputs.shape == (2, 6, 16, 8) and mask.shape == (2, 1, 16, 8)
    assert torch.equal(inputs[:, -1:], mask)
    assert torch.equal(inputs[:, 1:5], x[:, 1:5])                   # ERA-5 never masked
    assert (inputs[0, 0, :4] == 0).all() and torch.equal(inputs[0, 0, 4:], x[0, 0, 4:])
    assert (inputs[1, 0, :6] == 0).all() and torch.equal(inputs[1, 0, 6:], x[1, 0, 6:])


def test_mask_blind_zone_with_a_visible_ramp_hides_the_blind_zone_only():
    """``hide_ramp=False`` (King et al.'s ramp): the reflectivity and the mask channel are the blind zone's
    alone, the returned weight is the same as with the ramp hidden."""
    x = torch.randn(2, 5, 16, 8)
    ramp = torch.tensor([0, 3])
    inputs, mask = mask_blind_zone(x, 4, ramp, hide_ramp=False)
    zone_only, _ = mask_blind_zone(x, 4)
    assert torch.equal(inputs, zone_only)
    assert torch.equal(mask, mask_blind_zone(x, 4, ramp)[1]) and bool((mask[1, 0, 4:7] > 0).all())


def test_merge_keeps_unmasked_pixels_bit_identical():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 16, 8, generator=g) * 1e3
    x[0, 0, 10, 3] = float("nan")                                    # missing gate above the ramp
    x[1, 0, 12, 0] = 1.234567e-30
    _, mask = mask_blind_zone(x, 5, torch.tensor([0, 3, 6]))
    pred = torch.randn(3, 1, 16, 8, generator=g)
    merged = merge_prediction(pred, x, mask)
    keep = (mask == 0).expand_as(merged)
    a = merged[keep].view(torch.int32)
    b = x[:, :1][keep].view(torch.int32)
    assert torch.equal(a, b)                                         # bit-identical, NaN included
    full = (mask == 1).expand_as(merged)
    assert torch.equal(merged[full], pred[full])                     # blind zone = prediction
    r = 5                                                            # sample 1, first ramp row: weight 3/4
    torch.testing.assert_close(merged[1, 0, r], 0.75 * pred[1, 0, r] + 0.25 * x[1, 0, r])


def test_inpaint_changes_only_the_blind_zone_and_ramp():
    m = tiny_model().eval()
    x = torch.randn(2, 5, 32, 32)
    out = m.inpaint(x, 6, 2)
    assert out.shape == (2, 1, 32, 32)
    assert torch.equal(out[:, :, 8:], x[:, :1, 8:])                   # above blind zone + ramp: untouched
    inputs, _ = mask_blind_zone(x, 6, 2)
    with torch.no_grad():                                             # the same (folded) inference path
        assert torch.equal(out[:, :, :6], m(inputs)[:, :, :6])        # blind zone: the model's prediction
    assert not torch.equal(out[:, :, 6:8], x[:, :1, 6:8])             # ramp: a blend


# --------------------------------------------------------------------------- MC dropout


def test_mc_dropout_spread_and_deterministic_mode():
    torch.manual_seed(0)                     # outputs in the echo range: per-pass dBZ statistics vary
    m = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=TINY, dropout=0.5, output_bias=0.25))
    x = torch.randn(2, 5, 32, 32)
    inputs, mask = mask_blind_zone(x, 8, 2)
    m.train()
    torch.manual_seed(0)
    stoch = mc_predict(m, inputs, n_passes=12, max_batch=5)          # 5 -> passes split over several calls
    assert stoch["mean"].shape == stoch["std"].shape == (2, 1, 32, 32)
    assert stoch["quantiles"].shape == (3, 2, 1, 32, 32)
    assert float(stoch["std"].mean()) > 1e-3
    q = stoch["quantiles"]
    assert (q[0] <= q[1]).all() and (q[1] <= q[2]).all()
    assert m.training and m.drop.training                            # modes restored afterwards
    det = mc_predict(m, inputs, n_passes=7, max_batch=4, deterministic=True)
    assert float(det["std"].max()) < 1e-6
    m.eval()
    out = m(inputs)                          # identical passes: the mean is the output (no echo -> -1)
    torch.testing.assert_close(det["mean"], torch.where(out <= -0.5, -1.0, out.clamp(max=1.0)),
                               rtol=1e-5, atol=1e-5)
    # merged with the observation: zero spread exactly outside the blind zone + ramp
    merged = mc_predict(m, inputs, n_passes=6, x=x, mask=mask)
    assert torch.equal(merged["std"][(mask == 0)], torch.zeros(int((mask == 0).sum())))
    assert float(merged["std"][mask == 1].mean()) > 1e-3


def test_mc_dropout_mode_uses_running_batch_norm_stats():
    m = tiny_model()
    m.train()
    with mc_dropout_mode(m):
        bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
        assert bns and not any(b.training for b in bns)
        assert m.drop.training
    with mc_dropout_mode(m, active=False):
        assert not m.drop.training
    assert all(mod.training for mod in m.modules())


def test_quantiles_match_numpy():
    s = torch.randn(50, 3, 4)
    got = quantiles_along0(s, (0.05, 0.5, 0.95)).numpy()
    np.testing.assert_allclose(got, np.quantile(s.numpy(), [0.05, 0.5, 0.95], axis=0), rtol=1e-5, atol=1e-6)
    # no quantiles asked: an empty stack of the right trailing shape, not an error
    assert quantiles_along0(s, ()).shape == (0, 3, 4)


def test_output_heads_start_at_no_echo():
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=(4, 8, 8, 8, 8))).eval()
    for h in [model.head, *model.aux_heads]:
        assert torch.all(h.bias == -1.0)
    with torch.no_grad():
        out = model(torch.randn(2, 6, 32, 32), heads=True)
    # an untrained model predicts "no echo" on average, at every head
    for o in out:
        assert abs(float(o.mean()) + 1.0) < 0.5


def test_rep_prior_starts_from_the_rep_baseline():
    from bzpipe.baselines import repeat_fill
    from bzpipe.masking import mask_blind_zone
    from bzpipe.model.unet3plus import rep_fill

    torch.manual_seed(0)
    x = torch.rand(3, 5, 32, 32) * 1.5 - 0.5
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=(4, 8, 8, 8, 8), rep_prior=True)).eval()
    for h in [model.head, *model.aux_heads]:          # an untrained head's weights are small, not zero:
        torch.nn.init.zeros_(h.weight)                 # zero them to see the prior alone
    inputs, mask = mask_blind_zone(x, 6, 0)
    with torch.no_grad():
        outs = model(inputs, heads=True)
    rep = torch.from_numpy(repeat_fill(x[:, 0].numpy(), 6))
    for o in outs:
        torch.testing.assert_close(o[:, 0, :6], rep[:, :6])
    # per-column blind zones and a ramp: hidden pixels take the first visible row of their column
    rows = torch.tensor([[2, 5] * 16] * 3)
    inputs, mask = mask_blind_zone(x, rows, 3)
    filled = rep_fill(inputs[:, :1], inputs[:, -1:])
    assert torch.equal(filled[0, 0, :5, 0], x[0, 0, 5, 0].expand(5))
    assert torch.equal(filled[0, 0, :8, 1], x[0, 0, 8, 1].expand(8))
    assert torch.equal(filled[:, :, 8:], x[:, :1, 8:])


@pytest.mark.parametrize("filters,skip,size", [((4, 8, 8, 8, 8), None, (32, 32)), ((4, 8, 16, 32, 64), 4, (32, 48)),
                                               ((16, 8, 8, 8, 8), 2, (16, 64)), ((4, 8, 64, 8, 8), None, (32, 32))])
def test_largest_activation_is_the_biggest_tensor_of_a_forward_pass(filters, skip, size):
    model = UNet3Plus(UNet3PlusConfig(in_channels=6, filters=filters, skip=skip)).eval()
    biggest = [0]

    def hook(_m, inp, out):
        for t in (*inp, out):
            if isinstance(t, torch.Tensor):
                biggest[0] = max(biggest[0], t.numel() // t.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.randn(3, 6, *size), heads=True)
    for h in handles:
        h.remove()
    assert model.largest_activation(*size) == biggest[0]


def test_mc_predict_keeps_every_forward_batch_under_the_tensor_limit(monkeypatch):
    from bzpipe.model import mc_dropout

    torch.manual_seed(0)                     # outputs in the echo range (the dBZ spread of clear passes is 0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=3, filters=(4, 8, 8, 8, 8), output_bias=0.25))
    per_sample = model.largest_activation(16, 16)
    monkeypatch.setattr(mc_dropout, "MAX_TENSOR_ELEMENTS", 5 * per_sample + 1)  # room for 5 samples
    sizes = []
    model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    inputs = torch.randn(4, 3, 16, 16)
    out = mc_dropout.mc_predict(model, inputs, n_passes=6, max_batch=64, quantiles=(0.5,))
    assert max(sizes) <= 5 and sum(sizes) == 4 * 6
    assert out["mean"].shape == (4, 1, 16, 16) and float(out["std"].mean()) > 0


def test_mc_predict_in_channels_last_gives_the_same_fill():
    torch.manual_seed(0)
    model = UNet3Plus(UNet3PlusConfig(in_channels=3, filters=(4, 8, 8, 8, 8)))
    inputs = torch.randn(3, 3, 16, 32)
    plain = mc_predict(model, inputs, n_passes=2, deterministic=True, channels_last=False)
    nhwc = mc_predict(model.to(memory_format=torch.channels_last), inputs, n_passes=2, deterministic=True,
                      channels_last=True)
    torch.testing.assert_close(nhwc["mean"], plain["mean"], rtol=1e-4, atol=1e-5)


def test_the_state_blanking_of_king_et_al_is_a_recorded_model_setting():
    """train.blank_state reaches the model's config, survives the checkpoint's dict round trip, and an
    old checkpoint's dict without the field rebuilds bzpipe's default (the state stays visible)."""
    from bzpipe.config import TrainConfig
    from bzpipe.train import model_config_for

    cfg = model_config_for(TrainConfig(blank_state=True, filters=(4, 8, 8, 8, 8)))
    assert cfg.blank_state and UNet3PlusConfig(**cfg.to_dict()).blank_state
    old = {k: v for k, v in cfg.to_dict().items() if k != "blank_state"}
    assert UNet3PlusConfig(**old).blank_state is False
    torch.manual_seed(0)
    net = UNet3Plus(cfg).eval()
    x = torch.rand(2, 5, 32, 32)
    inputs, mask = mask_blind_zone(x, 4, 2)
    other = inputs.clone()
    other[:, 1:-1] = torch.where(mask > 0, -inputs[:, 1:-1], inputs[:, 1:-1])  # another state in the hole
    with torch.no_grad():
        assert torch.equal(net(inputs), net(other))
