"""Dataset, training loop (checkpoints, resume, early stopping, CLI) and the Prefect train flow."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from _zarr_fixture import write_tiny_dataset

from bzpipe.checkpoint import finished_model_id, load_model, model_id, read_metrics, save_checkpoint
from bzpipe.checksums import sha256_bytes
from bzpipe.config import TrainConfig
from bzpipe.errors import ConfigError, StoreError
from bzpipe.provenance import code_version
from bzpipe.store import Store
from bzpipe.store.layout import checkpoint_key
from bzpipe.torchdata import PatchDataset
from bzpipe.train import main, train

torch.set_num_threads(1)
TINY = dict(filters=(4, 8, 8, 8, 8), batch_size=4, lr=1e-3, dataset="tiny", patience=50,
            warmup_epochs=0.0, lr_schedule="step")   # a constant lr here; the schedule: test_train_stability


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_tiny_dataset(root, n={"train": 16, "val": 8, "test": 4}, rows=32, cols=32, blind_zone_rows=4)
    return root


def cfg_for(root: Path, **kw) -> TrainConfig:
    return TrainConfig(store_root=str(root), **{**TINY, **kw})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- dataset


def test_patch_dataset_reads_channels_and_flips(tiny_root: Path):
    full = PatchDataset(tiny_root, "tiny", "train")
    one = PatchDataset(str(tiny_root), "tiny", "train", channels="3+_1", cache=False)
    assert len(full) == 16 and full.shape == (16, 5, 32, 32) and one.shape == (16, 1, 32, 32)
    assert full.channel_names == ("reflectivity", "t", "q", "u", "v")
    assert full.blind_zone_rows == 4 and full.normalization["reflectivity"]["no_echo"] == -1.0
    for i in (0, 7, 15):
        assert torch.equal(full[i][:1], one[i])
    batch = full.__getitems__([9, 2, 9])
    assert all(torch.equal(b, full[i]) for b, i in zip(batch, (9, 2, 9)))
    aug = PatchDataset(tiny_root, "tiny", "train", augment=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        a, ref = aug[3], full[3]
        assert torch.equal(a, ref) or torch.equal(a, ref.flip(-1))  # only time (col) flips
        seen.add(torch.equal(a, ref))
    assert seen == {True, False}
    with pytest.raises(StoreError, match="missing or incomplete"):
        PatchDataset(tiny_root, "v9", "train")
    with pytest.raises(StoreError, match="no split"):
        PatchDataset(tiny_root, "tiny", "holdout")


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("flip", [False, True])
def test_time_flips_only_when_asked(tiny_root: Path, monkeypatch, flip: bool):
    """``train.time_flip`` (on by default, as King et al.) and ``train.state_noise`` decide the training
    split's augmentations; validation is never augmented."""
    import bzpipe.train as train_mod

    made: dict[str, bool] = {}
    real = train_mod.PatchDataset

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        made[a[2]] = (k.get("augment", False), k.get("state_noise", 0.0))
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "PatchDataset", spy)
    assert TrainConfig().time_flip is True and TrainConfig().state_noise == 0.0
    train(cfg_for(tiny_root, epochs=1, max_batches_per_epoch=1, run_name=f"flip{flip}", time_flip=flip,
                  state_noise=0.25 if flip else 0.0))
    assert made == {"train": (flip, 0.25 if flip else 0.0), "val": (False, 0.0)}


@pytest.mark.parametrize("ramp_epochs", [None, 2])
def test_the_ramp_is_drawn_in_the_first_ramp_epochs_only(tiny_root: Path, monkeypatch, ramp_epochs):
    """``train.ramp_epochs``: the training holes are blind zone + a random ramp in epochs 1..N and the
    blind zone alone after them; None (the default): a ramp in every epoch.  Validation never ramps."""
    import bzpipe.train as train_mod

    ramps: list[torch.Tensor] = []            # the training batches' per-sample ramps, in order
    real = train_mod.mask_blind_zone

    def spy(x, blind, ramp=0, *rest):  # type: ignore[no-untyped-def]
        if isinstance(ramp, torch.Tensor):    # training draws one ramp per sample; validation passes an int
            ramps.append(ramp.clone())
        else:
            assert ramp == 0
        return real(x, blind, ramp, *rest)

    monkeypatch.setattr(train_mod, "mask_blind_zone", spy)
    ends: list[int] = []
    assert TrainConfig().ramp_epochs is None
    train(cfg_for(tiny_root, epochs=4, max_batches_per_epoch=4, ramp_max_rows=6, ramp_epochs=ramp_epochs,
                  run_name=f"ramp{ramp_epochs}"), on_epoch_end=lambda row: ends.append(len(ramps)))
    assert ends == [4, 8, 12, 16]
    tallest = [int(torch.cat(ramps[i - 4:i]).max()) for i in ends]   # per epoch, over its 16 samples
    drawn = [t > 0 for t in tallest]          # 16 draws of 0..6 are all 0 with probability 7**-16
    assert drawn == ([True] * 4 if ramp_epochs is None else [True, True, False, False])
    assert max(tallest) <= 6


