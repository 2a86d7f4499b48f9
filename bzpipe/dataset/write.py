"""Stage 4 of the dataset build: normalize and write ``datasets/<version>.zarr``; read it back.

* ERA-5 mean / std per channel over every pixel of the TRAINING patches
  (one dask task per region, combined with Chan's parallel algorithm).
* The store is initialized with the final shapes (``to_zarr(compute=False)``:
  coordinates and attributes written, ``x`` only declared), then each region
  of ``region_samples`` samples is computed and written with
  ``to_zarr(region=...)`` in a dask task.  The driver records every finished
  region (with the sha256 of its values) in ``work/build/<version>/progress.json``;
  a later run with the same plan skips them.
* Only when every region is written is ``datasets/<version>.zarr`` recorded
  in the store manifest; :func:`open_dataset` refuses a store without it.
* A complete version is never deleted to be rebuilt: a new build of it (another
  plan, ``overwrite=true``) is written aside, under ``datasets/.<version>.zarr.tmp-<plan>``,
  and swapped in only once complete (:func:`bzpipe.store.replace.replace`).
  Until then the old version stays complete and readable; a build killed at any
  point is resumed (or its swap finished) by running it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from bzpipe.cluster import current_client, total_threads
from bzpipe.config import BuildConfig, config_record
from bzpipe.dataset.inputs import tree_size, work_key
from bzpipe.dataset.plan import BuildPlan
from bzpipe.errors import BzpipeError, StoreError
from bzpipe.provenance import code_version, provenance_record, sha256_json
from bzpipe.schema import CHANNELS, ERA5_VARIABLES, dbz_to_norm, default_normalization
from bzpipe.split import SPLITS
from bzpipe.store import Store, write_error
from bzpipe.store.replace import aside_key, finish_replacement, replace, replacement_pending

log = logging.getLogger("bzpipe.dataset")

ERA5_UNITS = {"t": "K", "q": "kg kg-1", "u": "m s-1", "v": "m s-1"}
RegionCallback = Callable[[str, int], None]


class IncompleteDatasetError(StoreError):
    """The dataset has no manifest entry (never built, or its build was interrupted)."""


class EmptySplitError(BzpipeError, ValueError):
    """A split that training needs (train, val) has no samples: nothing would be learned or validated."""

    retryable = False


# --------------------------------------------------------------------------- reading patches


def read_patches(store: Store, days: dict[str, list[list[Any]]], sites: list[str], cols: list[int],
                 width: int, n_heights: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw patch data from the colocated stores.

    Returns ``refl`` float32 ``(n, row, col)`` dBZ (NaN: no echo or not
    measured), ``era`` float32 ``(n, 4, row, col)`` (t, q, u, v in ERA-5
    units) and ``measured`` bool ``(n, row)`` (row has radar gates).
    Each colocated day is read once, over the range its samples need.
    """
    n = len(cols)
    refl = np.full((n, n_heights, width), np.nan, np.float32)
    era = np.full((n, len(ERA5_VARIABLES), n_heights, width), np.nan, np.float32)
    measured = np.zeros((n, n_heights), bool)
    pieces: dict[str, list[tuple[int, int, int, int]]] = {}  # key -> (sample, local0, local1, out0)
    for i, (site, c) in enumerate(zip(sites, cols, strict=True)):
        for key, c0, m, _low in days[site]:
            a, b = max(c, c0), min(c + width, c0 + m)
            if b > a:
                pieces.setdefault(key, []).append((i, a - c0, b - c0, a - c))
    opts = store.storage_options or None
    for key, plist in pieces.items():
        lo = min(p[1] for p in plist)
        hi = max(p[2] for p in plist)
        with xr.open_zarr(store.uri(key), consolidated=True, chunks=None, storage_options=opts) as ds:
            part = ds[["reflectivity", *ERA5_VARIABLES, "n_gates"]].isel(time=slice(lo, hi)).load()
        r = part["reflectivity"].transpose("time", "height").values          # (T, R)
        e = np.stack([part[v].transpose("time", "height").values for v in ERA5_VARIABLES])  # (4, T, R)
        g = part["n_gates"].values > 0
        for i, l0, l1, o in plist:
            refl[i, :, o:o + l1 - l0] = r[l0 - lo:l1 - lo].T
            era[i, :, :, o:o + l1 - l0] = np.swapaxes(e[:, l0 - lo:l1 - lo], 1, 2)
            measured[i] |= g
    return refl, era, measured


