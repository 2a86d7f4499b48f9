"""What keeps training stable: the learning-rate schedule and batch-norm statistics.

Two things made validation losses swing between epochs (two identical 60-epoch
GPU runs stopped at best epochs 4 and 1, test MAE 2.3 vs 6.3 dBZ):

* **Learning rate.** A constant Adam rate from the first step, without a
  warm-up, lets the first updates (while Adam's second-moment estimates are
  still noisy) throw the weights far; and a constant rate never lets the model
  settle.  :func:`lr_factor`: linear warm-up over ``warmup_epochs``, then cosine
  decay to ``lr_min_ratio`` (or the old step decay), applied per batch.
* **Batch-norm running statistics** are what validation and MC inference use.
  With PyTorch's momentum 0.1 they follow the last ~10 batches of 16 random
  patches, so they jump from epoch to epoch; King et al. train with Keras'
  momentum 0.99 (PyTorch 0.01: an average over ~100 batches) and epsilon 1e-3.
  A plain 0.01 momentum, however, keeps the initial statistics (mean 0, var 1)
  for hundreds of steps - most of a short CPU run - so :func:`bn_momentum_warmup`
  corrects the bias as Adam does: the effective momentum is
  ``max(momentum, 1 / (batches seen + 1))``, i.e. an exact average of the first
  batches, then the exponential average.

The validation loss itself is taken in the mode inference uses (dropout on,
fixed seed; :func:`bzpipe.train.validate`), so the checkpoint chosen by it is
the network that MC inference evaluates.

* **The weights of one step.** Even with both fixes, on the CPU demo (40 steps
  of 16 patches per epoch at a peak rate of 1e-3) the validation loss of the
  weights at the end of an epoch swung by up to 30 % between epochs while the
  training loss fell steadily; recomputing the batch-norm statistics for those
  weights (PreciseBN, Wu & Johnson 2021) did not remove the swings, so they are
  in the weights themselves.  :func:`weight_average` keeps an exponential moving
  average of the weights and batch-norm statistics (Polyak & Juditsky 1992; the
  "EMA" of most current image models) over about ``ema_epochs`` epochs of
  steps; validation, the checkpoints' ``model`` and so inference use it.  King
  et al. use the raw weights (``ema_epochs: 0``); the measured effect is in the
  README (Skill).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bzpipe.config import TrainConfig


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at optimizer step ``k`` (0-based; for ``LambdaLR``)."""
    spe = max(1, int(steps_per_epoch))
    warm = cfg.warmup_epochs * spe
    total = cfg.epochs * spe

    def factor(k: int) -> float:
        if warm > 0 and k < warm:
            return (k + 1) / warm
        if cfg.lr_schedule == "step":
            return cfg.lr_gamma ** ((k // spe) // cfg.lr_step_epochs)
        progress = min(1.0, (k - warm) / max(1.0, total - warm))
        return cfg.lr_min_ratio + (1.0 - cfg.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def bn_momentum_warmup(model: nn.Module, momentum: float) -> list:
    """Bias-corrected running statistics for every batch-norm layer (see the module docstring).

    Registers forward pre-hooks that set each layer's momentum to
    ``max(momentum, 1 / (num_batches_tracked + 1))`` before a training-mode
    forward pass; returns the hook handles (``handle.remove()`` to undo).
    """
    def hook(mod: nn.modules.batchnorm._BatchNorm, _inputs: tuple) -> None:
        if mod.training and mod.track_running_stats and mod.num_batches_tracked is not None:
            mod.momentum = max(momentum, 1.0 / (float(mod.num_batches_tracked) + 1.0))

    return [m.register_forward_pre_hook(hook) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def weight_average(model: nn.Module, ema_epochs: float, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers (batch-norm statistics)
    with time constant ``ema_epochs`` epochs (per-step decay ``1 - 1 / (ema_epochs x steps)``),
    updated by ``avg.update_parameters(model)`` after each optimizer step (the first update copies
    the weights); None when ``ema_epochs`` is 0."""
    if ema_epochs <= 0:
        return None
    decay = 1.0 - 1.0 / max(1.0, ema_epochs * max(1, int(steps_per_epoch)))
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