@pytest.mark.parametrize("hidden", [True, False])
def test_the_ramp_is_hidden_or_visible_and_always_weighed(tiny_root: Path, monkeypatch, hidden: bool):
    """``train.ramp_hidden`` (on by default): the network sees a hole of blind zone + ramp rows; off (King
    et al.), it sees the ramp's observed rows and only the blind zone is hidden.  The loss weighs the ramp
    either way."""
    import bzpipe.train as train_mod
    from bzpipe.model.unet3plus import UNet3Plus

    seen: list[torch.Tensor] = []             # what the network gets in the training steps
    weighed: list[torch.Tensor] = []          # the loss weights of the same steps
    real_forward, real_loss = UNet3Plus.forward, train_mod.supervision_loss

    def forward(self, x, *a, **k):  # type: ignore[no-untyped-def]
        if torch.is_grad_enabled():           # training steps (validation runs without autograd)
            seen.append(x.detach().clone())
        return real_forward(self, x, *a, **k)

    def loss(outs, target, mask, *rest):  # type: ignore[no-untyped-def]
        weighed.append(mask.detach().clone())
        return real_loss(outs, target, mask, *rest)

    monkeypatch.setattr(UNet3Plus, "forward", forward)
    monkeypatch.setattr(train_mod, "supervision_loss", loss)
    assert TrainConfig().ramp_hidden is True
    train(cfg_for(tiny_root, epochs=1, max_batches_per_epoch=4, ramp_max_rows=6, ramp_hidden=hidden,
                  run_name=f"visible{hidden}"))
    assert len(seen) == len(weighed) == 4
    for x, w in zip(seen, weighed):
        hole = (x[:, -1, :, 0] > 0).sum(1)                     # hidden rows per sample (the mask channel)
        weights = (w[:, 0, :, 0] > 0).sum(1)                   # rows the loss weighs per sample
        ramp_rows = (w[:, 0, :, 0] > 0) & (w[:, 0, :, 0] < 1)  # (B, H): the ramp
        assert int(weights.min()) >= 4 and int(hole.min()) >= 4
        refl_in_ramp = x[:, 0][ramp_rows]                      # the reflectivity the network gets there
        if hidden:
            assert torch.equal(hole, weights) and bool((refl_in_ramp == 0).all())
        else:
            assert bool((hole == 4).all()) and not bool((refl_in_ramp == 0).all())
    assert int(torch.cat(weighed)[:, 0, :, 0].gt(0).sum(1).max()) > 4   # some ramp was drawn


def test_train_writes_checkpoints_metrics_and_loads(tiny_root: Path):
    res = train(cfg_for(tiny_root, epochs=2))
    store = Store(tiny_root)
    assert res.last_epoch == 2 and res.stopped == "epochs"
    rows = read_metrics(store, "unet3p")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train_loss"] > 0 and r["val_loss"] > 0 and r["lr"] == 1e-3 for r in rows)
    for which in ("last", "best"):
        key = checkpoint_key("unet3p", which)
        assert store.is_complete(key)
        raw = store.read_bytes(key)
        state = torch.load(io.BytesIO(raw), weights_only=True)     # tensors + primitives only
        meta = json.loads(state["meta_json"])
        assert meta["provenance"]["code_version"] == code_version()
        assert meta["config"]["values"]["filters"] == [4, 8, 8, 8, 8]
        assert meta["normalization"]["reflectivity"]["dbz_min"] == -60.0
        assert meta["blind_zone_rows"] == 4 and meta["channels"] == ["reflectivity", "t", "q", "u", "v"]
        assert meta["grid"]["n_heights"] == 32 and meta["patch"]["width"] == 32   # inference needs only this
    model, meta = load_model(str(tiny_root), "unet3p", which="best")
    assert meta["epoch"] == res.best_epoch
    assert model_id(meta) == sha256_bytes(store.read_bytes(checkpoint_key("unet3p", "best")))[:12]
    assert not model.training and model.config.in_channels == 6
    last, meta_last = load_model(store, "unet3p", which="last")
    assert meta_last["epoch"] == 2
    for k, v in last.state_dict().items():                             # the last checkpoint = final weights
        assert torch.equal(v, res.model.state_dict()[k]), k
    # the run is marked finished with these checkpoints; a run that rewrites them is not finished
    assert finished_model_id(store, "unet3p") == model_id(meta)
    assert finished_model_id(store, "unet3p", "last") == model_id(meta_last)
    save_checkpoint(store, checkpoint_key("unet3p", "best"), {"model": model.state_dict(), "epoch": 9}, meta)
    assert finished_model_id(store, "unet3p") is None


