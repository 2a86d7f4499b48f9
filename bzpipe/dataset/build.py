"""The dataset build's one orchestrator, and deciding whether there is anything to build.

:func:`run_build` runs every stage (colocation, plan, write) on the default dask client or on a
cluster started from the config; how each step runs is a :class:`BuildSteps` (in-process and on
Dask by default; the Prefect flow ``build-dataset`` passes its tasks, with retries and progress
artifacts).  :func:`check_existing` decides, before anything runs, whether the version is complete
with the same recipe (then nothing is done), complete with another (refused unless ``overwrite``;
the replacement is then built aside, see :func:`bzpipe.dataset.write.write_dataset`), or absent /
unfinished (built or resumed).  The recipe id is the sha256 of the config values that determine
the content (not where the store is), the raw inputs' checksums and the code version.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bzpipe.checksums import sha256_json
from bzpipe.cluster import current_client, dask_client
from bzpipe.config import BuildConfig
from bzpipe.dataset.inputs import DayInputs, colocate_all, find_inputs, input_checksums, recipe_config
from bzpipe.dataset.plan import BuildPlan, plan_dataset
from bzpipe.dataset.write import RegionCallback, write_dataset
from bzpipe.errors import StoreError
from bzpipe.provenance import code_version
from bzpipe.store import Store
from bzpipe.store.layout import build_plan_key, dataset_key, raw_prefix
from bzpipe.store.replace import finish_replacement

log = logging.getLogger("bzpipe.dataset")


#: colocate(store root, config, site-days) -> one result per site-day, each with the intermediate's "key"
ColocateStep = Callable[[str, BuildConfig, list[DayInputs]], list[dict[str, Any]]]
#: plan(store root, config, colocated keys, recipe id, raw input checksums) -> the saved plan's key
PlanStep = Callable[[str, BuildConfig, list[str], str, dict[str, str]], str]
#: write(store root, config, plan key) -> the dataset's URI
WriteStep = Callable[[str, BuildConfig, str], str]


def save_plan(store: Store, plan: BuildPlan) -> str:
    """Save ``plan`` in the build's work folder; returns its key."""
    key = build_plan_key(plan.version)
    store.write_json(key, plan.to_json(), manifest=False)
    return key


def load_plan(store: Store, key: str) -> BuildPlan:
    """The plan saved at ``key``."""
    return BuildPlan.from_json(store.read_json(key))


def build_recipe(store: Store, config: BuildConfig) -> tuple[str, dict[str, str], list]:
    """(recipe id, raw input checksums, inputs per site-day) of a build."""
    inputs = find_inputs(store, config)
    checks = input_checksums(store, [k for d in inputs for k in d.keys()])
    rid = sha256_json({"config": recipe_config(config), "inputs": checks, "code": code_version()})
    return rid, checks, inputs


def check_existing(store: Store, config: BuildConfig, recipe_id: str) -> str | None:
    """URI if the version is complete with this recipe; raise if complete with another (unless overwrite).

    With ``overwrite`` the complete version is kept: the build writes its replacement aside and swaps it
    in only once complete (:func:`write_dataset`).  A swap that a killed build left half-done is
    finished first.
    """
    key = dataset_key(config.version)
    finish_replacement(store, key)
    if not store.is_complete(key):
        return None
    entry = store.entry(key)
    if entry is not None and entry.producer.get("recipe_id") == recipe_id:
        log.info("%s is complete with the same recipe; nothing to do", store.uri(key))
        return store.uri(key)
    if not config.overwrite:
        raise StoreError(f"{store.uri(key)}: dataset version {config.version!r} exists, built from other "
                         "inputs / config / code; choose a new version or set overwrite=true")
    log.warning("%s: will be replaced (overwrite=true); it stays complete and readable until the new "
                "version is", store.uri(key))
    return None


def plan_step(store_root: str, config: BuildConfig, colocated: list[str], recipe_id: str,
              inputs: dict[str, str]) -> str:
    """Plan the split and the patches of the colocated site-days and save the plan; returns its key."""
    store = Store(store_root)
    return save_plan(store, plan_dataset(store, config, colocated, recipe_id=recipe_id, inputs=inputs))


def write_step(store_root: str, config: BuildConfig, plan_key: str, *,
               on_region_written: RegionCallback | None = None) -> str:
    """Write (or resume) the dataset of the plan saved at ``plan_key``; returns its URI."""
    plan = load_plan(Store(store_root), plan_key)
    return write_dataset(store_root, plan, config, on_region_written=on_region_written)


@dataclass(frozen=True)
class BuildSteps:
    """How the three steps of a build run (the defaults: in this process and on the Dask client)."""

    colocate: ColocateStep = colocate_all
    plan: PlanStep = plan_step
    write: WriteStep = write_step


@dataclass
class BuildOutcome:
    """What a build gave: the dataset's URI and its plan (None when it was complete already)."""

    uri: str
    plan: BuildPlan | None = None


def run_build(config: BuildConfig, steps: BuildSteps | None = None) -> BuildOutcome:
    """Build ``datasets/<version>.zarr`` from the raw files in the store: the one build orchestrator.

    Idempotent: a complete dataset with the same recipe is returned as is (``plan`` None); an
    interrupted one is resumed.  The steps run on the default Dask client, or on a cluster
    started from ``config`` (``dask_address``, else a LocalCluster) for the duration.
    """
    steps = steps or BuildSteps()
    config.check_split_blocks()             # a period too short for one block per split: before any work
    store = Store(config.store_root)
    recipe_id, checks, inputs = build_recipe(store, config)
    existing = check_existing(store, config, recipe_id)
    if existing:
        return BuildOutcome(existing)
    if not inputs:
        raise ValueError(f"no radar files under {store.uri(raw_prefix('kazr'))} for {config.sites} "
                         f"{config.start}..{config.end}")
    log.info("%d site-days to colocate (%d raw files)", len(inputs), len(checks))
    ctx: contextlib.AbstractContextManager[Any] = (
        contextlib.nullcontext() if current_client() is not None
        else dask_client(config.dask_address, n_workers=config.n_workers,
                         threads_per_worker=config.threads_per_worker, processes=config.dask_processes))
    with ctx:
        results = steps.colocate(store.root, config, inputs)
        plan_key = steps.plan(store.root, config, [r["key"] for r in results], recipe_id, checks)
        uri = steps.write(store.root, config, plan_key)
    return BuildOutcome(uri, load_plan(store, plan_key))


def build_dataset(config: BuildConfig, *, on_region_written: RegionCallback | None = None) -> str:
    """:func:`run_build` with the default steps; returns the dataset URI.

    ``on_region_written(split, index)`` is called after each region is recorded (tests use it to
    interrupt a build).
    """
    write = functools.partial(write_step, on_region_written=on_region_written)
    return run_build(config, BuildSteps(write=write)).uri
