"""Stage 4 of the dataset build: write ``datasets/<version>.zarr`` for a plan.

* The ``normalization`` attribute comes first (:mod:`bzpipe.dataset.normalization`:
  ERA-5 mean / std over the TRAINING patches).
* The store is initialized with the final shapes (``to_zarr(compute=False)``:
  coordinates and attributes written, ``x`` only declared), then each
  :class:`Region` of ``region_samples`` samples is computed and written with
  ``to_zarr(region=...)`` in a dask task, at most two per worker thread in flight.
  The driver records every finished region (with the sha256 of its values) in
  ``work/build/<version>/progress.json``; a later run with the same plan skips them.
* Only when every region is written is ``datasets/<version>.zarr`` recorded
  in the store manifest; :func:`bzpipe.dataset.reader.open_dataset` refuses a store without it.
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
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from bzpipe.checksums import sha256_json
from bzpipe.cluster import current_client, total_threads
from bzpipe.config import BuildConfig, config_record
from bzpipe.dataset.inputs import tree_size
from bzpipe.dataset.normalization import era5_normalization, regions
from bzpipe.dataset.patches import PatchSet, model_era5_fields, normalize, read_patches
from bzpipe.dataset.plan import BuildPlan
from bzpipe.errors import BzpipeError, StoreError
from bzpipe.provenance import code_version, provenance_record
from bzpipe.schema import CHANNELS
from bzpipe.split import SPLITS
from bzpipe.store import Store, write_error
from bzpipe.store.layout import aside_key, build_progress_key, dataset_key
from bzpipe.store.replace import finish_replacement, replace
from bzpipe.thermo import representation_of

log = logging.getLogger("bzpipe.dataset")

RegionCallback = Callable[[str, int], None]


class EmptySplitError(BzpipeError, ValueError):
    """A split that training needs (train, val) has no samples: nothing would be learned or validated."""

    retryable = False


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Region:
    """Samples ``[start, stop)`` of one split: the ``index``-th region the writer computes and writes."""

    split: str
    index: int
    start: int
    stop: int
    patches: PatchSet

    @classmethod
    def all_of(cls, plan: BuildPlan, region_samples: int) -> list[Region]:
        """Every region of every split of ``plan``, in split order."""
        return [cls(split, i, a, b, PatchSet.of(plan, split, a, b)) for split in SPLITS
                for i, a, b in regions(plan.n_samples(split), region_samples)]


def write_region(store_root: str, uri: str, region: Region, norm: dict[str, dict[str, Any]]) -> str:
    """Compute the samples of ``region`` and write them in place; return the sha256 of the values."""
    store = Store(store_root)
    split, a, b = region.split, region.start, region.stop
    refl, era, measured = read_patches(store, region.patches)
    era = model_era5_fields(era, region.patches, representation_of(norm["q"]))
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


def _write_regions(store_root: str, uri: str, todo: list[Region], norm: dict[str, dict[str, Any]],
                   record: Callable[[Region, str], None]) -> None:
    """Write ``todo`` on the default dask client (in-process without one), at most two regions per
    worker thread in flight; ``record(region, sha256)`` runs on the driver as each one finishes."""
    client = current_client()
    if client is None:
        for region in todo:
            record(region, write_region(store_root, uri, region, norm))
        return
    from distributed import as_completed, wait

    queue = deque(todo)
    inflight = 2 * total_threads(client)
    running: dict[Any, Region] = {}
    ac = as_completed()
    try:
        while queue or running:
            while queue and len(running) < inflight:
                region = queue.popleft()
                fut = client.submit(write_region, store_root, uri, region, norm, pure=False)
                running[fut] = region
                ac.add(fut)
            fut = next(ac)
            record(running.pop(fut), fut.result())
    except BaseException:
        with contextlib.suppress(Exception):
            wait(list(running), timeout=60)  # let in-flight writes finish before giving up
        raise


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
                             intermediates=sorted({d.key for v in plan.days.values() for d in v}),
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
    key = dataset_key(config.version)
    uri = store.uri(key)
    pkey = build_progress_key(config.version)
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
        norm = era5_normalization(store.root, plan, config.region_samples, config.era5_humidity)
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

    todo = [r for r in Region.all_of(plan, config.region_samples)
            if str(r.index) not in state["done"][r.split]]
    total = sum(len(regions(plan.n_samples(s), config.region_samples)) for s in SPLITS)
    log.info("%s: writing %d of %d regions", uri, len(todo), total)

    def record(region: Region, digest: str) -> None:
        state["done"][region.split][str(region.index)] = digest
        store.write_json(pkey, state, manifest=False)
        if on_region_written is not None:
            on_region_written(region.split, region.index)

    _write_regions(store.root, target_uri, todo, norm, record)

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
