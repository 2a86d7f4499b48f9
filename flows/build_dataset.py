"""Prefect flow ``build_dataset``: raw files in the store -> ``datasets/<version>.zarr``.

The build is the library's one orchestrator, :func:`bzpipe.dataset.build.run_build`; this flow
hands it :data:`FLOW_STEPS`, which run its steps as Prefect tasks:

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

from bzpipe.cluster import current_client
from bzpipe.config import BuildConfig
from bzpipe.dataset.build import BuildSteps, load_plan, plan_step, run_build, write_step
from bzpipe.dataset.inputs import DayInputs, colocate_day
from bzpipe.store import Store
from flows.common import NO_CACHE, artifact_slug, cli_parser, resolve_config, retry_if_transient
from flows.fanout import Progress, bounded


@task(name="colocate-site-day", task_run_name="colocate-{inputs[site]}-{inputs[day]}", retries=2,
      retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE,
      persist_result=False)
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
    key = plan_step(store.root, BuildConfig.model_validate(config), [store.key_of(u) for u in colocated_uris],
                    recipe_id, inputs)
    plan = load_plan(store, key)
    get_run_logger().info("samples per split %s; decorrelation time %s s", plan.counts["samples"],
                          plan.decorrelation_s)
    return store.uri(key)


@task(name="write-dataset", cache_policy=NO_CACHE, persist_result=False)
def write_task(store_root: str, config: dict[str, Any], plan_uri: str) -> str:
    """Normalize and write (or resume) the dataset; returns its URI."""
    return write_step(store_root, BuildConfig.model_validate(config), Store(store_root).key_of(plan_uri))


def colocate_site_days(store_root: str, cfg: BuildConfig, inputs: list[DayInputs]) -> list[dict[str, Any]]:
    """One ``colocate-site-day`` task per site-day, at most ``max_in_flight`` at once, with a progress
    artifact; every failed site-day is collected, then the step fails once naming them all."""
    cfg_json = cfg.model_dump(mode="json")
    progress = Progress(len(inputs), f"colocation of {len(inputs)} site-day(s)")
    done: dict[int, dict[str, Any]] = {}
    failed = []
    for (i, d), f in bounded(lambda item: colocate_task.submit(store_root, item[1].to_json(), cfg_json),
                             enumerate(inputs), cfg.max_in_flight):
        try:
            done[i] = f.result()
        except Exception as e:  # noqa: BLE001 - collect every failed site-day, then fail once
            failed.append(f"{d.site} {d.day}: {type(e).__name__}: {e}")
        progress.advance()
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(inputs)} site-days failed to colocate (the others "
                           "are kept and will be reused):\n  " + "\n  ".join(failed))
    return [done[i] for i in sorted(done)]


def _plan_via_task(store_root: str, cfg: BuildConfig, colocated: list[str], recipe_id: str,
                   inputs: dict[str, str]) -> str:
    store = Store(store_root)
    uri = plan_task(store_root, cfg.model_dump(mode="json"), [store.uri(k) for k in colocated], recipe_id,
                    inputs)
    return store.key_of(uri)


def _write_via_task(store_root: str, cfg: BuildConfig, plan_key: str) -> str:
    return write_task(store_root, cfg.model_dump(mode="json"), Store(store_root).uri(plan_key))


#: the library's build (:func:`bzpipe.dataset.run_build`) with each step as Prefect task(s)
FLOW_STEPS = BuildSteps(colocate=colocate_site_days, plan=_plan_via_task, write=_write_via_task)


def _artifact_key(version: str) -> str:
    return "dataset-" + artifact_slug(version)


@flow(name="build-dataset")
def build_dataset(config: BuildConfig | None = None, config_path: str | None = None,
                  overrides: list[str] | None = None, dask_address: str | None = None) -> str:
    """Build ``datasets/<version>.zarr`` from the raw files in the store; returns its URI."""
    logger = get_run_logger()
    cfg = resolve_config(BuildConfig, config, config_path, overrides)
    if dask_address:
        cfg = cfg.model_copy(update={"dask_address": dask_address})
    outcome = run_build(cfg, FLOW_STEPS)
    uri, plan = outcome.uri, outcome.plan
    if plan is None:
        logger.info("%s is complete with the same inputs and config", uri)
        return uri
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
    print(build_dataset(config_path=a.config_path, overrides=a.overrides or None,
                        dask_address=a.dask_address))


if __name__ == "__main__":
    main()