def normalize(refl: np.ndarray, era: np.ndarray, measured: np.ndarray,
              norm: dict[str, dict[str, Any]]) -> np.ndarray:
    """``x`` float32 ``(n, channel, row, col)`` as documented in the ``normalization`` attribute.

    Reflectivity: :func:`bzpipe.schema.dbz_to_norm`; rows without radar gates
    take the value of the nearest measured row.  ERA-5: ``(value - mean) / std``.
    """
    n, rows, width = refl.shape
    x = np.empty((n, len(CHANNELS), rows, width), np.float32)
    r = dbz_to_norm(refl)
    for i in range(n):
        m = np.flatnonzero(measured[i])
        if m.size and m.size < rows:
            nearest = m[np.argmin(np.abs(np.arange(rows)[:, None] - m[None, :]), axis=1)]
            r[i] = r[i][nearest]
    x[:, 0] = r
    for k, v in enumerate(ERA5_VARIABLES):
        x[:, CHANNELS.index(v)] = (era[:, k] - norm[v]["mean"]) / norm[v]["std"]
    return x


def _region_moments(store_root: str, days: dict[str, list[list[Any]]], sites: list[str], cols: list[int],
                    width: int, n_heights: int) -> dict[str, tuple[int, float, float]]:
    """(count, mean, M2) of each ERA-5 variable over the pixels of these samples."""
    _, era, _ = read_patches(Store(store_root), days, sites, cols, width, n_heights)
    out = {}
    for k, v in enumerate(ERA5_VARIABLES):
        a = era[:, k].astype(np.float64).ravel()
        a = a[np.isfinite(a)]
        mean = float(a.mean()) if a.size else 0.0
        out[v] = (int(a.size), mean, float(np.sum((a - mean) ** 2)))
    return out


def _combine(m1: tuple[int, float, float], m2: tuple[int, float, float]) -> tuple[int, float, float]:
    n1, a1, q1 = m1
    n2, a2, q2 = m2
    n = n1 + n2
    if n == 0:
        return (0, 0.0, 0.0)
    d = a2 - a1
    return (n, a1 + d * n2 / n, q1 + q2 + d * d * n1 * n2 / n)


def _regions(n: int, size: int) -> list[tuple[int, int, int]]:
    return [(i, a, min(a + size, n)) for i, a in enumerate(range(0, n, size))]


def _site_days(plan: BuildPlan, sites: list[str]) -> dict[str, list[list[Any]]]:
    return {s: plan.days[s] for s in set(sites)}


def era5_normalization(store_root: str, plan: BuildPlan, region_samples: int) -> dict[str, dict[str, Any]]:
    """The ``normalization`` attribute: reflectivity mapping + ERA-5 mean / std of the TRAINING split."""
    tr = plan.samples["train"]
    if not tr["col"]:
        raise ValueError("the training split is empty: no ERA-5 statistics (and nothing to train on); "
                         "check the cold filter, the split fractions and the input period")
    args = [(store_root, _site_days(plan, tr["site"][a:b]), tr["site"][a:b], tr["col"][a:b], plan.width,
             plan.n_heights) for _, a, b in _regions(len(tr["col"]), region_samples)]
    client = current_client()
    if client is None:
        parts = [_region_moments(*a) for a in args]
    else:
        parts = client.gather(client.map(_region_moments, *zip(*args, strict=True), pure=False))
    norm: dict[str, dict[str, Any]] = default_normalization()
    norm["reflectivity"].update({
        "method": "dbz_to_norm",
        "formula": "lo + (clip(dBZ, dbz_min, dbz_max) - dbz_min) * (hi - lo) / (dbz_max - dbz_min); "
                   "no echo or dBZ < dbz_min -> no_echo",
        "averaging": "linear Z (not dBZ) over the gates and profiles of each grid cell",
        "unmeasured_rows": "rows without radar gates take the value of the nearest measured row "
                           "(per-sample coordinate lowest_measured_row)"})
    for v in ERA5_VARIABLES:
        tot = (0, 0.0, 0.0)
        for p in parts:
            tot = _combine(tot, tuple(p[v]))  # type: ignore[arg-type]
        n, mean, m2 = tot
        std = float(np.sqrt(m2 / n)) if n else 1.0
        if not std > 0:
            log.warning("ERA-5 %s is constant over the training split; std set to 1", v)
            std = 1.0
        norm[v] = {"mean": float(mean), "std": std, "units": ERA5_UNITS[v], "method": "standardize",
                   "formula": "(value - mean) / std", "computed_on": "train", "n_pixels": int(n)}
    return norm


