"""Prefect flow ``backfill-cloudsat``: fill every CloudSat granule of a date range or list, on Dask.

One ``process-granule`` Prefect task per granule (each visible in the UI with its own state
and logs), run in the subflow ``backfill-granules`` by a Dask task runner
(:func:`granule_task_runner`) on the existing cluster: ``infer.dask_address`` or
``$DASK_SCHEDULER_ADDRESS`` (compose, ``infra/k8s/dask-cluster.yaml``,
``infra/slurm/dask_cluster.py``), a LocalCluster of ``infer.n_workers`` processes without
one.  When the cluster's workers advertise the Dask resource ``GPU`` (the GPU worker groups
of the k8s and SLURM configs: ``--resources GPU=1``), each granule task takes one GPU slot,
so granules run on GPU workers only and one at a time per GPU.  At most
``infer.max_in_flight`` granules are submitted and unfinished at once; a progress artifact
(``cloudsat-backfill-progress``) and one log line per granule show the run as it goes.  The
Dask workers report their task runs to the Prefect API themselves: they need
``PREFECT_API_URL`` (the infra files set it).

    python -m flows.reprocess backfill [--start YYYY-MM-DD] [--end ...] [--granule URI ...]
"""

from __future__ import annotations

import posixpath
from datetime import date
from typing import Any

from prefect import flow, get_run_logger

from bzpipe.cluster import GPU_RESOURCE, gpu_slots, scheduler_address
from bzpipe.config import InferConfig
from bzpipe.infer import batch as bz_batch
from bzpipe.quarantine import quarantined
from bzpipe.store import Store
from flows.common import resolve_stage
from flows.fanout import Progress, bounded
from flows.reprocess import ensure_era5, process_task, report, resolve_model, stage_task
from flows.settings import FlowSettings

BACKFILL_PROGRESS_KEY = "cloudsat-backfill-progress"


def granule_task_runner(cfg: InferConfig) -> Any:
    """The Dask task runner of a backfill: the existing cluster (``infer.dask_address`` or
    ``$DASK_SCHEDULER_ADDRESS``), else a LocalCluster of ``n_workers`` processes for this run."""
    from prefect_dask import DaskTaskRunner

    address = scheduler_address(cfg.dask_address)
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers,
                                          "threads_per_worker": cfg.threads_per_worker,
                                          "processes": True, "dashboard_address": ":0"})


def failed_result(granule: str, model_id: str, state: Any) -> dict[str, Any]:
    """The result row of a granule whose task failed (after its retries)."""
    from bzpipe.credentials import redact
    from bzpipe.infer.granule import GranuleResult

    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001
        exc = e
    reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else (state.message or "failed")
    return GranuleResult(granule=granule, status="failed", model_id=model_id, reason=redact(reason),
                         category=type(exc).__name__ if isinstance(exc, BaseException) else "").to_dict()


@flow(name="backfill-granules")
def fill_granules(cfg: InferConfig, keys: list[str], model_id: str,
                  gpu: bool = False) -> list[dict[str, Any]]:
    """One ``process-granule`` task per granule on the flow's (Dask) task runner, at most
    ``cfg.max_in_flight`` at once, each on a GPU worker when ``gpu``; a progress artifact and a log
    line per granule while it runs."""
    import contextlib

    import dask

    logger = get_run_logger()
    progress = Progress(len(keys), f"backfill of {len(keys)} granule(s) for model {model_id}",
                        key=BACKFILL_PROGRESS_KEY)
    def submit(key: str) -> Any:
        # a fresh context manager per task (dask.annotate's can be entered once)
        with dask.annotate(resources={GPU_RESOURCE: 1}) if gpu else contextlib.nullcontext():
            return process_task.submit(cfg, key, model_id)

    results, counts = [], {"done": 0, "skipped": 0, "quarantined": 0, "failed": 0}
    for key, fut in bounded(submit, keys, cfg.max_in_flight):
        fut.wait()
        res = fut.result() if fut.state.is_completed() else failed_result(posixpath.basename(key), model_id,
                                                                          fut.state)
        results.append(res)
        counts[res["status"]] = counts.get(res["status"], 0) + 1
        progress.advance()
        logger.info("%d/%d %s: %s %s", progress.done, len(keys), res["granule"], res["status"],
                    res["reason"] or res["output_key"])
    logger.info("granules: %s", counts)
    order = {posixpath.basename(k): i for i, k in enumerate(keys)}
    return sorted(results, key=lambda r: order.get(r["granule"], len(order)))


@flow(name="backfill-cloudsat")
def backfill(config: InferConfig | None = None, config_path: str | None = None,
             overrides: list[str] | None = None, start: date | None = None, end: date | None = None,
             granules: list[str] | None = None, settings: FlowSettings | None = None) -> dict[str, Any]:
    """Fill every granule of a date range (landing area + ``raw/cloudsat/``) or of a list, on Dask.

    ``granules`` are URIs, store keys or bare file names (looked up in the landing area
    and ``raw/cloudsat/``, :func:`bzpipe.infer.batch.backfill_uris`).  Returns
    ``{"counts": ..., "results": [...]}``.
    """
    cfg, found = resolve_stage(InferConfig, config, config_path, overrides, settings)
    logger = get_run_logger()
    store = Store(cfg.store_root)
    model_id = resolve_model(cfg)
    uris = bz_batch.backfill_uris(store, cfg.landing, granules, start, end)
    logger.info("backfill: %d granule(s) for model %s, at most %d in flight", len(uris), model_id,
                cfg.max_in_flight)
    keys, results = [], []
    for uri, fut in bounded(lambda u: stage_task.submit(cfg, u), uris, cfg.max_in_flight):
        fut.wait()
        if fut.state.is_completed():
            keys.append(fut.result())
        else:
            results.append(failed_result(posixpath.basename(uri), model_id, fut.state))
    keys.sort()
    ensure_era5(cfg, model_id, [posixpath.basename(k) for k in keys], found.ingest)
    if keys:
        gpus = gpu_slots(cfg.dask_address)
        runner = granule_task_runner(cfg)
        logger.info("filling %d granule(s) on %s%s", len(keys), scheduler_address(cfg.dask_address)
                    or f"a LocalCluster of {cfg.n_workers} worker(s)",
                    f" (workers with {gpus:g} GPU(s): one granule per GPU)" if gpus else "")
        results += fill_granules.with_options(task_runner=runner)(cfg, keys, model_id, gpus > 0)
    counts = report(results, cfg, f"Backfill {start or ''}..{end or ''} model {model_id}")
    logger.info("backfill done: %s; quarantined so far: %d", counts, len(quarantined(store)))
    if counts.get("failed"):
        failed = [f"{r['granule']}: {r['reason']}" for r in results if r["status"] == "failed"]
        raise RuntimeError(f"{counts['failed']} granule(s) failed:\n  " + "\n  ".join(failed))
    return {"counts": counts, "results": results}
