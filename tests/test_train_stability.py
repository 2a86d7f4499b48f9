"""Training that converges and is reproducible: schedule, batch-norm statistics, validation, seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _zarr_fixture import write_tiny_dataset
from torch import nn

from bzpipe.checkpoint import load_model
from bzpipe.config import TrainConfig, load_pipeline_config
from bzpipe.errors import ConfigError
from bzpipe.optim import bn_momentum_warmup, lr_factor, weight_average
from bzpipe.train import train

torch.set_num_threads(1)
TINY = dict(filters=(4, 8, 8, 8, 8), batch_size=4, lr=1e-3, dataset="tiny", patience=50)


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_tiny_dataset(root, n={"train": 16, "val": 8, "test": 4}, rows=32, cols=32, blind_zone_rows=4)
    return root


def test_learning_rate_warms_up_then_decays() -> None:
    cfg = TrainConfig(epochs=10, warmup_epochs=2, lr_min_ratio=0.1)
    f = lr_factor(cfg, steps_per_epoch=5)
    assert [f(k) for k in range(3)] == pytest.approx([0.1, 0.2, 0.3])          # linear over 10 steps
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(49) == pytest.approx(0.1, abs=0.01)                              # cosine down to 0.1
    assert all(f(k) >= f(k + 1) for k in range(10, 49))
    step = lr_factor(TrainConfig(epochs=10, warmup_epochs=0, lr_schedule="step", lr_step_epochs=3,
                                 lr_gamma=0.5), 5)
    assert [step(k) for k in (0, 14, 15, 30)] == [1.0, 1.0, 0.5, 0.25]


def test_batch_norm_running_statistics_are_bias_corrected() -> None:
    """With Keras' momentum (0.01) the first batches still count fully: after k batches the running
    mean is the mean of the k batch means, not 99 % of the initial 0."""
    bn = nn.BatchNorm2d(1, momentum=0.01, eps=1e-3)
    handles = bn_momentum_warmup(bn, 0.01)
    bn.train()
    means = [3.0, 5.0, 7.0]
    for m in means:
        bn(torch.full((4, 1, 2, 2), m) + torch.randn(4, 1, 2, 2) * 0.0)
    assert float(bn.running_mean) == pytest.approx(sum(means) / 3)
    for _ in range(500):                                                     # later: the 0.01 average
        bn(torch.full((4, 1, 2, 2), 1.0))
    assert bn.momentum == pytest.approx(0.01)
    for h in handles:
        h.remove()


def test_model_gets_the_authors_batch_norm_settings(tiny_root: Path) -> None:
    res = train(TrainConfig(store_root=str(tiny_root), epochs=1, **TINY))
    bns = [m for m in res.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)                           # Keras epsilon
    model, meta = load_model(str(tiny_root), "unet3p")
    assert meta["model"]["bn_momentum"] == 0.01 and meta["model"]["bn_eps"] == 1e-3
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_same_seed_same_model_and_several_seeds(tiny_root: Path) -> None:
    a = train(TrainConfig(store_root=str(tiny_root), epochs=2, run_name="a", seed=3, **TINY))
    b = train(TrainConfig(store_root=str(tiny_root), epochs=2, run_name="b", seed=3, **TINY))
    for k, v in a.model.state_dict().items():                               # reproducible, bit for bit
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    multi = train(TrainConfig(store_root=str(tiny_root), epochs=1, run_name="m", seeds=[3, 4], **TINY))
    assert multi.seed_runs == ["m", "m.seed4"]
    first, _ = load_model(str(tiny_root), "m", which="last")
    other, meta = load_model(str(tiny_root), "m.seed4", which="last")
    assert meta["config"]["values"]["seed"] == 4
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    # the evaluation of a pipeline scores every seed
    cfg = load_pipeline_config(overrides=["train.run_name=m", "train.seeds=[3, 4, 5]"])
    assert cfg.evaluate.seed_runs == ["m.seed4", "m.seed5"]
    with pytest.raises(ConfigError, match="twice"):
        TrainConfig(seeds=[1, 1]).seed_runs()


def test_validation_loss_is_the_mc_networks_and_repeatable(tiny_root: Path) -> None:
    """Validation runs the network MC inference uses (dropout on, a fixed seed): the same weights give
    the same loss, whatever the random state training left behind."""
    from torch.utils.data import DataLoader

    from bzpipe.distributed import Autocast
    from bzpipe.torchdata import PatchDataset
    from bzpipe.train import validate

    res = train(TrainConfig(store_root=str(tiny_root), epochs=1, dropout=0.5, **TINY))
    dl = DataLoader(PatchDataset(tiny_root, "tiny", "val"), batch_size=4)
    amp = Autocast.for_training(True, "bf16", True, torch.device("cpu"))   # validation is float32 on CPU
    runs = []
    for junk in (1, 2):
        torch.manual_seed(junk)
        runs.append(validate(res.model, dl, 4, 0, torch.device("cpu"), amp, False, passes=2, seed=0))
    assert runs[0] == runs[1]
    plain = validate(res.model, dl, 4, 0, torch.device("cpu"), amp, False, passes=0)
    assert plain != runs[0]                                                   # dropout on vs off
    past_top = validate(res.model, dl, 4, 40, torch.device("cpu"), amp, False, passes=2, seed=0)
    assert past_top[1] > runs[0][1]                  # a ramp beyond the 32 rows: every row, no band error


def test_cpu_bf16_autocast_trains_the_steps_only_and_is_recorded(tiny_root: Path, monkeypatch, caplog) -> None:
    """``cpu_amp``: bf16 autocast of the training steps on a CPU with native bf16; validation stays
    float32 (as evaluation and inference run); a CPU without native bf16 trains in float32 and says so."""
    from bzpipe import distributed
    from bzpipe.distributed import Autocast

    cpu = torch.device("cpu")
    off = Autocast.for_training(True, "bf16", False, cpu)
    assert (off.enabled, off.label, off.eval_dtype) == (False, "off", None)
    monkeypatch.setattr(distributed, "cpu_bf16_native", lambda: False)
    with caplog.at_level("WARNING", logger="bzpipe.distributed"):
        emulated = Autocast.for_training(True, "bf16", True, cpu)
    assert not emulated.enabled and "no native bf16" in caplog.text
    monkeypatch.setattr(distributed, "cpu_bf16_native", lambda: True)
    on = Autocast.for_training(False, "fp16", True, cpu)          # the GPU settings do not apply on CPU
    assert (on.enabled, on.dtype, on.label, on.eval_dtype) == (True, torch.bfloat16, "bfloat16", None)
    assert not on.scaler.is_enabled()
    with on.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with on.autocast(evaluation=True):
        assert not torch.is_autocast_enabled("cpu")
    res = train(TrainConfig(store_root=str(tiny_root), epochs=2, run_name="bf", cpu_amp=True, **TINY))
    assert all(torch.isfinite(torch.tensor([r["train_loss"], r["val_loss"]])).all() for r in res.history)
    assert all(v.dtype == torch.float32 for v in res.model.state_dict().values() if v.is_floating_point())
    _, meta = load_model(str(tiny_root), "bf")
    assert meta["amp"] == "bfloat16"


def test_weight_average_is_an_exponential_average_of_weights_and_batch_norm_statistics() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert weight_average(net, 0.0, 4) is None                                # 0: the raw weights
    avg = weight_average(net, 1.0, 4)                                         # decay 1 - 1/4
    w0 = net[0].weight.detach().clone()
    avg.update_parameters(net)                                                # the first update copies
    with torch.no_grad():
        net[0].weight.add_(4.0)
        net[1].running_mean.fill_(8.0)
    avg.update_parameters(net)
    assert torch.allclose(avg.module[0].weight, 0.75 * w0 + 0.25 * (w0 + 4.0))
    assert torch.allclose(avg.module[1].running_mean, torch.full((2,), 0.25 * 8.0))


def test_validation_checkpoints_and_inference_use_the_weight_average(tiny_root: Path) -> None:
    from torch.utils.data import DataLoader

    from bzpipe.checkpoint import read_checkpoint
    from bzpipe.distributed import Autocast
    from bzpipe.model.unet3plus import channels_last_faster
    from bzpipe.store import Store
    from bzpipe.store.layout import checkpoint_key
    from bzpipe.torchdata import PatchDataset
    from bzpipe.train import validate

    res = train(TrainConfig(store_root=str(tiny_root), epochs=2, ema_epochs=1.0, **TINY))
    state, _, _ = read_checkpoint(Store(str(tiny_root)), checkpoint_key("unet3p", "last"))
    assert state["ema_steps"] == 8                                            # 16 patches / 4, 2 epochs
    averaged, raw = state["model"], state["train_model"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)
    for k, v in res.model.state_dict().items():                               # what train() returns ...
        assert torch.equal(v, averaged[k]), k
    model, _ = load_model(str(tiny_root), "unet3p", which="last")             # ... and inference loads
    for k, v in model.state_dict().items():
        assert torch.equal(v, averaged[k]), k
    dl = DataLoader(PatchDataset(tiny_root, "tiny", "val"), batch_size=4)
    cpu = torch.device("cpu")
    num, den = validate(res.model, dl, 4, 0, cpu, Autocast.for_training(True, "bf16", False, cpu),
                        channels_last_faster(cpu),
                        passes=1, seed=0)
    assert res.history[-1]["val_loss"] == pytest.approx(num / den, rel=1e-6)  # the average is validated
    plain = train(TrainConfig(store_root=str(tiny_root), epochs=2, ema_epochs=0, run_name="raw", **TINY))
    state, _, _ = read_checkpoint(Store(str(tiny_root)), checkpoint_key("raw", "last"))
    assert "train_model" not in state and plain.history[-1]["val_loss"] != res.history[-1]["val_loss"]
