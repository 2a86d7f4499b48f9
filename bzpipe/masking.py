"""Blind-zone masking and merging, shared by training, evaluation and CloudSat inference.

Tensors are ``(batch, channel, row, col)`` with row 0 = the surface (see
:mod:`bzpipe.schema`); channel 0 is normalized reflectivity, the other
channels (ERA-5 t, q, u, v) are available everywhere and are never masked.

The *mask* is a weight in [0, 1] per pixel: 1 in the blind zone (the lowest
``blind_rows`` rows), falling linearly to 0 over ``ramp_rows`` rows above it,
0 above.  Every pixel with a weight > 0 is hidden from the model (its
reflectivity set to 0, the neutral value) and predicted; the merge blends the
prediction into the observation with that weight, so the filled profile joins
the observed one smoothly and pixels with weight 0 are returned bit-identical.
The training and validation losses are taken under the same weight (:func:`masked_mae`, King et
al.'s ``blind_MAE``).  Two options of the training loss, both off by default and measured in the
README (Skill) as not worth their MAE: the pinball loss of another quantile (:func:`masked_pinball`,
``train.loss_quantile``) and a larger weight on pixels whose target has echo (:func:`echo_weighted`,
``train.echo_weight``); each moves the probability above which the L1-best fill of a pixel is echo.

Two deviations from King et al. (2024), whose preprocessing hides only where the mask is 1
(``floor(mask)``: the blind zone) and blanks every channel there, ERA-5 included (README, Skill):

* the ramp is hidden too: a training ramp of ``r`` rows is a hole ``blind_rows + r`` rows tall
  (theirs only blends and weights the loss over observed rows), which teaches the model blind zones
  taller than the dataset's (a CloudSat column's clutter depth varies with the surface);
  ``train.ramp_hidden: false`` trains with theirs (``hide_ramp=False``: the hole is the blind zone,
  the mask channel marks it alone, where theirs also carries the ramp's weights; the loss weighs the
  ramp either way);
* the ERA-5 channels stay visible in the blind zone: the state there (ice supersaturation, dry
  subcloud air) is what sets the processes the fill has to infer, and ERA-5 reports it everywhere
  (``train.blank_state`` blanks them as theirs do, inside the model:
  :func:`bzpipe.model.unet3plus.network_inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bzpipe.schema import NO_ECHO_MIDPOINT

#: value written into hidden reflectivity pixels (a neutral value; the mask channel says they are hidden)
HIDDEN_VALUE = 0.0


def _per_column(v: int | float | Tensor, batch: int, device: torch.device) -> Tensor:
    """int, Tensor[B] or Tensor[B, W] -> float Tensor broadcastable to (B, 1, H, W)."""
    t = torch.as_tensor(v, dtype=torch.float32, device=device)
    if t.ndim == 0:
        return t.reshape(1, 1, 1, 1)
    if t.ndim == 1:
        if t.shape[0] != batch:
            raise ValueError(f"per-sample rows need {batch} values, got {t.shape[0]}")
        return t.reshape(batch, 1, 1, 1)
    if t.ndim == 2:
        if t.shape[0] != batch:
            raise ValueError(f"per-column rows need shape ({batch}, W), got {tuple(t.shape)}")
        return t.reshape(batch, 1, 1, t.shape[1])
    raise ValueError(f"rows must be an int, Tensor[B] or Tensor[B, W], got shape {tuple(t.shape)}")


def blind_zone_weight(shape: tuple[int, int, int, int], blind_rows: int | Tensor,
                      ramp_rows: int | Tensor = 0, device: torch.device | str | None = None) -> Tensor:
    """The mask weight, Tensor[B, 1, H, W] float32 in [0, 1].

    Row ``r`` gets 1 for ``r < blind``; ``1 - (r - blind + 1) / (ramp + 1)`` for
    ``blind <= r < blind + ramp`` (so ``ramp / (ramp + 1)`` down to ``1 / (ramp + 1)``);
    0 above.  ``blind_rows`` and ``ramp_rows`` are an int, one value per sample
    (Tensor[B]) or one per column (Tensor[B, W], e.g. a terrain-dependent blind zone).
    """
    b, _, h, w = shape
    dev = torch.device(device) if device is not None else torch.device("cpu")
    blind = _per_column(blind_rows, b, dev)                     # (B|1, 1, 1, W|1)
    ramp = _per_column(ramp_rows, b, dev)
    if (blind < 0).any() or (ramp < 0).any():
        raise ValueError("blind_rows and ramp_rows must be >= 0")
    rows = torch.arange(h, dtype=torch.float32, device=dev).reshape(1, 1, h, 1)
    above = rows - blind + 1.0                                  # 1 at the first row above the blind zone
    wgt = torch.where(rows < blind, torch.ones((), device=dev),
                      torch.where(above <= ramp, 1.0 - above / (ramp + 1.0), torch.zeros((), device=dev)))
    return wgt.expand(b, 1, h, w).contiguous()                  # (B, 1, H, W)


def mask_blind_zone(x: Tensor, blind_rows: int | Tensor, ramp_rows: int | Tensor = 0,
                    hide_ramp: bool = True) -> tuple[Tensor, Tensor]:
    """Hide the blind zone (plus a ramp above it) from the model.

    Args:
        x: Tensor[B, C, H, W], normalized, channel 0 = reflectivity, row 0 = surface.
        blind_rows: rows of the blind zone (int, Tensor[B] or Tensor[B, W]).
        ramp_rows: rows of the blend ramp above it (int, Tensor[B] or Tensor[B, W]).
        hide_ramp: hide the ramp's rows too (bzpipe's default); False: King et al.'s ramp, whose rows
            stay visible (only the blind zone is hidden and marked in the mask channel) while the
            returned weight still covers them.

    Returns:
        inputs: Tensor[B, C + 1, H, W]: ``x`` with reflectivity set to 0 where it is
            hidden, and the mask of the hidden pixels appended as the last channel.
        mask: Tensor[B, 1, H, W] in [0, 1], 1 = to predict (the loss and merge weight, ramp included).
    """
    if x.ndim != 4:
        raise ValueError(f"expected (batch, channel, row, col), got shape {tuple(x.shape)}")
    mask = blind_zone_weight(tuple(x.shape), blind_rows, ramp_rows, device=x.device).to(x.dtype)
    shown = mask if hide_ramp else torch.floor(mask)                                 # the mask channel
    refl = torch.where(shown > 0, torch.full_like(x[:, :1], HIDDEN_VALUE), x[:, :1])  # (B, 1, H, W)
    inputs = torch.cat([refl, x[:, 1:], shown], dim=1)                               # (B, C + 1, H, W)
    return inputs, mask


def merge_prediction(pred: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """Blend a prediction into the observation: Tensor[B, 1, H, W].

    ``mask * pred + (1 - mask) * obs`` where ``0 < mask < 1`` (the ramp), ``pred``
    where ``mask == 1`` and ``obs`` itself (bit-identical, NaNs kept) where
    ``mask == 0``.  ``x`` is Tensor[B, C, H, W] (channel 0 = observed reflectivity)
    or Tensor[B, 1, H, W]; ``pred`` Tensor[B, 1, H, W] (any float dtype).
    """
    obs = x[:, :1]
    pred = pred.to(obs.dtype)
    m = mask.to(obs.dtype)
    blend = m * pred + (1 - m) * obs
    return torch.where(m <= 0, obs, torch.where(m >= 1, pred, blend))


# --------------------------------------------------------------------------- losses under the mask


def masked_abs_error(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sum(mask |pred - target|), sum(mask)): the two sums of :func:`masked_mae`, as 0-d tensors."""
    w = mask.float()
    return (w * (pred.float() - target.float()).abs()).sum(), w.sum()


