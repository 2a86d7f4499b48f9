"""Monte Carlo dropout inference: N stochastic passes, batched.

Batch norm runs in eval mode (running statistics) while the dropout layers
stay in train mode, so every pass samples a different sub-network (Gal and
Ghahramani 2016; King et al. 2024 use N = 50).  The N passes are batched: the
input batch is repeated along dim 0 so one forward pass computes up to
``max_batch`` samples x passes at once (:func:`auto_mc_batch` fills a GPU).

Two paths compute the passes:

* ``band_rows`` given (what evaluation and CloudSat inference use): the exact
  band-limited decoder of :mod:`bzpipe.model.band`, which computes only the rows
  a fill needs and shares the work before the first dropout across passes
  (~4.7x fewer FLOPs per pass at 128 x 128 with 16 hidden rows);
* otherwise the full forward pass of the model (kept for checking, and for
  models other than :class:`~bzpipe.model.unet3plus.UNet3Plus`).

Either way no tensor reaches 2**31 elements (CUDA's 32-bit indexing limit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from bzpipe.masking import merge_prediction
from bzpipe.model.mc_stats import aggregate_passes  # per pass in dBZ, as King et al.
from bzpipe.model.unet3plus import UNet3Plus, channels_last_faster

#: CUDA kernels index tensors with 32-bit integers: no tensor may reach 2**31 elements
MAX_TENSOR_ELEMENTS = 2**31 - 1


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


def tensor_safe_batch(model: nn.Module, height: int, width: int) -> int:
    """The largest forward batch whose biggest activation stays under :data:`MAX_TENSOR_ELEMENTS`
    (no limit for models that do not report ``largest_activation(h, w)``)."""
    per_sample = getattr(model, "largest_activation", None)
    if per_sample is None:
        return 2**62
    return max(1, MAX_TENSOR_ELEMENTS // max(1, int(per_sample(int(height), int(width)))))


#: share of the free CUDA memory that an automatic MC batch (:func:`auto_mc_batch`) may fill
AUTO_BATCH_MEMORY_FRACTION = 0.6
#: samples (passes x windows) per forward on CPU when the batch is automatic
CPU_AUTO_BATCH = 64


def auto_mc_batch(model: nn.Module, window: Tensor, band_rows: int | None = None,
                  autocast_dtype: torch.dtype | None = None, probe: int = 8) -> int:
    """Samples (passes x windows) per forward pass that fill the device running ``window``
    Tensor[1, Cin, H, W].

    On CUDA: one probe of ``probe`` passes measures the peak memory per sample (activations,
    masks, the stacked passes); the batch then fills :data:`AUTO_BATCH_MEMORY_FRACTION` of the free
    memory, never above the 2**31-element limit.  Elsewhere :data:`CPU_AUTO_BATCH`.
    """
    dev = window.device
    if dev.type != "cuda":
        return CPU_AUTO_BATCH
    h, w = window.shape[-2:]
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    mc_predict(model, window[:1], n_passes=probe, quantiles=(), max_batch=probe, band_rows=band_rows,
               autocast_dtype=autocast_dtype)
    torch.cuda.synchronize(dev)
    per_sample = max(1.0, (torch.cuda.max_memory_allocated(dev) - base) / probe)
    free, _ = torch.cuda.mem_get_info(dev)
    if band_rows is not None and isinstance(model, UNet3Plus):
        from bzpipe.model.band import band_decoder

        guard = MAX_TENSOR_ELEMENTS // band_decoder(model, h, w, int(band_rows)).largest_activation()
    else:
        guard = tensor_safe_batch(model, h, w)
    return int(max(1, min(guard, AUTO_BATCH_MEMORY_FRACTION * free // per_sample)))


def _full_passes(model: nn.Module, chunk: Tensor, k: int, channels_last: bool,
                 autocast_dtype: torch.dtype | None) -> Tensor:
    """K full forward passes of the windows ``chunk`` Tensor[b, Cin, H, W]: Tensor[k, b, out, H, W]
    float32."""
    b = chunk.shape[0]
    big = chunk.repeat(k, 1, 1, 1)                                      # (k b, Cin, H, W), pass-major
    if channels_last:
        big = big.contiguous(memory_format=torch.channels_last)
    ctx = (torch.autocast(device_type=chunk.device.type, dtype=autocast_dtype)
           if autocast_dtype is not None else contextlib.nullcontext())
    with ctx:
        out = model(big)                                                # (k b, out, H, W)
    return out.float().reshape(k, b, *out.shape[1:])


def _band_to_full_height(out: Tensor, obs: Tensor, mask: Tensor | None) -> Tensor:
    """Band passes Tensor[k, b, 1, rows, W] -> Tensor[k, b, 1, H, W]: rows at and above the band (never
    hidden) are the observation ``obs`` Tensor[b, 1, H, W], bit for bit; with ``mask`` the band is
    merged with the observation too (:func:`merge_prediction`)."""
    rows = out.shape[-2]
    full = obs.float().unsqueeze(0).expand(out.shape[0], *obs.shape).clone()
    if mask is None:
        full[..., :rows, :] = out
    else:
        full[..., :rows, :] = torch.stack([merge_prediction(o, obs[:, :, :rows], mask[:, :, :rows])
                                           for o in out])
    return full


@torch.no_grad()
def mc_predict(model: nn.Module, inputs: Tensor, n_passes: int = 50,
               quantiles: Sequence[float] = (0.05, 0.5, 0.95), max_batch: int = 64,
               deterministic: bool = False, x: Tensor | None = None, mask: Tensor | None = None,
               autocast_dtype: torch.dtype | None = None,
               channels_last: bool | None = None, band_rows: int | None = None) -> dict[str, Tensor]:
    """MC-dropout prediction statistics.

    Args:
        model: a UNet3Plus (any module mapping Tensor[B, Cin, H, W] -> Tensor[B, 1, H, W]).
        inputs: Tensor[B, Cin, H, W], the masked model inputs (:func:`bzpipe.masking.mask_blind_zone`),
            on the model's device.
        n_passes: stochastic forward passes per sample.
        quantiles: quantile levels in [0, 1].
        max_batch: most samples in one forward pass (passes x samples); sets the memory use.
            Lowered where the largest activation would reach 2**31 elements
            (:func:`tensor_safe_batch`, :meth:`bzpipe.model.band.BandDecoder.largest_activation`),
            which CUDA kernels refuse.
        deterministic: dropout off (every pass identical, zero spread).
        x, mask: optional original Tensor[B, C, H, W] and mask Tensor[B, 1, H, W]; when given
            every pass is merged with the observation first (:func:`merge_prediction`), so the
            spread is exactly 0 outside the blind zone and tapers over the ramp.
        autocast_dtype: reduced-precision inference (torch.bfloat16 / torch.float16): autocast for
            the full pass, the compute dtype of the band-limited one.
        channels_last: NHWC activations (default: on, the faster format on CUDA and on CPU), the
            format of a model loaded for CUDA (:func:`bzpipe.checkpoint.load_model`).
        band_rows: the band-limited path (:mod:`bzpipe.model.band`) for hidden depths up to this
            many rows (per column: the mask channel may hide fewer); exact, ~4x less work per pass.
            Only the lowest ``band_rows`` rows are predicted: above them (never hidden) every pass
            is the observation (``x``, or the reflectivity channel of ``inputs``).  A pixel hidden at
            or above ``band_rows`` raises :class:`bzpipe.model.band.BandTooNarrowError`.  None, or a
            model other than a UNet3Plus (test stand-ins): the full pass.

    Returns:
        :func:`bzpipe.model.mc_stats.aggregate_passes` of the passes (float32, on the input's
        device): per-pass dBZ statistics ``mean_dbz``, ``std_dbz`` (population std over passes, dBZ),
        ``quantiles_dbz``, ``echo_fraction``, and the same in normalized units ``mean`` and ``std``
        Tensor[B, 1, H, W] and ``quantiles`` Tensor[Q, B, 1, H, W] (no echo = -1; ``std * 60`` = dBZ).
    """
    if n_passes < 1 or max_batch < 1:
        raise ValueError("n_passes and max_batch must be >= 1")
    if (x is None) != (mask is None):
        raise ValueError("give both x and mask to merge, or neither")
    if channels_last is None:
        channels_last = channels_last_faster(inputs.device)
    B, H, W = inputs.shape[0], inputs.shape[-2], inputs.shape[-1]
    band = None
    if band_rows is not None and isinstance(model, UNet3Plus):
        from bzpipe.model.band import band_decoder

        band = band_decoder(model, H, W, int(band_rows), dtype=autocast_dtype or torch.float32,
                            channels_last=channels_last, dropout=not deterministic)
        band.check_hidden(inputs)
        if mask is not None:
            band.check_hidden(mask)
        max_batch = min(max_batch, max(1, MAX_TENSOR_ELEMENTS // band.largest_activation()))
    else:
        max_batch = min(max_batch, tensor_safe_batch(model, H, W))
    # plan the forward passes: (sample start, sample stop, repeats) with (stop - start) * repeats <= max_batch
    per_pass = min(B, max_batch)
    reps = max(1, max_batch // per_pass)
    preds: list[list[Tensor]] = [[] for _ in range(B)]   # preds[b] -> list of Tensor[k, 1, H, W]
    with mc_dropout_mode(model, active=not deterministic):
        for start in range(0, B, per_pass):
            chunk = inputs[start:start + per_pass]                       # (b, Cin, H, W)
            b = chunk.shape[0]
            xs = x[start:start + b] if x is not None else None
            ms = mask[start:start + b] if mask is not None else None
            shared = band.shared(chunk) if band is not None else None   # work before the first dropout
            done = 0
            while done < n_passes:
                k = min(reps, n_passes - done)
                if band is not None:
                    obs = xs[:, :1] if xs is not None else chunk[:, :1]  # unhidden rows: the observation
                    out = _band_to_full_height(band.passes(shared, k), obs, ms)  # (k, b, 1, H, W)
                else:
                    out = _full_passes(model, chunk, k, channels_last, autocast_dtype)
                    if xs is not None and ms is not None:
                        out = torch.stack([merge_prediction(o, xs, ms) for o in out])
                for j in range(b):
                    preds[start + j].append(out[:, j])
                done += k
    samples = torch.stack([torch.cat(p, 0) for p in preds], dim=1)      # (N, B, 1, H, W)
    return aggregate_passes(samples, quantiles)
