"""Run the inpainting model along a whole curtain: windows, batched MC-dropout, blending.

Also the per-process model cache: a Dask worker (or any process) loads a model
once and reuses it for every granule it processes (keyed by the checkpoint's
model id and the device).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bzpipe.distributed import pick_device
from bzpipe.infer.windows import Blender, window_starts
from bzpipe.masking import mask_blind_zone, merge_prediction
from bzpipe.model.mc_dropout import auto_mc_batch, mc_predict
from bzpipe.schema import NO_ECHO

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], tuple[nn.Module, dict[str, Any]]] = {}
#: models kept loaded per process (e.g. the current and the previous version during a rollout)
MAX_CACHED = 2


def cached_model(store_root: str, run_name: str, which: str = "best", device: str = "auto",
                 expected_id: str | None = None) -> tuple[nn.Module, dict[str, Any], str]:
    """``(model, meta, model_id)`` of a stored checkpoint, loaded at most once per process.

    The checkpoint's current id comes from its manifest entry (a small JSON read), so a
    retrained checkpoint under the same run name is picked up as a new model.
    ``expected_id`` (the id the caller planned with) guards against a checkpoint replaced
    between planning and running: a mismatch raises ``RuntimeError``.  At most
    :data:`MAX_CACHED` models stay loaded (least recently used dropped first).
    """
    from bzpipe.checkpoint import load_model, model_id
    from bzpipe.store import Store
    from bzpipe.store.layout import checkpoint_key

    dev = str(pick_device(device))
    store = Store(store_root)
    entry = store.entry(checkpoint_key(run_name, which))
    now = entry.sha256[:12] if entry is not None else None
    with _LOCK:
        if now is not None and (now, dev) in _MODELS:
            model, meta = _MODELS.pop((now, dev))
            _MODELS[(now, dev)] = (model, meta)                  # most recently used last
            mid = now
        else:
            model, meta = load_model(store, run_name, which=which, device=dev)
            mid = model_id(meta)
            model.eval()
            _MODELS[(mid, dev)] = (model, meta)
            while len(_MODELS) > MAX_CACHED:
                _MODELS.pop(next(iter(_MODELS)))
    if expected_id is not None and mid != expected_id:
        raise RuntimeError(f"checkpoint {run_name}/{which} under {store.root} is now model {mid}, "
                           f"not the planned {expected_id}")
    return model, meta, mid


def current_model_id(store_root: str, run_name: str, which: str = "best") -> str:
    """The model id of a stored checkpoint without loading it: its manifest checksum's first 12
    hex digits (what :func:`bzpipe.checkpoint.model_id` gives after loading)."""
    from bzpipe.store import Store
    from bzpipe.store.layout import checkpoint_key

    store = Store(store_root)
    entry = store.entry(checkpoint_key(run_name, which))
    if entry is not None and store.exists(entry.key):
        return entry.sha256[:12]
    return cached_model(store.root, run_name, which, "cpu")[2]


def clear_model_cache() -> None:
    """Forget every cached model (tests, or to free memory)."""
    with _LOCK:
        _MODELS.clear()


def predict_curtain(model: nn.Module, x: np.ndarray, *, width: int, overlap: int,
                    blind_rows: int | np.ndarray, n_passes: int,
                    quantiles: Sequence[float] = (0.05, 0.5, 0.95), batch_size: int = 64,
                    device: str | torch.device = "cpu", generator_seed: int | None = None,
                    active: np.ndarray | None = None, amp: bool | None = None, mc_path: str = "band",
                    band_rows: int | None = None) -> dict[str, np.ndarray]:
    """Fill the lowest ``blind_rows`` rows of a normalized curtain with MC-dropout statistics.

    Args:
        model: maps Tensor[B, C+1, H, W] (inputs + mask channel) -> Tensor[B, 1, H, W].
        x: (C, H, N) float32 normalized curtain, channel 0 reflectivity, row 0 = surface,
            N profiles along track.
        width: window (patch) width of the model, profiles; overlap: profiles shared by
            neighbouring windows.
        blind_rows: rows hidden and predicted: one number, or one per profile ((N,) int: the
            rows covering each profile's clutter-flagged bins, see
            :func:`bzpipe.infer.geometry.hidden_rows`).
        n_passes: MC-dropout passes; quantiles: levels in [0, 1].
        batch_size: most samples (windows x passes) in one forward pass; 0: automatic, filling the
            device (:func:`bzpipe.model.mc_dropout.auto_mc_batch`; 64 on CPU).
        device: where the model runs.
        generator_seed: seeds torch's RNG for reproducible dropout masks.
        active: (N,) bool, profiles worth predicting (e.g. valid geometry); windows without
            any are skipped and their columns keep the observation (std 0).
        amp: bfloat16 autocast for the forward passes; default on for CUDA devices with bf16.
        mc_path: ``band`` (default): the exact band-limited decoder (:mod:`bzpipe.model.band`),
            ~4x less work per pass; ``full``: the whole forward pass (for checking).
        band_rows: rows the band-limited decoder is built for (a configured maximum hidden
            depth); default the deepest hidden column of the curtain.  A deeper column raises
            :class:`bzpipe.model.band.BandTooNarrowError`.

    Returns:
        ``mean`` (H, N): the observation above the blind zone (bit-identical) and the MC
        mean inside it; ``std`` (H, N) (0 above the blind zone); ``quantiles`` (Q, H, N);
        all in normalized units.  Overlaps are blended with cosine weights.
    """
    c, h, n = x.shape
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    dev = torch.device(device)
    if amp is None:
        amp = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.bfloat16 if amp else None
    xp = np.asarray(x, np.float32)
    if n < width:  # pad a short track with "no echo" (reflectivity) / edge values (ERA-5)
        pad = np.repeat(xp[:, :, -1:], width - n, axis=2)
        pad[0] = NO_ECHO
        xp = np.concatenate([xp, pad], axis=2)
    hidden = np.broadcast_to(np.asarray(blind_rows, dtype=np.int64), (n,))
    hidden = np.concatenate([hidden, np.full(max(0, width - n), int(hidden.max(initial=0)), np.int64)])
    if mc_path not in ("band", "full"):
        raise ValueError(f"mc_path must be 'band' or 'full', got {mc_path!r}")
    band = None if mc_path == "full" else int(band_rows if band_rows is not None
                                              else max(1, hidden.max(initial=1)))
    starts = window_starts(n, width, overlap)
    blender = Blender(n, width, starts)
    todo = np.arange(len(starts))
    if active is not None:
        act = np.concatenate([np.asarray(active, bool), np.zeros(max(0, width - n), bool)])
        todo = np.array([i for i, s in enumerate(starts) if act[s:s + width].any()], dtype=np.int64)
    if batch_size <= 0 and len(todo):                   # fill the device: measured on the first window
        s0 = int(starts[todo[0]])
        probe = torch.from_numpy(np.ascontiguousarray(xp[None, :, :, s0:s0 + width])).to(dev)
        rows0 = torch.from_numpy(np.ascontiguousarray(hidden[None, s0:s0 + width])).to(dev)
        batch_size = auto_mc_batch(model, mask_blind_zone(probe, rows0, 0)[0], band, autocast)
    batch_size = max(1, batch_size)
    per_call = max(1, batch_size // max(1, min(n_passes, batch_size)))
    for i0 in range(0, len(todo), per_call):
        idx = [int(i) for i in todo[i0:i0 + per_call]]
        xb = torch.from_numpy(np.stack([xp[:, :, s:s + width] for s in starts[idx]])).to(dev)  # (b, C, H, W)
        rows = torch.from_numpy(np.stack([hidden[s:s + width] for s in starts[idx]])).to(dev)  # (b, W)
        inputs, mask = mask_blind_zone(xb, rows, 0)                                           # (b, C+1, H, W)
        r = mc_predict(model, inputs, n_passes=n_passes, quantiles=quantiles, max_batch=batch_size,
                       x=xb, mask=mask, autocast_dtype=autocast, band_rows=band)
        mean = r["mean"][:, 0].cpu().numpy()                   # (b, H, W)
        std = r["std"][:, 0].cpu().numpy()                     # (b, H, W)
        q = r["quantiles"][:, :, 0].cpu().numpy()              # (Q, b, H, W)
        for j, i in enumerate(idx):
            blender.add(i, {"mean": mean[j], "quantiles": q[:, j]}, std_of="mean", std=std[j])
    obs_np = np.ascontiguousarray(xp[:1, :, :n])                                           # (1, H, N)
    if len(todo) == 0:
        return {"mean": obs_np[0].copy(), "std": np.zeros((h, n), np.float32),
                "quantiles": np.repeat(obs_np, len(quantiles), axis=0)}
    res = blender.result(std_of="mean", allow_gaps=True)
    gap = ~blender.covered()                                                               # (N,)
    res["mean"][:, gap] = obs_np[0][:, gap]
    res["std"][:, gap] = 0.0
    res["quantiles"][:, :, gap] = obs_np[:, :, gap]
    # re-merge so that everything above the blind zone is the observation, bit for bit
    obs = torch.from_numpy(obs_np[None])                                                   # (1, 1, H, N)
    _, mask = mask_blind_zone(obs, torch.from_numpy(np.ascontiguousarray(hidden[None, :n])), 0)
    mean = merge_prediction(torch.from_numpy(res["mean"][None, None].astype(np.float32)), obs, mask)
    outside = mask[0, 0].numpy() <= 0
    std = np.where(outside, 0.0, res["std"]).astype(np.float32)
    qs = np.where(outside[None], xp[0:1, :, :n], res["quantiles"]).astype(np.float32)
    return {"mean": mean[0, 0].numpy(), "std": std, "quantiles": qs}