class Killed(Exception):
    pass


def test_resume_after_kill_continues_from_saved_epoch(tmp_path: Path, tiny_root: Path):
    ref = train(cfg_for(tiny_root, epochs=3, run_name="ref"))
    seen: list[int] = []

    def kill_after_2(row):
        seen.append(row["epoch"])
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg_for(tiny_root, epochs=3, run_name="resumed"), on_epoch_end=kill_after_2)
    assert [r["epoch"] for r in read_metrics(tiny_root, "resumed")] == [1, 2]
    res = train(cfg_for(tiny_root, epochs=3, run_name="resumed"),
                on_epoch_end=lambda r: seen.append(r["epoch"]))
    assert seen == [1, 2, 3]                                            # epoch 3 only ran after the restart
    assert [r["epoch"] for r in read_metrics(tiny_root, "resumed")] == [1, 2, 3]
    # same seeds per epoch + restored optimizer / scheduler: identical to the uninterrupted run
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k
    # a finished run is not retrained; a different architecture under the same name is refused
    again = train(cfg_for(tiny_root, epochs=3, run_name="resumed"), on_epoch_end=lambda r: seen.append(-1))
    assert -1 not in seen and again.last_epoch == 3
    with pytest.raises(ConfigError, match="existing run"):
        train(cfg_for(tiny_root, epochs=4, run_name="resumed", filters=(4, 8, 8, 8, 16)))
    # ... and so is resuming on another dataset (a rebuilt version has another checksum)
    write_tiny_dataset(tiny_root, version="other", n={"train": 16, "val": 8}, rows=32, cols=32,
                       blind_zone_rows=4, seed=1)
    with pytest.raises(ConfigError, match="existing run was trained on .*tiny"):
        train(cfg_for(tiny_root, epochs=4, run_name="resumed", dataset="other"))


def test_early_stopping_uses_the_validation_split(tmp_path: Path):
    # train blind zones are all +1 (strong echo), val blind zones all -1 (no echo): learning the training
    # split makes the validation loss worse, so training stops early while the training loss keeps falling
    root = tmp_path / "store"
    write_tiny_dataset(root, n={"train": 16, "val": 8}, blind_zone_rows=4,
                       blind_fill={"train": 1.0, "val": -1.0})
    res = train(cfg_for(root, epochs=12, patience=2, lr=1e-2, lr_step_epochs=100))
    rows = res.history
    val = [r["val_loss"] for r in rows]
    tr = [r["train_loss"] for r in rows]
    assert res.stopped == "early_stopping"
    assert res.best_epoch == 1 + val.index(min(val))
    assert res.last_epoch == res.best_epoch + 2 < 12                    # patience 2
    assert tr[-1] < tr[0]                                               # training loss alone would go on
    _, meta = load_model(str(root), "unet3p", which="best")
    assert meta["epoch"] == res.best_epoch