# --------------------------------------------------------------------------- writing


def _write_region(store_root: str, uri: str, split: str, a: int, b: int, days: dict[str, list[list[Any]]],
                  sites: list[str], cols: list[int], width: int, n_heights: int,
                  norm: dict[str, dict[str, Any]]) -> str:
    """Compute samples ``[a, b)`` of ``split`` and write them in place; return the sha256 of the values."""
    store = Store(store_root)
    refl, era, measured = read_patches(store, days, sites, cols, width, n_heights)
    x = normalize(refl, era, measured, norm)
    if not np.isfinite(x).all():
        raise ValueError(f"{uri}/{split}[{a}:{b}]: non-finite values in normalized patches")
    try:
        xr.Dataset({"x": (("sample", "channel", "row", "col"), x)}).to_zarr(
            uri, group=split, region={"sample": slice(a, b)}, consolidated=False,
            storage_options=store.storage_options or None)
    except OSError as e:   # e.g. a full disk: say where, and what is kept
        raise write_error(f"{uri} ({split} samples {a}..{b})", e,
                          "the regions written before are kept; run the build again to resume") from e
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def x_encoding(n: int, shape: tuple[int, int, int], chunk: int) -> dict[str, Any]:
    """Zarr encoding of ``x`` (n samples of ``shape`` = (channel, row, col)) for random access: shards of
    ``chunk`` samples (one stored object each; region writes stay shard-aligned) whose inner chunks hold
    one sample, so a shuffled training batch reads and decompresses only its own samples."""
    shard = max(1, min(chunk, n))
    return {"chunks": (1, *shape), "shards": (shard, *shape)}


def _template(plan: BuildPlan, split: str, chunk: int) -> xr.Dataset:
    n = plan.n_samples(split)
    R, W = plan.n_heights, plan.width
    step_s = plan.step_ns / 1e9
    S = np.dtypes.StringDType()
    x = da.zeros((n, len(CHANNELS), R, W), dtype=np.float32, chunks=(chunk, len(CHANNELS), R, W))
    return xr.Dataset(
        {"x": (("sample", "channel", "row", "col"), x, {
            "long_name": "normalized model input patches (reflectivity, ERA-5 t q u v)",
            "units": "1", "comment": "normalization: see the root attribute 'normalization'; "
            "row 0 = lowest height bin, col = time; the blind zone is NOT masked"})},
        coords={
            "channel": ("channel", np.array(CHANNELS, dtype=S), {"long_name": "input channel"}),
            "height": ("row", plan.height(), {
                "standard_name": "height", "long_name": "row centre height above ground level",
                "units": "m", "positive": "up", "axis": "Z"}),
            "time_offset": ("col", np.arange(W, dtype=np.float64) * step_s, {
                "long_name": "start of the column's time bin after time_start", "units": "s"}),
            "site": ("sample", np.array(plan.samples[split]["site"], dtype=S), {"long_name": "ARM site"}),
            "time_start": ("sample", plan.time_start(split), {
                "standard_name": "time", "long_name": "start of the patch's first time bin"}),
            "season": ("sample", plan.season(split).astype(S), {"long_name": "meteorological season"}),
            "lowest_measured_row": ("sample", plan.lowest_measured_row(split), {
                "long_name": "lowest row with radar gates (rows below copy it)", "units": "1"}),
        },
        attrs={"split": split, "n_samples": n, "Conventions": "CF-1.10"})


def _root_attrs(plan: BuildPlan, config: BuildConfig, norm: dict[str, Any]) -> dict[str, Any]:
    prov = provenance_record(config, inputs=plan.inputs, plan_id=plan.plan_id(),
                             intermediates=sorted({d[0] for v in plan.days.values() for d in v}),
                             decorrelation_s=plan.decorrelation_s, split=plan.split, counts=plan.counts)
    return {"Conventions": "CF-1.10",
            "title": "Blind-zone inpainting dataset: KaZR reflectivity + ERA-5 patches",
            "institution": "bzpipe", "source": "ARM KaZR (ground radar), ARM met, ECMWF ERA-5",
            "history": f"built by bzpipe {code_version()}",
            "references": "King et al. (2024), AIES",
            "normalization": json.dumps(norm, sort_keys=True),
            "blind_zone_rows": int(plan.blind_zone_rows),
            "channels": list(CHANNELS),
            "config": json.dumps(config_record(config), sort_keys=True, default=str),
            "provenance": json.dumps(prov, sort_keys=True, default=str)}


