"""Prefect flow ``build_dataset``: raw files in the store -> ``datasets/<version>.zarr``.

* one task per site and day colocates radar, met and ERA-5 into
  ``work/colocated/<site>/<YYYY-MM-DD>.zarr`` (run as a task on the dask
  cluster; retried; skipped when already complete with the same recipe), at
  most ``max_in_flight`` of them submitted at once, with a progress artifact;
* one task plans the split and the patches (cold filter, decorrelation time);
* one task writes the dataset (ERA-5 statistics on the training split, region
  writes on the dask cluster, resumable after an interruption).

Tasks pass store URIs and small JSON, never Datasets.  The dask cluster is a
LocalCluster started by the flow (``n_workers`` x ``threads_per_worker``), or
an existing scheduler: the ``dask_address`` parameter, ``BuildConfig.dask_address``
or ``$DASK_SCHEDULER_ADDRESS``.  The flow ends with a table artifact of the
samples per split, site and season, and the decorrelation time.

Run: ``python -m flows.build_dataset [--config FILE] [--set key=value ...] [--dask-address ADDR]``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from bzpipe.cluster import current_client, dask_client
from bzpipe.config import BuildConfig
from bzpipe.dataset import (build_recipe, check_existing, colocate_day, load_plan, plan_dataset, save_plan,
                            write_dataset)
from bzpipe.store import Store
from flows.common import artifact_slug, cli_parser, resolve_config, retry_if_transient
from flows.fanout import Progress, bounded


@task(name="colocate-site-day", task_run_name="colocate-{inputs[site]}-{inputs[day]}", retries=2,
      retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE, persist_result=False)
def colocate_task(store_root: str, inputs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Colocate one site-day on the dask cluster; returns the intermediate's URI and counts."""
    client = current_client()
    if client is None:
        res = colocate_day(store_root, inputs, config)
    else:
        res = client.submit(colocate_day, store_root, inputs, config, pure=False).result()
    uri = Store(store_root).uri(res["key"])
    get_run_logger().info("%s: %s (%s profiles, %s of %s bins usable)", uri,
                          "already complete" if res["skipped"] else "written", res.get("profiles"),
                          res.get("valid_bins"), res.get("bins"))
    return {**res, "uri": uri}


@task(name="plan-split", cache_policy=NO_CACHE, persist_result=False)
def plan_task(store_root: str, config: dict[str, Any], colocated_uris: list[str], recipe_id: str,
              inputs: dict[str, str]) -> str:
    """Cold filter, decorrelation time, split, patches; the plan is saved, its URI returned."""
    store = Store(store_root)
    cfg = BuildConfig.model_validate(config)
    keys = [store.key_of(u) for u in colocated_uris]
    plan = plan_dataset(store, cfg, keys, recipe_id=recipe_id, inputs=inputs)
    get_run_logger().info("samples per split %s; decorrelation time %s s", plan.counts["samples"],
                          plan.decorrelation_s)
    return store.uri(save_plan(store, plan))


@task(name="write-dataset", cache_policy=NO_CACHE, persist_result=False)
def write_task(store_root: str, config: dict[str, Any], plan_uri: str) -> str:
    """Normalize and write (or resume) the dataset; returns its URI."""
    store = Store(store_root)
    plan = load_plan(store, store.key_of(plan_uri))
    return write_dataset(store.root, plan, BuildConfig.model_validate(config))


def _artifact_key(version: str) -> str:
    return "dataset-" + artifact_slug(version)


@flow(name="build-dataset", log_prints=True)
def build_dataset(config: BuildConfig | None = None, config_path: str | None = None,
                  overrides: list[str] | None = None, dask_address: str | None = None) -> str:
    """Build ``datasets/<version>.zarr`` from the raw files in the store; returns its URI."""
    logger = get_run_logger()
    cfg = resolve_config(BuildConfig, config, config_path, overrides)
    if dask_address:
        cfg = cfg.model_copy(update={"dask_address": dask_address})
    cfg.check_split_blocks()               # a period too short for one block per split: before any work
    store = Store(cfg.store_root)
    recipe_id, checks, inputs = build_recipe(store, cfg)
    existing = check_existing(store, cfg, recipe_id)
    if existing:
        logger.info("%s is complete with the same inputs and config", existing)
        return existing
    if not inputs:
        raise ValueError(f"no radar files under {store.uri('raw/kazr/')} for {cfg.sites} "
                         f"{cfg.start}..{cfg.end}")
    logger.info("%d site-days to colocate (%d raw files)", len(inputs), len(checks))
    cfg_json = cfg.model_dump(mode="json")
    with dask_client(cfg.dask_address, n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                     processes=cfg.dask_processes):
        # at most max_in_flight site-day tasks at once (each waits on a Dask worker while it runs)
        progress = Progress(len(inputs), f"colocation of {len(inputs)} site-day(s)")
        done: dict[int, dict[str, Any]] = {}
        failed = []
        for (i, d), f in bounded(lambda item: colocate_task.submit(store.root, item[1].to_json(), cfg_json),
                                 enumerate(inputs), cfg.max_in_flight):
            try:
                done[i] = f.result()
            except Exception as e:  # noqa: BLE001 - collect every failed site-day, then fail once
                failed.append(f"{d.site} {d.day}: {type(e).__name__}: {e}")
            progress.advance()
        colocated = [done[i] for i in sorted(done)]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(inputs)} site-days failed to colocate (the others "
                               "are kept and will be reused):\n  " + "\n  ".join(failed))
        plan_uri = plan_task(store.root, cfg_json, [c["uri"] for c in colocated], recipe_id, checks)
        uri = write_task(store.root, cfg_json, plan_uri)
    plan = load_plan(store, store.key_of(plan_uri))
    tau = plan.decorrelation_s.get("used")
    rows = plan.summary()
    create_table_artifact(
        key=_artifact_key(cfg.version),
        table=rows or [{"split": "-", "site": "-", "season": "-", "samples": 0}],
        description=(f"Dataset {cfg.version} at {uri}: samples per split / site / season. "
                     f"Decorrelation (e-folding) time {tau:.0f} s (per site: "
                     f"{ {k: v for k, v in plan.decorrelation_s.items() if k != 'used'} }), "
                     f"split gap {plan.split['gap_s']:.0f} s, blocks {plan.split['block_s'] / 3600:.1f} h."))
    logger.info("dataset %s: %s", uri, plan.counts["samples"])
    return uri


def main(argv: list[str] | None = None) -> None:
    ap = cli_parser("build_dataset", __doc__)
    ap.add_argument("--dask-address", help="existing dask scheduler (else $DASK_SCHEDULER_ADDRESS or local)")
    a = ap.parse_args(argv)
    print(build_dataset(config_path=a.config_path, overrides=a.overrides or None, dask_address=a.dask_address))


if __name__ == "__main__":
    main()
