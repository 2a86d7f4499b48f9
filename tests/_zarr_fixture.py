"""Test support: a tiny Zarr dataset in the layout of :mod:`bzpipe.schema`.

``write_tiny_dataset(root)`` writes ``datasets/<version>.zarr`` under a store
root with groups ``train``, ``val``, ``test``, each holding ``x``
(sample, channel, row, col) float32 plus the per-sample coordinates, the root
attrs (normalization, blind_zone_rows, channels, config, provenance) and the
store manifest entry that marks it complete.

The reflectivity is physically shaped so the blind zone is predictable from
above: each sample has a cloud layer whose top varies smoothly in time and
whose reflectivity increases downward (falling snow), reaching the surface;
t, q, u, v are smooth standardized profiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from bzpipe.checksums import sha256_json
from bzpipe.schema import CHANNELS, NO_ECHO, default_normalization
from bzpipe.store import Store
from bzpipe.store.layout import dataset_key

SPLITS = ("train", "val", "test")


def tiny_patches(n: int, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (n, 5, rows, cols), normalized like the real dataset (reflectivity in [-0.5, 1] or -1)."""
    r = np.arange(rows, dtype=np.float32)[:, None] / rows              # (rows, 1) height fraction
    c = np.arange(cols, dtype=np.float32)[None, :] / cols              # (1, cols) time fraction
    x = np.empty((n, len(CHANNELS), rows, cols), np.float32)
    for i in range(n):
        top = rng.uniform(0.3, 0.8) + 0.1 * np.sin(2 * np.pi * (c * rng.uniform(0.5, 2) + rng.uniform()))
        strength = rng.uniform(0.2, 0.9)
        refl = strength - 0.8 * r + 0.05 * rng.standard_normal((rows, cols))   # brighter near the surface
        refl = np.clip(refl, -0.5, 1.0)
        x[i, 0] = np.where(r < top, refl, NO_ECHO)
        if rng.uniform() < 0.15:                                        # some clear-sky patches
            x[i, 0] = NO_ECHO
        for k in range(1, len(CHANNELS)):
            x[i, k] = (rng.standard_normal() + (k - 2.5) * (r - 0.5)
                       + 0.1 * np.sin(2 * np.pi * c + k)).astype(np.float32)
    return x


def write_tiny_dataset(root: str | Path, *, version: str = "tiny", n: int | dict[str, int] = 8,
                       rows: int = 32, cols: int = 32, blind_zone_rows: int = 4, seed: int = 0,
                       blind_fill: dict[str, float] | None = None, chunk: int = 4) -> str:
    """Write a tiny dataset under the store ``root``; return its store URI.

    Args:
        n: samples per split (int: the same for all three; dict: per split, missing -> 0 skipped).
        blind_fill: optional ``{split: value}``: the reflectivity of the blind zone of that split
            is overwritten with ``value`` (to build deliberately inconsistent splits in tests).
        chunk: samples per Zarr chunk.
    """
    store = Store(root)
    key = dataset_key(version)
    uri = store.uri(key)
    counts = {s: (n if isinstance(n, int) else n.get(s, 0)) for s in SPLITS}
    rng = np.random.default_rng(seed)
    height = (np.arange(rows) + 0.5) * (10000.0 / rows)
    sites = np.array(["nsa", "oli"])
    seasons = np.array(["DJF", "MAM", "JJA", "SON"])
    first = True
    for split in SPLITS:
        k = counts[split]
        if k <= 0:
            continue
        x = tiny_patches(k, rows, cols, rng)
        if blind_fill and split in blind_fill:
            x[:, 0, :blind_zone_rows, :] = blind_fill[split]
        t0 = pd.Timestamp("2019-01-01") + pd.to_timedelta(np.arange(k) * 3600, unit="s")
        ds = xr.Dataset(
            {"x": (("sample", "channel", "row", "col"), x)},
            coords={"channel": np.array(CHANNELS, dtype=object), "height": ("row", height.astype(np.float32)),
                    "site": ("sample", sites[np.arange(k) % 2].astype(object)),
                    "time_start": ("sample", t0.values),
                    "season": ("sample", seasons[np.arange(k) % 4].astype(object))})
        ds["x"].encoding["chunks"] = (chunk, len(CHANNELS), rows, cols)
        ds.to_zarr(uri, group=split, mode="w" if first else "a", consolidated=False)
        first = False
    norm = default_normalization()
    norm.update({v: {"mean": 0.0, "std": 1.0} for v in CHANNELS[1:]})
    attrs = {"normalization": json.dumps(norm), "blind_zone_rows": blind_zone_rows,
             "channels": list(CHANNELS), "config": json.dumps({"type": "BuildConfig", "values": {
                 "grid": {"n_heights": rows, "top_m": rows * 78.125, "time_step_s": 4.0},
                 "patch": {"width": cols, "blind_zone_rows": blind_zone_rows}}}),
             "provenance": json.dumps({"code_version": "test", "inputs": {}})}
    zarr.open_group(uri, mode="r+").attrs.update(attrs)
    store.record(key, sha256=sha256_json({"counts": counts, "seed": seed, "rows": rows, "cols": cols}),
                 size=sum(counts.values()), producer={"test": "write_tiny_dataset"})
    return uri


def write_restandardized_copy(root: str | Path, version: str, copy: str, mean: dict[str, float],
                              std: dict[str, float]) -> str:
    """A copy of dataset ``version`` as ``copy`` whose ERA-5 channels hold the same physical values
    standardized with other statistics (as another build's training split would give): the copy's
    channel ``c`` is ``(value - mean[c]) / std[c]`` where ``value`` is the original's physical value.
    Returns the copy's store URI."""
    store = Store(root)
    src = zarr.open_group(store.uri(dataset_key(version)), mode="r")
    norm = json.loads(src.attrs["normalization"])
    uri = store.uri(dataset_key(copy))
    first = True
    for split in SPLITS:
        if split not in src:
            continue
        ds = xr.open_zarr(store.uri(dataset_key(version)), group=split, consolidated=False).load()
        x = ds["x"].values.copy()
        for k, c in enumerate(CHANNELS):
            if c in mean:
                value = x[:, k] * norm[c]["std"] + norm[c]["mean"]
                x[:, k] = (value - mean[c]) / std[c]
        ds["x"] = (ds["x"].dims, x.astype(np.float32))
        for v in ds.variables.values():
            v.encoding.pop("chunks", None)
            v.encoding.pop("preferred_chunks", None)
        ds.to_zarr(uri, group=split, mode="w" if first else "a", consolidated=False)
        first = False
    norm.update({c: {**norm[c], "mean": float(mean[c]), "std": float(std[c])} for c in mean})
    attrs = dict(src.attrs)
    attrs["normalization"] = json.dumps(norm)
    zarr.open_group(uri, mode="r+").attrs.update(attrs)
    store.record(dataset_key(copy), sha256=sha256_json({"copy_of": version, "mean": mean, "std": std}),
                 size=1, producer={"test": "write_restandardized_copy"})
    return uri
