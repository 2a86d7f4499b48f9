"""The training stage: the model, the optimizer and schedule, the process layout."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bzpipe.config.base import StageConfig
from bzpipe.errors import ConfigError


class TrainConfig(StageConfig):
    """The training stage: the dataset and model, the optimizer and its schedule, and the process
    layout (backend, processes per node, nodes).  Where a cluster job runs (image, namespace, SLURM
    partition and time) is a flow setting: :class:`flows.settings.TrainLaunch`."""

    dataset: str = Field("v1", description="dataset version (or full store URI) to train on")
    run_name: str = Field("unet3p", pattern=r"^[A-Za-z0-9_.-]+$")
    channels: Literal["3+_1", "3+_5"] = "3+_5"
    filters: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)
    dropout: float = Field(0.2, ge=0, lt=1)
    deep_supervision: bool = True
    rep_prior: bool = Field(False, description="start from the REP fill and predict a correction "
                            "(see bzpipe.model.UNet3PlusConfig); off in the paper's model")
    blank_state: bool = Field(False, description=(
        "blank the ERA-5 channels wherever the reflectivity is hidden, as King et al.; off (bzpipe): the "
        "ERA-5 state of the blind zone is an input (README, Skill)"))
    seeds: list[int] | None = Field(None, description=(
        "train one run per seed (run_name for the first, <run_name>.seed<k> for the others); "
        "None: the single seed `seed`"))
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    lr_schedule: Literal["cosine", "step"] = Field("cosine", description=(
        "after the warm-up: cosine decay to lr_min_ratio x lr over the epochs, or x lr_gamma every "
        "lr_step_epochs"))
    warmup_epochs: float = Field(1.0, ge=0, description="linear learning-rate warm-up from 0, epochs")
    lr_min_ratio: float = Field(0.05, ge=0, le=1, description="cosine schedule: final lr / lr")
    lr_step_epochs: int = Field(10, ge=1)
    lr_gamma: float = Field(0.5, gt=0, le=1)
    bn_momentum: float = Field(0.01, gt=0, le=1, description=(
        "batch-norm running-statistics momentum, PyTorch convention (Keras momentum 0.99 of King et al. = "
        "0.01); bias-corrected at the start of a run (bzpipe.optim)"))
    bn_eps: float = Field(1e-3, gt=0, description="batch-norm epsilon (Keras default 1e-3, as King et al.)")
    ema_epochs: float = Field(1.0, ge=0, description=(
        "validate, checkpoint and infer with an exponential moving average of the weights and batch-norm "
        "statistics over about this many epochs of steps (bzpipe.optim.weight_average); 0: the raw "
        "weights of the last step, as King et al."))
    val_passes: int = Field(1, ge=0, description=(
        "validation loss of the model as inference uses it: MC-dropout passes (dropout on, fixed seed) "
        "averaged per pass in dBZ; 0: dropout off (deterministic network)"))
    patience: int = Field(8, ge=1, description="early stopping on the validation split")
    ramp_max_rows: int = Field(8, ge=0, description="random ramp above the blind zone, rows")
    ramp_hidden: bool = Field(True, description=(
        "hide the training ramp's rows from the network too (a hole blind zone + ramp rows tall); False: "
        "King et al.'s ramp, whose observed rows stay visible while the loss still weighs them "
        "(bzpipe.masking)"))
    ramp_epochs: int | None = Field(None, ge=0, description=(
        "draw the ramp in the first this many epochs only; the later ones hide the blind zone alone, "
        "the hole the model fills (a fine-tune on it); None: every epoch.  On the development winter "
        "10 of the demo's 14 kept none of the ramp's virga gain and gave up its MAE (README, Skill)"))
    time_flip: bool = Field(True, description=(
        "augment training patches with random time flips (probability 1/2), as King et al.  A flip "
        "reverses the fall-streak slant the wind shear sets; off, the validation loss was no better "
        "over 3 seeds (README, Skill)"))
    state_noise: float = Field(0.0, ge=0, description=(
        "augment training patches with a random ERA-5 error per sample and channel, bias + linear in "
        "height, of this standard deviation in normalized units (bzpipe.torchdata.perturb_state); 0: off, "
        "as King et al.  On the demo, 0.2 did not separate from 0 on validation over 3 seeds, and it "
        "halved the shallow-snowfall gain (README, Skill)"))
    loss_quantile: float = Field(0.5, gt=0, lt=1, description=(
        "training loss: King et al.'s blind_MAE (L1) at 0.5, whose minimizer is the conditional median, "
        "so a pixel is filled with echo only where echo is more likely than not; another value trains "
        "on the pinball loss of that quantile (bzpipe.masking.masked_pinball), e.g. 0.6 fills echo where "
        "its probability exceeds 0.4, but raises every intensity too (on the second development winter "
        "it lost 2.5 dBZ of MAE lead and all of the virga: README, Skill).  Validation stays MAE"))
    echo_weight: float = Field(1.0, gt=0, description=(
        "weight of the training loss on target pixels with echo (clear ones: 1; "
        "bzpipe.masking.echo_weighted); 1: King et al.'s blind_MAE.  With w the L1-best fill of an "
        "uncertain pixel is echo once its probability exceeds 1 / (1 + w) instead of 1/2 (1.5 on the "
        "second development winter: 15 more shallow clouds found, 0.42 dBZ of MAE lead lost: README, Skill)"))
    max_batches_per_epoch: int | None = Field(None, ge=1)
    num_workers: int | None = Field(None, ge=0, description=(
        "DataLoader worker processes; None: auto (4 per GPU process, 0 on CPU: "
        "bzpipe.torchdata.make_loader)"))
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="GPU: autocast the training steps and validation (amp_dtype)")
    cpu_amp: bool = Field(False, description=(
        "CPU: bf16 autocast of the training steps on a CPU with native bf16 (AMX / AVX512-BF16); "
        "validation, evaluation and inference stay float32 (bzpipe.distributed.Autocast)"))
    backend: Literal["local", "torchrun", "kubernetes", "slurm"] = "local"
    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1, description="nodes (kubernetes / slurm backends)")
    resume: bool = Field(True, description="continue from models/<run_name>/checkpoint-last.pt if it exists")
    amp_dtype: Literal["bf16", "fp16"] = Field("bf16", description="GPU autocast dtype (fp16: + GradScaler)")
    channels_last: bool = Field(True, description="channels_last memory format (faster on GPU and CPU)")
    max_val_batches: int | None = Field(None, ge=1)
    val_ramp_rows: int = Field(0, ge=0, description="ramp above the blind zone for the validation loss")

    def seed_runs(self) -> list[tuple[str, int]]:
        """``(run_name, seed)`` of every run :attr:`seeds` asks for (one run when None)."""
        return seed_runs(self.run_name, self.seeds if self.seeds else [self.seed])


def seed_runs(run_name: str, seeds: list[int]) -> list[tuple[str, int]]:
    """Run names of a multi-seed training: the first seed keeps ``run_name``, the others get
    ``<run_name>.seed<k>``; duplicates are refused."""
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"train.seeds lists a seed twice: {seeds}")
    return [(run_name if i == 0 else f"{run_name}.seed{s}", int(s)) for i, s in enumerate(seeds)]
