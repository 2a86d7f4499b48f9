"""A torch Dataset over the Zarr patch dataset (layout: :mod:`bzpipe.schema`).

Each item is one patch, Tensor[C, H, W] float32 (normalized, NOT masked;
channel 0 = reflectivity, row 0 = surface).  Masking happens in the training /
evaluation loop (:mod:`bzpipe.masking`) so the random ramp can change per batch.

The split's ``x`` array is opened lazily in each process (DataLoader workers
and DDP ranks open their own handle).  Small splits are read into memory once
(``cache``); large ones are read per batch through ``__getitems__``, which
fetches each needed Zarr chunk once per batch rather than once per sample.

Random access: datasets written by :mod:`bzpipe.dataset.write` store ``x`` as
Zarr v3 shards of ``chunk_samples`` samples whose inner chunks hold one sample
each, so a shuffled batch reads (and decompresses) only its own samples, one
byte range each, instead of whole multi-sample chunks (``samples_per_chunk``
says which layout a dataset has).  :func:`make_loader` builds the DataLoader:
worker processes (auto: 4 per GPU process, none on CPU, where they would take
cores from the training step), pinned memory and non-blocking copies on CUDA,
persistent workers with prefetching.  ``benchmarks/bench_loader.py`` measures
loader throughput against the training step rate.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Sampler

from bzpipe.dataset.reader import open_dataset
from bzpipe.errors import StoreError
from bzpipe.schema import CHANNELS
from bzpipe.store import Store

ChannelSet = Literal["3+_1", "3+_5"]

#: channels each model variant reads (King et al. 2024: "3+_1" reflectivity only, "3+_5" + ERA-5 t, q, u, v)
CHANNEL_SETS: dict[str, tuple[str, ...]] = {"3+_1": CHANNELS[:1], "3+_5": CHANNELS}

#: splits up to this size (bytes, selected channels) are read into memory once by default
CACHE_LIMIT_BYTES = 2**30


class PatchDataset(Dataset):
    """Patches of one split: ``ds[i]`` -> Tensor[C, H, W] float32.

    Args:
        store_root_or_uri: store root (local folder or s3://) or a :class:`Store`.
        version_or_uri: dataset version, or the full URI of a ``.zarr`` dataset.
        split: ``train``, ``val`` or ``test`` (a group of the dataset).
        channels: ``"3+_1"`` (reflectivity) or ``"3+_5"`` (+ t, q, u, v), or an explicit list of names.
        augment: random time flips (the ``col`` axis reversed with probability 1/2).
        state_noise: standard deviation (normalized units) of a random error added to every ERA-5
            channel of a sample, constant in time and linear in height (:func:`perturb_state`);
            0: none.  A training augmentation: ERA-5 is not the column over the radar.
        cache: read the whole split into memory (None: when at most 1 GiB).
        normalization: a model's ``normalization`` (its checkpoint meta): the patches are returned
            in it, mapped from the dataset's own (:func:`bzpipe.dataset.normalization.renormalization`;
            a model trained on another dataset version or winter sees these patches as its training
            data were normalized).  None: the dataset's own.

    Attributes: ``uri``, ``channel_names``, ``channel_index``, ``blind_zone_rows``,
    ``normalization`` (the dataset's own), ``renormalized`` (whether patches are mapped to another),
    ``attrs`` (decoded root attrs), ``shape`` (N, C, H, W).
    """

    def __init__(self, store_root_or_uri: str | Store, version_or_uri: str, split: str,
                 channels: ChannelSet | list[str] | tuple[str, ...] = "3+_5", augment: bool = False,
                 cache: bool | None = None, require_complete: bool = True, state_noise: float = 0.0,
                 normalization: dict[str, Any] | None = None) -> None:
        opened = open_dataset(store_root_or_uri, version_or_uri, require_complete=require_complete)
        self.uri, self.storage_options = opened.uri, opened.storage_options
        self.split = split
        self.augment = augment
        self.state_noise = float(state_noise)
        self.attrs = opened.attrs
        grp = opened.group(split)
        if "x" not in set(grp.array_keys()):
            raise StoreError(f"{self.uri}/{split}: variable 'x' missing")
        arr = grp["x"]
        if arr.ndim != 4:
            raise StoreError(f"{self.uri}/{split}/x: expected (sample, channel, row, col), got {arr.shape}")
        stored = ([str(c) for c in grp["channel"][:]] if "channel" in set(grp.array_keys())
                  else list(self.attrs.get("channels", CHANNELS)))
        wanted = CHANNEL_SETS[channels] if isinstance(channels, str) else tuple(channels)
        missing = [c for c in wanted if c not in stored]
        if missing:
            raise StoreError(f"{self.uri}/{split}: channels {missing} not in the dataset ({stored})")
        self.channel_names = tuple(wanted)
        self.channel_index = [stored.index(c) for c in wanted]
        n, _, h, w = arr.shape
        self.shape = (int(n), len(wanted), int(h), int(w))
        self.blind_zone_rows = int(self.attrs.get("blind_zone_rows", 0))
        self.normalization = self.attrs.get("normalization", {})
        self._affine: tuple[np.ndarray, np.ndarray] | None = None
        if normalization is not None:
            from bzpipe.dataset.normalization import renormalization

            m = renormalization(self.normalization, normalization, self.channel_names, where=self.uri)
            if m is not None:
                self._affine = (m[0].astype(np.float32)[None, :, None, None],
                                m[1].astype(np.float32)[None, :, None, None])
        self.renormalized = self._affine is not None
        nbytes = int(np.prod(self.shape)) * 4
        self._cache_on = cache if cache is not None else nbytes <= CACHE_LIMIT_BYTES
        self.samples_per_chunk = int(arr.chunks[0])      # inner chunks of a sharded array: 1
        self._arr: zarr.Array | None = None
        self._data: np.ndarray | None = None

    # ------------------------------------------------------------------ reading
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arr"] = None  # every worker / rank opens its own handle
        return state

    def _array(self) -> zarr.Array:
        if self._arr is None:
            self._arr = open_dataset(None, self.uri, require_complete=False).group(self.split)["x"]
        return self._arr

    def preload(self) -> None:
        """Read a cached split into memory now (before DataLoader workers fork, so they share it)."""
        if self._cache_on and self._data is None:
            self._data = np.ascontiguousarray(self._select(self._array()[...]), dtype=np.float32)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """float32 (len(idx), C, H, W) for sample indices ``idx`` (any order)."""
        if self._cache_on:
            self.preload()
            return self._data[idx]  # type: ignore[index]
        order = np.argsort(idx)
        uniq, inv = np.unique(idx[order], return_inverse=True)
        arr = self._array()
        if self.samples_per_chunk == 1:   # one sample per (inner) chunk: read exactly those, one by one
            block = self._select(np.stack([arr[int(i)] for i in uniq]))   # (zarr's orthogonal selection
        else:                                                              #  re-decodes shard indexes)
            block = self._select(arr.get_orthogonal_selection((uniq, slice(None))))
        out = np.empty((len(idx),) + block.shape[1:], np.float32)
        out[order] = block[inv]
        return out

    def _select(self, a: np.ndarray) -> np.ndarray:
        if self.channel_index == list(range(a.shape[1])):
            out = np.asarray(a, dtype=np.float32)
        else:
            out = np.asarray(a[:, self.channel_index], dtype=np.float32)
        if self._affine is not None:
            out = out * self._affine[0] + self._affine[1]
        return out

    def _finish(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))          # (b, C, H, W)
        if self.augment:
            flip = torch.rand(t.shape[0]) < 0.5                 # random time flips
            if flip.any():
                t[flip] = t[flip].flip(-1)
        if self.state_noise > 0:
            perturb_state(t, [c != "reflectivity" for c in self.channel_names], self.state_noise)
        return t

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._finish(self._read(np.array([i % len(self)])))[0]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        """Batched read used by DataLoader (one Zarr read per batch)."""
        batch = self._finish(self._read(np.asarray(indices, dtype=np.int64)))
        return list(batch.unbind(0))


def perturb_state(batch: torch.Tensor, state: list[bool], sigma: float) -> torch.Tensor:
    """Add to each sample's state channels (``state[c]`` True) of ``batch`` Tensor[B, C, H, W], in place,
    an error ``a + b (row / (H - 1) - 1/2)`` with ``a, b ~ N(0, sigma^2)`` drawn per sample and
    channel: a bias and a lapse-rate / shear error, constant over the patch's minutes, as a
    reanalysis misses the column over one site.  Returns ``batch``."""
    idx = [c for c, s in enumerate(state) if s]
    if not idx:
        return batch
    b, _, h, _ = batch.shape
    a, slope = torch.randn(2, b, len(idx), 1, 1) * sigma
    rows = torch.linspace(-0.5, 0.5, h).view(1, 1, h, 1)
    batch[:, idx] += a + slope * rows
    return batch


def forget_parent_exit_calls(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: drop the thread-exit callbacks a forked worker inherits.

    Prefect (3.8) registers one per log / event service of the parent, and its fork handler resets
    those services in the child, so at the worker's exit the callback fails (an assertion in
    ``QueueService._drain``).  The worker then exits with code 1, and the parent's DataLoader reports
    "worker exited unexpectedly" when training in a flow shuts its workers down.  A worker has none of
    its parent's threads, so none of their exit calls are its own."""
    import threading

    getattr(threading, "_threading_atexits", []).clear()


#: DataLoader worker processes per training process on a GPU when not configured
GPU_LOADER_WORKERS = 4


def loader_workers(requested: int | None, device: torch.device | str) -> int:
    """Worker processes for a DataLoader: ``requested``, or auto (None): :data:`GPU_LOADER_WORKERS` on
    CUDA (bounded by the CPUs this process may use), 0 on CPU (the training step needs every core)."""
    if requested is not None:
        return int(requested)
    if torch.device(device).type != "cuda":
        return 0
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(GPU_LOADER_WORKERS, cpus - 1))


def make_loader(dataset: Dataset, batch_size: int, device: torch.device | str, *,
                num_workers: int | None = None, sampler: Sampler | None = None, shuffle: bool = False,
                drop_last: bool = False, prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader over a :class:`PatchDataset` (or a ``Subset`` of one) for training on ``device``.

    Batches come from ``__getitems__`` (one Zarr read per batch); pinned host memory on CUDA so the
    ``.to(device, non_blocking=True)`` copy overlaps the step; with workers, each keeps
    ``prefetch_factor`` batches in flight and lives across epochs.  A cached split is read once in
    this process before the workers fork, so they share it instead of each reading a copy.
    """
    workers = loader_workers(num_workers, device)
    base = getattr(dataset, "dataset", dataset)           # a Subset's dataset
    if workers > 0 and isinstance(base, PatchDataset):
        base.preload()
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=prefetch_factor,
                  worker_init_fn=forget_parent_exit_calls)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      shuffle=shuffle if sampler is None else False, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", drop_last=drop_last, **kw)
