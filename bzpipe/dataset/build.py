"""The whole dataset build, and deciding whether there is anything to build.

:func:`build_dataset` runs every stage (colocation, plan, write) on the default dask
client or on a cluster started from the config.  :func:`check_existing` decides,
before anything runs, whether the version is complete with the same recipe (then
nothing is done), complete with another (refused unless ``overwrite``; the
replacement is then built aside, see :func:`bzpipe.dataset.write.write_dataset`),
or absent / unfinished (built or resumed).  The recipe id is the sha256 of the
config values that determine the content (not where the store is), the raw
inputs' checksums and the code version.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from bzpipe.cluster import current_client, dask_client
from bzpipe.config import BuildConfig
from bzpipe.dataset.inputs import colocate_all, find_inputs, input_checksums, recipe_config, work_key
from bzpipe.dataset.plan import BuildPlan, plan_dataset
from bzpipe.dataset.write import RegionCallback, write_dataset
from bzpipe.errors import StoreError
from bzpipe.provenance import code_version, sha256_json
from bzpipe.store import Store
from bzpipe.store.replace import finish_replacement

log = logging.getLogger("bzpipe.dataset")


def save_plan(store: Store, plan: BuildPlan) -> str:
    key = work_key(plan.version, "plan.json")
    store.write_json(key, plan.to_json(), manifest=False)
    return key


def load_plan(store: Store, key: str) -> BuildPlan:
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
    key = Store.dataset_key(config.version)
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


def build_dataset(config: BuildConfig, *, on_region_written: RegionCallback | None = None) -> str:
    """Run the whole build on the default dask client, or on a cluster started from ``config``.

    Returns the dataset URI.  Idempotent: a complete dataset with the same
    recipe is returned as is; an interrupted one is resumed.
    """
    store = Store(config.store_root)
    recipe_id, checks, inputs = build_recipe(store, config)
    existing = check_existing(store, config, recipe_id)
    if existing:
        return existing
    ctx: contextlib.AbstractContextManager[Any] = (
        contextlib.nullcontext() if current_client() is not None
        else dask_client(config.dask_address, n_workers=config.n_workers,
                         threads_per_worker=config.threads_per_worker, processes=config.dask_processes))
    with ctx:
        results = colocate_all(store.root, config, inputs)
        keys = [r["key"] for r in results]
        plan = plan_dataset(store, config, keys, recipe_id=recipe_id, inputs=checks)
        save_plan(store, plan)
        return write_dataset(store.root, plan, config, on_region_written=on_region_written)
