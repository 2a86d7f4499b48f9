"""Monte Carlo dropout inference: N stochastic passes, batched.

Batch norm runs in eval mode (running statistics) while the dropout layers
stay in train mode, so every pass samples a different sub-network (Gal and
Ghahramani 2016; King et al. 2024 use N = 50).  The N passes are batched: the
input batch is repeated along dim 0 so one forward pass computes up to
``max_batch`` samples x passes at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from bzpipe.masking import merge_prediction


@contextlib.contextmanager
def mc_dropout_mode(model: nn.Module, active: bool = True) -> Iterator[nn.Module]:
    """Eval mode with dropout layers on (``active``) or off; restores the previous modes."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train(active)
    try:
        yield model
    finally:
        for m, was in modes.items():
            m.training = was


def quantiles_along0(samples: Tensor, qs: Sequence[float]) -> Tensor:
    """Linear-interpolation quantiles (numpy's default) along dim 0: Tensor[Q, ...].

    ``torch.quantile`` refuses inputs above 16 M elements; this sorts once.
    """
    n = samples.shape[0]
    if len(qs) == 0:
        return samples.new_empty((0, *samples.shape[1:]))
    srt = samples.sort(dim=0).values
    out = []
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} outside [0, 1]")
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out.append(srt[lo] + (srt[hi] - srt[lo]) * frac)
    return torch.stack(out)


#: CUDA kernels index tensors with 32-bit integers: no tensor may reach 2**31 elements
MAX_TENSOR_ELEMENTS = 2**31 - 1


def tensor_safe_batch(model: nn.Module, height: int, width: int) -> int:
    """The largest forward batch whose biggest activation stays under :data:`MAX_TENSOR_ELEMENTS`
    (no limit for models that do not report ``largest_activation(h, w)``)."""
    per_sample = getattr(model, "largest_activation", None)
    if per_sample is None:
        return 2**62
    return max(1, MAX_TENSOR_ELEMENTS // max(1, int(per_sample(int(height), int(width)))))


@torch.no_grad()
def mc_predict(model: nn.Module, inputs: Tensor, n_passes: int = 50,
               quantiles: Sequence[float] = (0.05, 0.5, 0.95), max_batch: int = 64,
               deterministic: bool = False, x: Tensor | None = None, mask: Tensor | None = None,
               autocast_dtype: torch.dtype | None = None,
               channels_last: bool | None = None) -> dict[str, Tensor]:
    """MC-dropout prediction statistics.

    Args:
        model: a UNet3Plus (any module mapping Tensor[B, Cin, H, W] -> Tensor[B, 1, H, W]).
        inputs: Tensor[B, Cin, H, W], the masked model inputs (:func:`bzpipe.masking.mask_blind_zone`),
            on the model's device.
        n_passes: stochastic forward passes per sample.
        quantiles: quantile levels in [0, 1].
        max_batch: most samples in one forward pass (passes x samples); sets the memory use.
            Lowered where the model's largest activation would reach 2**31 elements
            (:func:`tensor_safe_batch`), which CUDA kernels refuse.
        deterministic: dropout off (every pass identical, zero spread).
        x, mask: optional original Tensor[B, C, H, W] and mask Tensor[B, 1, H, W]; when given
            every pass is merged with the observation first (:func:`merge_prediction`), so the
            spread is exactly 0 outside the blind zone and tapers over the ramp.
        autocast_dtype: run the passes under autocast (e.g. torch.bfloat16 on GPU).
        channels_last: feed the passes in channels_last memory format (default: on CUDA), the
            format of a model loaded for CUDA (:func:`bzpipe.checkpoint.load_model`).

    Returns:
        dict with ``mean`` and ``std`` Tensor[B, 1, H, W] and ``quantiles`` Tensor[Q, B, 1, H, W]
        (float32, on the input's device); ``std`` is the population std over passes.
    """
    if n_passes < 1 or max_batch < 1:
        raise ValueError("n_passes and max_batch must be >= 1")
    if (x is None) != (mask is None):
        raise ValueError("give both x and mask to merge, or neither")
    if channels_last is None:
        channels_last = inputs.device.type == "cuda"
    B = inputs.shape[0]
    max_batch = min(max_batch, tensor_safe_batch(model, inputs.shape[-2], inputs.shape[-1]))
    # plan the forward passes: (sample start, sample stop, repeats) with (stop - start) * repeats <= max_batch
    per_pass = min(B, max_batch)
    reps = max(1, max_batch // per_pass)
    preds: list[list[Tensor]] = [[] for _ in range(B)]   # preds[b] -> list of Tensor[k, 1, H, W]
    with mc_dropout_mode(model, active=not deterministic):
        for start in range(0, B, per_pass):
            chunk = inputs[start:start + per_pass]                       # (b, Cin, H, W)
            b = chunk.shape[0]
            done = 0
            while done < n_passes:
                k = min(reps, n_passes - done)
                big = chunk.repeat(k, 1, 1, 1)                          # (k b, Cin, H, W), pass-major
                if channels_last:
                    big = big.contiguous(memory_format=torch.channels_last)
                ctx = (torch.autocast(device_type=inputs.device.type, dtype=autocast_dtype)
                       if autocast_dtype is not None else contextlib.nullcontext())
                with ctx:
                    out = model(big)                                    # (k b, 1, H, W)
                out = out.float().reshape(k, b, *out.shape[1:])         # (k, b, 1, H, W)
                if x is not None:
                    xs, ms = x[start:start + b], mask[start:start + b]  # type: ignore[index]
                    out = torch.stack([merge_prediction(o, xs, ms) for o in out])
                for j in range(b):
                    preds[start + j].append(out[:, j])
                done += k
    samples = torch.stack([torch.cat(p, 0) for p in preds], dim=1)      # (N, B, 1, H, W)
    return {"mean": samples.mean(0),
            "std": samples.std(0, unbiased=False),
            "quantiles": quantiles_along0(samples, quantiles)}