def masked_mae(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mask-weighted MAE: sum(mask |pred - target|) / sum(mask); all Tensor[B, 1, H, W] (float32)."""
    num, den = masked_abs_error(pred, target, mask)
    return num / den.clamp_min(1e-12)


def masked_pinball(pred: Tensor, target: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Mask-weighted pinball (quantile) loss, scaled by 2 so that ``quantile`` 0.5 is :func:`masked_mae`
    exactly: ``2 max(q e, (q - 1) e)`` with ``e = target - pred``; its minimizer is the ``quantile``-th
    conditional quantile (the median at 0.5)."""
    if quantile == 0.5:
        return masked_mae(pred, target, mask)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"loss quantile must lie in (0, 1), not {quantile}")
    w = mask.float()
    e = target.float() - pred.float()
    loss = 2.0 * torch.maximum(quantile * e, (quantile - 1.0) * e)
    return (w * loss).sum() / w.sum().clamp_min(1e-12)


def echo_weighted(mask: Tensor, target: Tensor, echo_weight: float) -> Tensor:
    """The loss weights ``mask`` times ``echo_weight`` where the target has echo (normalized value above
    the no-echo midpoint), times 1 where it is clear: with an L1 loss the best fill of a pixel is then
    echo once its probability exceeds ``1 / (1 + echo_weight)`` (a weighted median), and a pixel that
    is surely echo keeps its median intensity."""
    if echo_weight == 1.0:
        return mask
    if not echo_weight > 0:
        raise ValueError(f"echo weight must be positive, not {echo_weight}")
    echo = target.float() > NO_ECHO_MIDPOINT
    return mask.float() * torch.where(echo, echo_weight, 1.0)


def supervision_loss(outputs: Sequence[Tensor], target: Tensor, mask: Tensor, quantile: float = 0.5,
                     echo_weight: float = 1.0) -> Tensor:
    """Equal-weight mean over the (deep-supervision) outputs of :func:`masked_mae` (``quantile`` 0.5,
    King et al.'s ``blind_MAE``) or of the :func:`masked_pinball` loss at another ``quantile``, with the
    weights of :func:`echo_weighted` (``echo_weight`` 1: the mask itself, as King et al.)."""
    w = echo_weighted(mask, target, echo_weight)
    return torch.stack([masked_pinball(o, target, w, quantile) for o in outputs]).mean()
