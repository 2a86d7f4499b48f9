"""Explainability of the blind-zone U-Net: saliency, drop-channel importance, encoder features.

All three run the model deterministically (``model.eval()``: dropout off,
batch norm on running statistics) on masked inputs from
:func:`bzpipe.masking.mask_blind_zone`; tensors are ``(batch, channel, row, col)``
with row 0 the surface.

* :func:`saliency`: vanilla gradients (Simonyan et al. 2014) of the mean
  predicted blind-zone reflectivity (normalized units) of each patch with
  respect to every input pixel and channel, as absolute values.
* :func:`drop_channel_importance`: blind-zone MAE (dBZ, no echo = -60 dBZ)
  with one ERA-5 channel "dropped", minus the MAE with all channels.  Two ways
  to drop (``method``):

  - ``"mean"``: the channel is replaced by its training mean, which is 0 in
    the standardized units of the dataset (the channel carries no information
    but stays in-distribution on average);
  - ``"shuffle"``: the channel is permuted between patches (permutation
    importance: realistic values, broken link to the reflectivity).  Needs at
    least 2 patches.

  A positive increase means the model uses that channel.
* :func:`encoder_feature_maps`: the output of every encoder level, caught with
  forward hooks, for one chosen case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from bzpipe.masking import mask_blind_zone
from bzpipe.metrics.pointwise import mae
from bzpipe.model.mc_dropout import mc_dropout_mode
from bzpipe.schema import norm_to_dbz


def saliency(model: nn.Module, inputs: Tensor, blind_rows: int) -> np.ndarray:
    """|d (mean blind-zone output of patch i) / d inputs[i]|: float32 ``(n, C_in, H, W)``.

    ``inputs``: masked model inputs ``(n, C_in, H, W)`` (mask channel included),
    on the model's device.  Samples are independent in eval mode, so one
    backward pass of the summed objective gives every per-sample gradient.
    """
    with mc_dropout_mode(model, active=False), torch.enable_grad():
        inp = inputs.detach().clone().requires_grad_(True)
        out = model(inp)                                     # (n, 1, H, W)
        objective = out[:, 0, :blind_rows, :].mean(dim=(1, 2)).sum()
        (grad,) = torch.autograd.grad(objective, inp)
    return grad.abs().float().cpu().numpy()


def _predict_bz_dbz(model: nn.Module, x: Tensor, blind_rows: int, ramp_rows: int) -> np.ndarray:
    """Deterministic prediction of the blind zone in dBZ ``(n, B, W)``."""
    inputs, _ = mask_blind_zone(x, blind_rows, ramp_rows)
    with mc_dropout_mode(model, active=False), torch.no_grad():
        out = model(inputs)                                  # (n, 1, H, W)
    return norm_to_dbz(out[:, 0, :blind_rows].float().cpu().numpy())


def drop_channel_importance(model: nn.Module, x: Tensor, blind_rows: int, channels: Sequence[str], *,
                            ramp_rows: int = 0, method: Literal["mean", "shuffle"] = "mean",
                            seed: int = 0) -> dict[str, dict[str, float]]:
    """Blind-zone MAE increase (dBZ) when each non-reflectivity channel is dropped.

    ``x``: unmasked normalized patches ``(n, C, H, W)`` on the model's device,
    channel order ``channels`` (channel 0 = reflectivity, never dropped).
    Returns ``{channel: {"mae": MAE with it dropped, "delta_mae": increase}}`` plus
    ``"none"`` with the reference MAE (delta 0).
    """
    if method not in ("mean", "shuffle"):
        raise ValueError(f"method must be 'mean' or 'shuffle', got {method!r}")
    if len(channels) != x.shape[1]:
        raise ValueError(f"{len(channels)} channel names for {x.shape[1]} channels")
    truth = norm_to_dbz(x[:, 0, :blind_rows].float().cpu().numpy())
    ref = float(mae(_predict_bz_dbz(model, x, blind_rows, ramp_rows), truth, axis=None))
    out = {"none": {"mae": ref, "delta_mae": 0.0}}
    gen = torch.Generator().manual_seed(seed)
    for c, name in enumerate(channels):
        if c == 0:
            continue
        xd = x.clone()
        if method == "mean":
            xd[:, c] = 0.0                                   # training mean in standardized units
        else:
            if x.shape[0] < 2:
                raise ValueError("shuffle importance needs at least 2 patches")
            perm = torch.randperm(x.shape[0], generator=gen)
            if torch.equal(perm, torch.arange(x.shape[0])):
                perm = perm.roll(1)                          # never the identity
            xd[:, c] = x[perm.to(x.device), c]
        m = float(mae(_predict_bz_dbz(model, xd, blind_rows, ramp_rows), truth, axis=None))
        out[name] = {"mae": m, "delta_mae": m - ref}
    return out


def encoder_feature_maps(model: nn.Module, inputs: Tensor,
                         modules: dict[str, nn.Module] | None = None) -> dict[str, np.ndarray]:
    """Outputs of the encoder levels for ``inputs`` ``(n, C_in, H, W)``: ``{name: (n, F, h, w)}``.

    ``modules``: which modules to hook (name -> module); default every block of
    ``model.encoder`` (UNet3Plus: ``encoder.0`` .. ``encoder.4``, ``F`` = filters[i],
    ``h, w = H / 2^i, W / 2^i``).  Hooks are removed afterwards.
    """
    if modules is None:
        enc = getattr(model, "encoder", None)
        if enc is None:
            raise ValueError("model has no .encoder; pass the modules to hook")
        modules = {f"encoder.{i}": m for i, m in enumerate(enc)}
    caught: dict[str, np.ndarray] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def fn(_mod: nn.Module, _inp: Any, out: Tensor) -> None:
            caught[name] = out.detach().float().cpu().numpy()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        with mc_dropout_mode(model, active=False), torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: caught[n] for n in modules if n in caught}


def explain(model: nn.Module, x: Tensor, blind_rows: int, channels: Sequence[str], *, ramp_rows: int = 0,
            drop: Literal["mean", "shuffle"] = "mean", seed: int = 0, case: int = 0,
            device: torch.device | str = "cpu", max_feature_maps: int = 8) -> dict[str, Any]:
    """Saliency, drop-channel importance and encoder features for the report.

    ``x``: unmasked normalized patches ``(n, C, H, W)``.  Returns numpy arrays:
    ``input_names`` (channels + "mask"), ``saliency_mean`` ``(C_in, H, W)`` (over
    patches), ``saliency_case`` ``(C_in, H, W)``, ``channel_share`` {name: share of
    the summed saliency}, ``drop_channel`` (see :func:`drop_channel_importance`;
    skipped for "shuffle" with one patch), ``features`` {level: ``(k, h, w)``,
    first ``max_feature_maps`` filters of case ``case``}, ``case_input`` ``(C, H, W)``.
    """
    dev = torch.device(device)
    x = x.to(dev).float()
    inputs, _ = mask_blind_zone(x, blind_rows, ramp_rows)
    sal = saliency(model, inputs, blind_rows)                      # (n, C_in, H, W)
    names = list(channels) + ["mask"]
    total = sal.sum(axis=(0, 2, 3))
    share = {n: float(v / total.sum()) if total.sum() > 0 else float("nan") for n, v in zip(names, total)}
    drop_res: dict[str, dict[str, float]] | None = None
    if drop == "mean" or x.shape[0] >= 2:
        drop_res = drop_channel_importance(model, x, blind_rows, channels, ramp_rows=ramp_rows,
                                           method=drop, seed=seed)
    case = int(min(max(case, 0), x.shape[0] - 1))
    feats = encoder_feature_maps(model, inputs[case:case + 1])
    return {"input_names": names, "saliency_mean": sal.mean(axis=0), "saliency_case": sal[case],
            "channel_share": share, "drop_channel": drop_res, "drop_method": drop,
            "features": {k: v[0, :max_feature_maps] for k, v in feats.items()},
            "case_input": x[case].cpu().numpy(), "blind_rows": blind_rows}
