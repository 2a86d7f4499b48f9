"""Train the UNet3+ blind-zone inpainting model (single process, DDP, multi-node).

One script for every scale::

    python -m bzpipe.train --config run.yaml --set epochs=3               # laptop, 1 process
    torchrun --nproc_per_node 4 -m bzpipe.train --config run.yaml        # 4 GPUs, one node
    srun torchrun --nnodes $N ... -m bzpipe.train --config run.yaml      # several nodes (infra/slurm)

The process group comes from the torchrun environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL on GPUs, gloo on CPU.  Each rank
reads its DistributedSampler shard; only rank 0 writes checkpoints and the
metrics file (:mod:`bzpipe.checkpoint`).

Per batch: random time flips (dataset; ``time_flip``, as King et al.), a random ramp of 0..ramp_max_rows rows
above the blind zone (per sample; in the first ``ramp_epochs`` epochs only, when set), the blind zone +
ramp hidden (:func:`bzpipe.masking.mask_blind_zone`; with ``ramp_hidden`` off the blind zone only, as King
et al.), and the loss = the mean over the
deep-supervision heads (e5, d4, d3, d2, d1) of the mask-weighted MAE on
reflectivity.  An exponential moving average of the weights over ~``ema_epochs``
epochs is what validation, the checkpoints and inference use
(:func:`bzpipe.optim.weight_average`; 0 = the raw weights, as King et al.).
Validation: the d1 output as MC inference computes it (dropout on
with a fixed seed, ``val_passes`` passes averaged per pass in dBZ; 0 = dropout
off), the blind zone only (plus ``val_ramp_rows``), the same masked MAE; early
stopping and the best checkpoint use it.  Precision (:class:`bzpipe.distributed.Autocast`):
autocast on GPU (``amp``); with ``cpu_amp``, bf16 training steps on a CPU with native bf16
(validation stays float32 there).  Learning rate: linear warm-up, then
cosine (or step) decay, per batch; batch norm with the authors' Keras momentum
and epsilon, bias-corrected at the start (:mod:`bzpipe.optim`).  Every epoch
re-seeds torch from (seed, epoch, rank), so a run resumed from
``checkpoint-last.pt`` after a kill continues exactly as if uninterrupted, and
two runs with the same seed give the same weights.  ``seeds`` trains one run
per seed (:meth:`bzpipe.config.TrainConfig.seed_runs`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from bzpipe.checkpoint import mark_finished, read_checkpoint, save_checkpoint, write_metrics
from bzpipe.config import TrainConfig, config_record, load_stage_config
from bzpipe.dataset.reader import build_values
from bzpipe.distributed import Autocast, DistEnv, all_reduce_sum, average_bn_stats, dist_env, pick_device
from bzpipe.errors import BzpipeError, ConfigError
from bzpipe.masking import mask_blind_zone, masked_abs_error, supervision_loss
from bzpipe.model.mc_dropout import mc_predict
from bzpipe.model.unet3plus import UNet3Plus, UNet3PlusConfig, channels_last_faster
from bzpipe.optim import bn_momentum_warmup, lr_factor, weight_average
from bzpipe.provenance import provenance_record
from bzpipe.store import Store
from bzpipe.store.layout import checkpoint_key, metrics_key
from bzpipe.torchdata import CHANNEL_SETS, PatchDataset, make_loader

log = logging.getLogger("bzpipe.train")


# --------------------------------------------------------------------------- setup


def model_config_for(cfg: TrainConfig) -> UNet3PlusConfig:
    """Architecture of a run: inputs = the channel set + the mask channel."""
    return UNet3PlusConfig(in_channels=len(CHANNEL_SETS[cfg.channels]) + 1, out_channels=1,
                           filters=tuple(cfg.filters), dropout=cfg.dropout,
                           deep_supervision=cfg.deep_supervision, rep_prior=cfg.rep_prior,
                           blank_state=cfg.blank_state, bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; L2 on the conv kernels only, as a Keras ``kernel_regularizer=l2(wd)``.

    Keras adds ``wd * sum(w^2)`` to the loss, i.e. ``2 wd w`` to the gradient;
    Adam's (coupled) ``weight_decay`` adds ``weight_decay * w``, hence 2 wd.
    """
    decay = [p for p in model.parameters() if p.ndim == 4]
    other = [p for p in model.parameters() if p.ndim != 4]
    return torch.optim.Adam([{"params": decay, "weight_decay": 2 * cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr)


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    best_uri: str
    last_uri: str
    metrics_uri: str
    best_epoch: int
    best_val_loss: float
    last_epoch: int
    stopped: str                       # "epochs", "early_stopping"
    history: list[dict[str, Any]] = field(default_factory=list)
    model: UNet3Plus | None = None     # the last epoch's network as inference uses it (Run.eval_model)
    seed_runs: list[str] = field(default_factory=list)   # every run trained (this one first)


# --------------------------------------------------------------------------- loop


def _loaders(cfg: TrainConfig, env: DistEnv, device: torch.device
             ) -> tuple[PatchDataset, PatchDataset, DataLoader, DistributedSampler, DataLoader]:
    store = Store(cfg.store_root)
    train_ds = PatchDataset(store, cfg.dataset, "train", channels=cfg.channels, augment=cfg.time_flip,
                            state_noise=cfg.state_noise)
    val_ds = PatchDataset(store, cfg.dataset, "val", channels=cfg.channels, augment=False)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise BzpipeError(f"{train_ds.uri}: train ({len(train_ds)}) and val ({len(val_ds)}) splits must not "
                          "be empty (early stopping uses the validation split)")
    if not 0 < train_ds.blind_zone_rows < train_ds.shape[2]:
        raise BzpipeError(f"{train_ds.uri}: root attr blind_zone_rows={train_ds.blind_zone_rows} "
                          f"does not fit {train_ds.shape[2]} rows")
    sampler = DistributedSampler(train_ds, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    train_dl = make_loader(train_ds, cfg.batch_size, device, num_workers=cfg.num_workers, sampler=sampler,
                           drop_last=len(sampler) > cfg.batch_size)      # workers + pinned memory on GPU
    val_part = Subset(val_ds, list(range(env.rank, len(val_ds), env.world_size)))  # no padding: exact mean
    val_dl = make_loader(val_part, cfg.batch_size, device, num_workers=cfg.num_workers)
    return train_ds, val_ds, train_dl, sampler, val_dl


@torch.no_grad()
def validate(model: UNet3Plus, loader: DataLoader, blind_rows: int, ramp_rows: int, device: torch.device,
             amp: Autocast, channels_last: bool, max_batches: int | None = None, passes: int = 0,
             seed: int = 0) -> tuple[float, float]:
    """(sum of mask-weighted |error| of the d1 output, sum of mask weights) over ``loader``.

    ``passes`` >= 1: the output MC inference uses (dropout on, batch norm on its running
    statistics, torch seeded with ``seed`` so every validation draws the same masks), averaged
    per pass in dBZ (:func:`bzpipe.model.mc_predict`), on the exact band-limited path that
    evaluation and inference use (only the hidden rows are computed); 0: dropout off.
    """
    model.eval()
    if passes:
        torch.manual_seed(seed)
    num = den = 0.0
    for step, xb in enumerate(loader):
        if max_batches is not None and step >= max_batches:
            break
        xb = xb.to(device, non_blocking=True)                         # (B, C, H, W)
        inputs, mask = mask_blind_zone(xb, blind_rows, ramp_rows)      # (B, C+1, H, W), (B, 1, H, W)
        if passes:
            pred = mc_predict(model, inputs, n_passes=passes, quantiles=(), max_batch=max(64, xb.shape[0]),
                              autocast_dtype=amp.eval_dtype, channels_last=channels_last,
                              band_rows=min(xb.shape[-2], blind_rows + ramp_rows))["mean"]  # band path
        else:
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with amp.autocast(evaluation=True):
                pred = model(inputs)                                   # (B, 1, H, W)
        err, weight = masked_abs_error(pred, xb[:, :1], mask)          # the d1 output's sums
        num, den = num + float(err), den + float(weight)
    return num, den


def train(cfg: TrainConfig, on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.run_name``, and one run per further seed of ``cfg.seeds``.

    Returns the result of the first seed's run (``seed_runs`` lists every run).
    ``on_epoch_end(row)`` is called on every rank after each epoch's checkpoint is
    written (an exception there ends training like a kill would).  Re-seeds the
    global torch RNG every epoch.
    """
    env = dist_env()
    own_group = env.distributed and not dist.is_initialized()
    device = pick_device(cfg.device, env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if own_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        runs = cfg.seed_runs()
        results = [_train(cfg.model_copy(update={"run_name": name, "seed": seed, "seeds": None}), env, device,
                          on_epoch_end) for name, seed in runs]
        results[0].seed_runs = [name for name, _ in runs]
        return results[0]
    finally:
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


class _Run:
    """One run: its setup (``__init__``), its progress (what checkpoint-last restores) and its steps."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, device: torch.device) -> None:
        self.cfg, self.env, self.device, self.store = cfg, env, device, Store(cfg.store_root)
        self.last_key, self.best_key = (checkpoint_key(cfg.run_name, w) for w in ("last", "best"))
        self.train_ds, self.val_ds, self.train_dl, self.sampler, self.val_dl = _loaders(cfg, env, device)
        self.blind = self.train_ds.blind_zone_rows
        self.channels_last = bool(cfg.channels_last and channels_last_faster(device))
        torch.manual_seed(cfg.seed)                      # identical initial weights on every rank
        self.model = UNet3Plus(model_config_for(cfg)).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(self.model, cfg)
        steps_per_epoch = min(len(self.train_dl), cfg.max_batches_per_epoch or len(self.train_dl))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor(cfg, steps_per_epoch))  # per batch
        bn_momentum_warmup(self.model, cfg.bn_momentum)
        self.ema = weight_average(self.model, cfg.ema_epochs, steps_per_epoch)   # None: raw weights
        self.amp = Autocast.for_training(cfg.amp, cfg.amp_dtype, cfg.cpu_amp, device)
        self.meta = self.run_meta()
        self.history: list[dict[str, Any]] = []
        self.best_val, self.best_epoch, self.bad_epochs, self.start_epoch = float("inf"), 0, 0, 1
        self.stopped = ""                                # then "epochs" or "early_stopping"

    @property
    def eval_model(self) -> UNet3Plus:
        """The network validation, the checkpoints' ``model`` and inference use: the weight average
        when there is one (:func:`bzpipe.optim.weight_average`), else the raw weights."""
        return self.model if self.ema is None else self.ema.module

    def run_meta(self) -> dict[str, Any]:
        """What every checkpoint carries besides the state: architecture, data, config, provenance."""
        cfg, store, train_ds, amp = self.cfg, self.store, self.train_ds, self.amp
        built = build_values(train_ds.attrs)
        ds_entry = store.entry(store.key_of(train_ds.uri)) if train_ds.uri.startswith(store.root) else None
        ds_sha = ds_entry.sha256 if ds_entry else ""
        n_train, n_val = len(train_ds), len(self.val_ds)
        return {
            "model": self.model.config.to_dict(), "channels": list(train_ds.channel_names),
            "channel_set": cfg.channels, "blind_zone_rows": self.blind, "ramp_max_rows": cfg.ramp_max_rows,
            "normalization": train_ds.normalization,
            # the grid and patch the model was trained on, so inference needs nothing but the checkpoint
            "grid": built.get("grid", {}), "patch": built.get("patch", {}),
            # the training domain and resolution (cold threshold, sites, forward operator) for inference
            "build": {k: built[k] for k in ("forward_operator", "cold_threshold_c", "sites") if k in built},
            "dataset": {"uri": train_ds.uri, "sha256": ds_sha, "n_train": n_train, "n_val": n_val},
            "config": config_record(cfg), "world_size": self.env.world_size, "device": self.device.type,
            "amp": amp.label,
            "provenance": provenance_record(cfg, inputs={train_ds.uri: ds_sha}, stage="train"),
        }

    def resume(self) -> None:
        """Load checkpoint-last (weights, optimizer, schedule, scaler, progress) of this model and dataset."""
        store, meta, last_key = self.store, self.meta, self.last_key
        state, old, _ = read_checkpoint(store, last_key, map_location=self.device)
        if old.get("model") != meta["model"] or old.get("channels") != meta["channels"]:
            raise ConfigError(f"{store.uri(last_key)}: existing run has model {old.get('model')} on "
                              f"{old.get('channels')}; this config asks for {meta['model']} on "
                              f"{meta['channels']}. Use another run_name or resume=false.")
        old_ds, new_ds = old.get("dataset", {}), meta["dataset"]
        if (old_ds.get("uri"), old_ds.get("sha256")) != (new_ds["uri"], new_ds["sha256"]):
            raise ConfigError(f"{store.uri(last_key)}: existing run was trained on {old_ds.get('uri')} "
                              f"(sha256 {str(old_ds.get('sha256'))[:12]}); this config trains on "
                              f"{new_ds['uri']} (sha256 {new_ds['sha256'][:12]}). "
                              "Use another run_name or resume=false.")
        self.model.load_state_dict(state.get("train_model", state["model"]))
        if self.ema is not None:                         # continue the average (or start it at "model")
            self.ema.module.load_state_dict(state["model"])
            self.ema.n_averaged.fill_(int(state.get("ema_steps", 1)))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if state.get("scaler") and self.amp.scaler.is_enabled():   # {} when saved by a disabled scaler
            self.amp.scaler.load_state_dict(state["scaler"])
        self.best_val, self.best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
        self.bad_epochs, self.start_epoch = int(state["bad_epochs"]), int(state["epoch"]) + 1
        self.history = list(old.get("history", []))
        # an early stop is final; reaching the old epoch count is not (the config may ask for more)
        self.stopped = "early_stopping" if old.get("stopped") == "early_stopping" else ""
        if self.env.is_main:
            log.info("resuming %s from epoch %d (best val %.5f at epoch %d)", self.cfg.run_name,
                     self.start_epoch - 1, self.best_val, self.best_epoch)

    def train_epoch(self, net: nn.Module, epoch: int) -> tuple[float, float]:
        """One epoch on this rank's shard: (sum of batch loss x batch size, samples seen)."""
        cfg, device, amp = self.cfg, self.device, self.amp
        torch.manual_seed(epoch_seed(cfg.seed, epoch, self.env.rank))   # dropout, flips, ramps
        self.sampler.set_epoch(epoch)
        ramp_max = cfg.ramp_max_rows if cfg.ramp_epochs is None or epoch <= cfg.ramp_epochs else 0
        net.train()
        loss_sum = n_seen = 0.0
        for step, xb in enumerate(self.train_dl):
            if cfg.max_batches_per_epoch is not None and step >= cfg.max_batches_per_epoch:
                break
            xb = xb.to(device, non_blocking=True)                                   # (B, C, H, W)
            ramp = torch.randint(0, ramp_max + 1, (xb.shape[0],), device=device)
            inputs, mask = mask_blind_zone(xb, self.blind, ramp, cfg.ramp_hidden)    # (B, C+1, H, W)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with amp.autocast():
                outs = net(inputs, heads=cfg.deep_supervision)                       # 5 x (B, 1, H, W)
            outs = outs if isinstance(outs, list) else [outs]
            loss = supervision_loss(outs, xb[:, :1], mask, cfg.loss_quantile, cfg.echo_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{cfg.run_name}: non-finite training loss at epoch {epoch} "
                                         f"step {step}")
            self.opt.zero_grad(set_to_none=True)
            amp.scaler.scale(loss).backward()
            amp.scaler.step(self.opt)
            amp.scaler.update()
            self.sched.step()                                                        # per-batch schedule
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += float(loss.detach()) * xb.shape[0]
            n_seen += xb.shape[0]
        return loss_sum, n_seen

    def record(self, epoch: int, val_loss: float) -> bool:
        """Book an epoch's validation loss (best, patience, epoch count); True on a new best."""
        is_best = val_loss < self.best_val
        if is_best:
            self.best_val, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.cfg.patience:
            self.stopped = "early_stopping"
        elif epoch >= self.cfg.epochs:
            self.stopped = "epochs"
        return is_best

    def save(self, row: dict[str, Any], dt: float) -> None:
        """Rank 0: checkpoint-last (and -best on a new best), the metrics file and the epoch's log line."""
        store, epoch, is_best = self.store, row["epoch"], row["is_best"]
        state = {"model": self.eval_model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.amp.scaler.state_dict(), "epoch": epoch,
                 "val_loss": row["val_loss"], "best_val_loss": self.best_val, "best_epoch": self.best_epoch,
                 "bad_epochs": self.bad_epochs}
        if self.ema is not None:                         # the raw weights and the average's step count
            state.update(train_model=self.model.state_dict(), ema_steps=int(self.ema.n_averaged))
        meta_now = dict(self.meta, history=self.history, stopped=self.stopped)
        if is_best:
            save_checkpoint(store, self.best_key, state, meta_now)
        save_checkpoint(store, self.last_key, state, meta_now)
        write_metrics(store, self.cfg.run_name, self.history, producer=self.meta["provenance"])
        log.info("%s epoch %d: train %.5f val %.5f lr %.2e %.1fs%s%s", self.cfg.run_name, epoch,
                 row["train_loss"], row["val_loss"], row["lr"], dt, " *best*" if is_best else "",
                 f" stop: {self.stopped}" if self.stopped else "")

    def finish(self, epoch: int) -> TrainResult:
        """Mark the run finished (rank 0; scanners apply finished models only) and describe it."""
        stopped, store, name = self.stopped or "epochs", self.store, self.cfg.run_name
        if self.env.is_main:
            mark_finished(store, name, stopped=stopped, best_epoch=self.best_epoch)
        if self.env.distributed:
            dist.barrier()                                   # rank 0 has written everything
        last = self.history[-1] if self.history else {}
        return TrainResult(best_uri=store.uri(self.best_key), last_uri=store.uri(self.last_key),
                           metrics_uri=store.uri(metrics_key(name)), best_epoch=self.best_epoch,
                           best_val_loss=self.best_val, last_epoch=int(last.get("epoch", epoch)),
                           stopped=stopped, history=self.history, model=self.eval_model)


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device,
           on_epoch_end: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    """One run: set up, resume from checkpoint-last if any, then train, validate, book and save per epoch."""
    run = _Run(cfg, env, device)
    if cfg.resume and run.store.exists(run.last_key):
        run.resume()
    net: nn.Module = run.model
    if env.distributed:
        net = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
    epoch = run.start_epoch - 1
    for epoch in range(run.start_epoch, cfg.epochs + 1):
        if run.stopped:
            break
        t0 = time.perf_counter()
        lr = run.opt.param_groups[0]["lr"]                       # the rate of the epoch's first batch
        loss_sum, n_seen = run.train_epoch(net, epoch)
        average_bn_stats(run.model, env)                         # identical buffers on every rank
        if run.ema is not None:
            average_bn_stats(run.ema.module, env)
        vnum, vden = validate(run.eval_model, run.val_dl, run.blind, cfg.val_ramp_rows, device, run.amp,
                              run.channels_last, cfg.max_val_batches, passes=cfg.val_passes, seed=cfg.seed)
        loss_sum, n_seen, vnum, vden = all_reduce_sum([loss_sum, n_seen, vnum, vden], device, env)
        train_loss, val_loss = loss_sum / max(n_seen, 1.0), vnum / vden if vden > 0 else float("nan")
        is_best = run.record(epoch, val_loss)
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
               "time_s": round(dt, 3), "samples_per_s": round(n_seen / dt, 2) if dt > 0 else None,
               "is_best": is_best, "best_epoch": run.best_epoch, "stopped": run.stopped}
        run.history.append(row)
        if env.is_main:
            run.save(row, dt)
        if on_epoch_end is not None:
            on_epoch_end(row)
    return run.finish(epoch)


# --------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _local_config(path: str | None) -> Iterator[str | None]:
    """A local path for the config; a copy when given as an s3:// URI (the cluster backends pass one)."""
    if not path or "://" not in path or path.startswith("file://"):
        yield path.removeprefix("file://") if path else None
        return
    parent, name = path.rsplit("/", 1)
    data = Store(parent).read_bytes(name)
    with tempfile.TemporaryDirectory(prefix="bzpipe-cfg-") as d:
        local = Path(d) / name
        local.write_bytes(data)
        yield str(local)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bzpipe.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="train (or whole-pipeline) config: YAML/JSON/TOML path or s3:// URI")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set epochs=3 (repeatable)")
    a = parser.parse_args(argv)
    env = dist_env()
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {env.rank}] %(name)s: %(message)s")
    try:
        with _local_config(a.config) as path:
            cfg = load_stage_config(TrainConfig, path, a.overrides)
        result = train(cfg)
    except BzpipeError as e:
        print(f"bzpipe.train: error: {e}", file=sys.stderr)
        return 2
    if env.is_main:
        print(result.best_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