def _init_store(store: Store, uri: str, plan: BuildPlan, config: BuildConfig, norm: dict[str, Any]) -> None:
    import zarr

    opts = store.storage_options or None
    root = zarr.open_group(uri, mode="w", storage_options=opts) if opts else zarr.open_group(uri, mode="w")
    root.attrs.update(_root_attrs(plan, config, norm))
    for split in SPLITS:
        tpl = _template(plan, split, config.chunk_samples)
        x_enc = x_encoding(plan.n_samples(split), tpl["x"].shape[1:], config.chunk_samples)
        tpl.to_zarr(uri, group=split, mode="w", compute=False, consolidated=False, storage_options=opts,
                    encoding={"time_start": {"units": "milliseconds since 1970-01-01", "dtype": "int64"},
                              "x": x_enc})


def dataset_digest(plan: BuildPlan, digests: dict[str, dict[str, str]]) -> str:
    """sha256 of the dataset's content: plan (samples, coords) + the sha256 of every region's values."""
    return sha256_json({"plan": plan.plan_id(),
                        "regions": {s: [digests.get(s, {})[k] for k in sorted(digests.get(s, {}), key=int)]
                                    for s in SPLITS}})


def check_splits(plan: BuildPlan) -> None:
    """Refuse a plan whose train or validation split is empty (training would fail only later)."""
    n = {split: plan.n_samples(split) for split in SPLITS}
    empty = [split for split in ("train", "val") if n[split] == 0]
    if empty:
        raise EmptySplitError(f"dataset {plan.version!r}: the {' and '.join(empty)} split(s) would be empty "
                              f"(samples per split {n}); use a longer period, other split fractions or block "
                              "length, or a warmer cold_threshold_c")
    if n["test"] == 0:
        log.warning("dataset %r: the test split is empty; it cannot be evaluated", plan.version)