def test_cli_main_with_config_file_and_overrides(tiny_root: Path, tmp_path: Path, capsys):
    cfgfile = tmp_path / "run.yaml"
    cfgfile.write_text(f"store_root: {tiny_root}\ntrain:\n  dataset: tiny\n  filters: [4, 8, 8, 8, 8]\n"
                       "  batch_size: 8\n  run_name: cli\n")
    assert main(["--config", str(cfgfile), "--set", "epochs=1", "--set", "train.channels=3+_1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == Store(tiny_root).uri(checkpoint_key("cli", "best"))
    model, meta = load_model(tiny_root, "cli")
    assert meta["channels"] == ["reflectivity"] and model.config.in_channels == 2
    assert main(["--config", str(cfgfile), "--set", "dataset=nope", "--set", "run_name=x"]) == 2


# --------------------------------------------------------------------------- Prefect flow


@pytest.mark.prefect
def test_train_flow_local_publishes_artifacts(prefect_server, tiny_root: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train import train as train_flow

    best = train_flow(config=cfg_for(tiny_root, epochs=2, run_name="flow_run"))
    store = Store(tiny_root)
    assert best == store.uri(checkpoint_key("flow_run", "best")) and store.is_complete(store.key_of(best))
    png = store.read_bytes("models/flow_run/loss-curve.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["train-metrics-flow-run", "train-curve-flow-run"])))}
    assert set(arts) == {"train-metrics-flow-run", "train-curve-flow-run"}
    table = arts["train-metrics-flow-run"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [r["epoch"] for r in table] == [1, 2]
    assert "loss-curve.png" in arts["train-curve-flow-run"].data


def _fake_cli(bindir: Path, name: str, script: str) -> None:
    p = bindir / name
    p.write_text(f"#!{sys.executable}\n{script}")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


@pytest.mark.prefect
def test_train_flow_cluster_backends(prefect_server, tiny_root: Path, tmp_path: Path, monkeypatch):
    from doubles.kubeapi import FakeKube

    from flows import kube
    from flows.train import ClusterError, render_k8s_job
    from flows.train import train as train_flow

    # a missing CLI is a clear error
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterError, match="needs the `sbatch` command"):
        train_flow(config=cfg_for(tiny_root, backend="slurm"))
    # a local stand-in for sbatch records what the flow submits
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.jsonl"
    record = ("import json, sys\n"
              f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], 'stdin': "
              "'' if sys.stdin.isatty() else sys.stdin.read()}) + '\\n')\n")
    _fake_cli(bindir, "sbatch", record + "print('4242')\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    best = train_flow(config=cfg_for(tiny_root, backend="slurm", nproc_per_node=4, nnodes=2, run_name="hpc"))
    assert best == Store(tiny_root).uri(checkpoint_key("hpc", "best"))
    # Kubernetes through the API (a double of the kubernetes client; no kubectl in the image)
    fake = FakeKube()
    fake.on_read = lambda k, name, ns, n: k.finish(ns, name)
    monkeypatch.setattr(kube, "kubernetes_apis", lambda: (fake, fake))
    best = train_flow(config=cfg_for(tiny_root, backend="kubernetes", nproc_per_node=2, run_name="k8s"))
    assert best == Store(tiny_root).uri(checkpoint_key("k8s", "best"))
    [(ns, name)] = fake.jobs
    assert fake.jobs[(ns, name)]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "2"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    sb = calls[0]["argv"]
    assert "--nodes=2" in sb and "--gpus-per-node=4" in sb and "--wait" in sb
    assert sb[-2].endswith("infra/slurm/train.sbatch") and sb[-1].endswith("models/hpc/train-config.json")
    staged = json.loads(Store(tiny_root).read_bytes("models/hpc/train-config.json"))
    assert staged["nnodes"] == 2 and staged["filters"] == [4, 8, 8, 8, 8]
    # the rendered multi-node job: indexed pods, GPU requests, elastic c10d rendezvous on pod 0
    docs = render_k8s_job(cfg_for(tiny_root, nproc_per_node=8, nnodes=3, run_name="big"), "s3://b/cfg.json")
    job, svc = docs
    spec = job["spec"]
    assert spec["completions"] == spec["parallelism"] == 3 and spec["completionMode"] == "Indexed"
    ctr = spec["template"]["spec"]["containers"][0]
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "8"
    cmd = ctr["args"][-1]
    assert "--nproc_per_node=8" in cmd and "--nnodes=3" in cmd
    assert "-m bzpipe.train --config s3://b/cfg.json" in cmd
    assert f"--rdzv_endpoint={job['metadata']['name']}-0.{svc['metadata']['name']}:29500" in cmd
    assert "--rdzv_backend=c10d" in cmd and "--nnodes=3:3" in cmd
    assert svc["spec"]["clusterIP"] == "None"