def write_dataset(store_root: str, plan: BuildPlan, config: BuildConfig, *,
                  on_region_written: RegionCallback | None = None) -> str:
    """Write (or resume writing) ``datasets/<version>.zarr`` for ``plan``; return its URI.

    A complete version built from this plan is returned as is.  One built from another plan is
    replaced only with ``config.overwrite``, and never in place: the new version is written aside
    and swapped in once complete, so the old one stays readable until then.
    ``on_region_written(split, index)`` is called after each region is recorded in the progress
    file (tests use it to interrupt a build).
    """
    check_splits(plan)
    store = Store(store_root)
    key = Store.dataset_key(config.version)
    uri = store.uri(key)
    pkey = work_key(config.version, "progress.json")
    plan_id = plan.plan_id()
    finish_replacement(store, key)                          # a swap killed half-way is finished first
    current = store.entry(key) if store.is_complete(key) else None
    if current is not None and current.producer.get("plan_id") == plan_id:
        log.info("%s is complete with this plan", uri)
        if store.exists(pkey) and store.read_json(pkey).get("plan_id") == plan_id:
            store.fs.rm(store.uri(pkey))                    # left by a build killed after its swap
        return uri
    if current is not None and not config.overwrite:
        raise StoreError(f"{uri} is complete already (built from another plan); choose a new version or set "
                         "overwrite=true to replace it")
    # with a complete version in place, write the new one aside; else straight at the key
    target = aside_key(key, plan_id[:12]) if current is not None else key
    target_uri = store.uri(target)
    state: dict[str, Any] | None = None
    if store.exists(pkey):
        state = store.read_json(pkey)
        if (state.get("plan_id"), state.get("target", key)) != (plan_id, target) or not store.exists(target):
            stale = state.get("target", key)
            if stale not in (key, target):
                store.remove(stale)                         # an abandoned aside build of another plan
            log.info("%s: unfinished build of another plan or place; starting again", uri)
            state = None
    if state is None:
        store.remove(target)                                # never the complete version (see above)
        norm = era5_normalization(store.root, plan, config.region_samples)
        try:
            _init_store(store, target_uri, plan, config, norm)
        except OSError as e:
            raise write_error(target_uri, e, "nothing complete was changed; run the build again") from e
        state = {"plan_id": plan_id, "target": target, "normalization": norm, "done": {s: {} for s in SPLITS}}
        store.write_json(pkey, state, manifest=False)
        if current is not None:
            log.info("%s: building the new version aside at %s; the current one stays readable until it is "
                     "complete", uri, target_uri)
    else:
        done_n = sum(len(v) for v in state["done"].values())
        log.info("%s: resuming, %d regions already written", target_uri, done_n)
    norm = state["normalization"]

    todo = []
    for split in SPLITS:
        smp = plan.samples[split]
        for i, a, b in _regions(plan.n_samples(split), config.region_samples):
            if str(i) not in state["done"][split]:
                todo.append((split, i, (store.root, target_uri, split, a, b, _site_days(plan, smp["site"][a:b]),
                                        smp["site"][a:b], smp["col"][a:b], plan.width, plan.n_heights, norm)))
    total = sum(len(_regions(plan.n_samples(s), config.region_samples)) for s in SPLITS)
    log.info("%s: writing %d of %d regions", uri, len(todo), total)

    def record(split: str, i: int, digest: str) -> None:
        state["done"][split][str(i)] = digest
        store.write_json(pkey, state, manifest=False)
        if on_region_written is not None:
            on_region_written(split, i)

    client = current_client()
    if client is None:
        for split, i, args in todo:
            record(split, i, _write_region(*args))
    else:
        from distributed import as_completed, wait

        queue = deque(todo)
        inflight = 2 * total_threads(client)
        running: dict[Any, tuple[str, int]] = {}
        ac = as_completed()
        try:
            while queue or running:
                while queue and len(running) < inflight:
                    split, i, args = queue.popleft()
                    fut = client.submit(_write_region, *args, pure=False)
                    running[fut] = (split, i)
                    ac.add(fut)
                fut = next(ac)
                split, i = running.pop(fut)
                record(split, i, fut.result())
        except BaseException:
            with contextlib.suppress(Exception):
                wait(list(running), timeout=60)  # let in-flight writes finish before giving up
            raise

    size = tree_size(store, target)
    digest = dataset_digest(plan, state["done"])
    producer = {"recipe_id": plan.recipe_id, "plan_id": plan_id, "code_version": code_version(),
                "samples": {s: plan.n_samples(s) for s in SPLITS}}
    if target == key:
        store.record(key, sha256=digest, size=size, producer=producer)
    else:
        replace(store, target, key, sha256=digest, size=size, producer=producer)
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(store.uri(pkey))
    log.info("%s: complete (%s)", uri, {s: plan.n_samples(s) for s in SPLITS})
    return uri


def open_dataset(store: Store | str, version: str, split: str) -> xr.Dataset:
    """One split of a COMPLETE dataset (lazy); root attrs decoded (JSON) into ``attrs``.

    Raises :class:`IncompleteDatasetError` when the dataset has no manifest
    entry (never built, or its build was interrupted).
    """
    import zarr

    store = store if isinstance(store, Store) else Store(store)
    key = Store.dataset_key(version)
    if not store.is_complete(key):
        state = ("being replaced (a build was killed while swapping in the new version)"
                 if replacement_pending(store, key) else
                 "half-written (an interrupted build?)" if store.exists(key) else "missing")
        raise IncompleteDatasetError(
            f"{store.uri(key)}: dataset {version!r} is {state}: it has no manifest entry, so it is not "
            "complete; run the build again (it resumes) before reading it")
    uri = store.uri(key)
    opts = store.storage_options or None
    root = zarr.open_group(uri, mode="r", storage_options=opts) if opts else zarr.open_group(uri, mode="r")
    if split not in set(root.group_keys()):
        raise StoreError(f"{uri}: no split {split!r} (groups: {sorted(root.group_keys())})")
    ds = xr.open_zarr(uri, group=split, storage_options=opts, consolidated=False)
    attrs = dict(ds.attrs)
    for k, v in root.attrs.items():
        decode = k in ("normalization", "config", "provenance") and isinstance(v, str)
        attrs[k] = json.loads(v) if decode else v
    ds.attrs = attrs
    return ds
