"""Prefect flows that fill the blind zone of CloudSat granules, and keep doing it as new ones arrive.

Flows (``bzpipe.infer`` does the work; these only orchestrate):

``reprocess-granule``  (:func:`reprocess_granule`)
    One granule URI: stage it into the store (``raw/cloudsat/<name>``), fetch the
    ERA-5 months a 5-channel model needs through the ingest flow (offline / cds
    source), fill, write ``outputs/cloudsat/<model id>/<granule id>.zarr`` + PNG.
    Idempotent: a complete output for this model is skipped.  A bad granule is
    quarantined (``quarantine/<granule>.json``) and reported in a table artifact.

``granule-arrived``  (:func:`granule_arrived`)
    The deployment an automation runs on each ``bzpipe.granule.arrived`` event
    (trigger :func:`granule_trigger`; the event payload carries ``granule_uri``).
    It starts ``reprocess-granule`` with ``run_deployment(...,
    idempotency_key="cloudsat:<name>:<size>:<model id>")``, so duplicate events for
    the same granule and model create one run; a new model version gets a new key
    and reprocesses.

``scan-landing``  (:func:`scan_landing`)
    Scheduled: lists ``InferConfig.landing`` (a store prefix or a local / s3 URI),
    and for every granule without a complete output for the current model and not
    quarantined emits ``bzpipe.granule.arrived``, unless it did so within
    ``emit_dedupe_s`` (records under ``state/emitted/<model id>/``).

``backfill-cloudsat``  (:func:`backfill`)
    A date range or a list of granules, processed in parallel on Dask
    (LocalCluster, or ``dask_address`` / ``$DASK_SCHEDULER_ADDRESS``).

Run::

    python -m flows.reprocess serve    [--config FILE] [--set key=value ...] [--no-scan]  # the deployments
    python -m flows.reprocess granule  URI      [--config FILE] [--set ...]
    python -m flows.reprocess backfill [--start YYYY-MM-DD] [--end ...] [--granule URI ...]
    python -m flows.reprocess scan     [--config FILE]
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.events import DeploymentEventTrigger, emit_event

from bzpipe.checkpoint import finished_model_id
from bzpipe.config import IngestConfig, InferConfig
from bzpipe.infer import batch as bz_batch
from bzpipe.infer.granule import RAW_PREFIX, process_granule, stage_granule
from bzpipe.quarantine import quarantined
from bzpipe.store import Store
from flows.common import cli_parser, resolve_config

GRANULE_EVENT = "bzpipe.granule.arrived"
PROCESS_FLOW = "reprocess-granule"
PROCESS_DEPLOYMENT = "reprocess-granule"
ARRIVED_DEPLOYMENT = "granule-arrived"
SCAN_DEPLOYMENT = "scan-landing"
RESULTS_KEY = "cloudsat-reprocess"
QUARANTINE_KEY = "cloudsat-quarantine"


# --------------------------------------------------------------------------- tasks


@task(name="resolve-model", retries=2, retry_delay_seconds=5, cache_policy=NONE)
def resolve_model(cfg: InferConfig) -> str:
    """The id (checkpoint hash) of the model ``cfg`` applies, from the store's manifest."""
    from bzpipe.infer.predict import current_model_id

    return current_model_id(Store(cfg.store_root).root, cfg.run_name, cfg.which)


@task(name="model-channels", cache_policy=NONE)
def model_channels(cfg: InferConfig, model_id: str) -> int:
    from bzpipe.infer.fill import channels_of
    from bzpipe.infer.predict import cached_model

    return channels_of(cached_model(Store(cfg.store_root).root, cfg.run_name, cfg.which, cfg.device,
                                    expected_id=model_id)[1])


@task(name="stage-granule", task_run_name="stage-{granule_uri}", retries=3, retry_delay_seconds=5,
      cache_policy=NONE)
def stage_task(cfg: InferConfig, granule_uri: str) -> str:
    """Key of the granule in the store (copied into ``raw/cloudsat/`` when it lies elsewhere)."""
    return stage_granule(Store(cfg.store_root), granule_uri)


@task(name="process-granule", task_run_name="fill-{granule_key}", retries=1, retry_delay_seconds=10,
      cache_policy=NONE)
def process_task(cfg: InferConfig, granule_key: str, model_id: str, force: bool = False) -> dict[str, Any]:
    """Fill one stored granule (skips a complete output; quarantines a bad file)."""
    return process_granule(cfg.store_root, granule_key, cfg, model_id=model_id, force=force).to_dict()


@task(name="process-batch-on-dask", cache_policy=NONE)
def batch_task(cfg: InferConfig, keys: list[str], model_id: str) -> list[dict[str, Any]]:
    """Fill many granules in parallel on the Dask cluster (each worker loads the model once)."""
    logger = get_run_logger()
    with bz_batch.dask_client(cfg) as client:
        logger.info("Dask cluster: %s (%d granules)", client.scheduler.address if client.scheduler else "?",
                    len(keys))
        return bz_batch.run_batch(client, Store(cfg.store_root).root, keys, cfg, model_id)


def era5_ingest_config(cfg: InferConfig, days: Sequence[date]) -> IngestConfig:
    """The ingest config that fetches the ERA-5 site-months covering ``days``."""
    return IngestConfig(**cfg.era5_ingest, store_root=cfg.store_root, sites=cfg.sites, start=min(days),
                        end=max(days), era5_source=cfg.era5_source, seed=cfg.seed)


def granule_days(names: Sequence[str]) -> list[date]:
    """UTC days a granule (~99 minutes from its start time) touches."""
    from bzpipe.sources.cloudsat import granule_info

    days: set[date] = set()
    for n in names:
        try:
            start = granule_info(n).start
        except Exception:  # noqa: BLE001 - a bad name is quarantined later
            continue
        days |= {start.date(), (start + timedelta(minutes=100)).date()}
    return sorted(days)


def ensure_era5(cfg: InferConfig, model_id: str, names: Sequence[str]) -> None:
    """For a 5-channel model, ingest (offline / cds source) the ERA-5 months of these granules."""
    if model_channels(cfg, model_id) != 5:
        return
    days = granule_days(names)
    if not days:
        return
    from flows.ingest import ingest_era5

    ingest_era5(config=era5_ingest_config(cfg, days))


def report(results: list[dict[str, Any]], cfg: InferConfig, title: str) -> dict[str, int]:
    """Table artifacts: every granule's outcome, and the quarantined ones with their reasons."""
    counts = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "quarantined", "failed")}
    rows = [{"granule": r["granule"], "status": r["status"], "model_id": r["model_id"],
             "output": Store(cfg.store_root).uri(r["output_key"]) if r["status"] in ("done", "skipped") else "",
             "seconds": round(float(r["seconds"]), 2), "reason": r["reason"]} for r in results]
    if rows:
        create_table_artifact(rows, key=RESULTS_KEY, description=(
            f"# {title}\n\n{counts['done']} filled, {counts['skipped']} already done, "
            f"{counts['quarantined']} quarantined, {counts['failed']} failed"))
    bad = [{"granule": r["granule"], "category": r["category"], "reason": r["reason"],
            "record": f"quarantine/{posixpath.splitext(r['granule'])[0]}.json"}
           for r in results if r["status"] == "quarantined"]
    if bad:
        create_table_artifact(bad, key=QUARANTINE_KEY, description=(
            f"# Quarantined CloudSat granules\n\n{len(bad)} granule(s) could not be used; "
            "the rest of the batch went on. Fix or replace the file, then delete its quarantine record."))
    return counts


def _size(uri: str) -> int | None:
    """Size of a file in bytes (local or s3), None when it cannot be read."""
    import fsspec

    from bzpipe.store import s3_storage_options

    try:
        fs, path = fsspec.core.url_to_fs(uri, **(s3_storage_options() if uri.startswith("s3://") else {}))
        return int(fs.size(path))
    except Exception:  # noqa: BLE001 - the granule run itself reports an unreadable file
        return None


# --------------------------------------------------------------------------- flows


@flow(name=PROCESS_FLOW)
def reprocess_granule(granule_uri: str, config: InferConfig | None = None, config_path: str | None = None,
                      overrides: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Fill the blind zone of one granule; returns its :class:`~bzpipe.infer.granule.GranuleResult` dict."""
    cfg = resolve_config(InferConfig, config, config_path, overrides)
    logger = get_run_logger()
    model_id = resolve_model(cfg)
    key = stage_task(cfg, granule_uri)
    ensure_era5(cfg, model_id, [posixpath.basename(key)])
    res = process_task(cfg, key, model_id, force)
    report([res], cfg, f"Granule {res['granule']}")
    logger.info("%s: %s %s", res["granule"], res["status"], res["reason"] or res["output_key"])
    if res["status"] == "failed":
        raise RuntimeError(f"{res['granule']}: {res['reason']}")
    return res


@flow(name="granule-arrived")
def granule_arrived(granule_uri: str, config: InferConfig | None = None, config_path: str | None = None,
                    overrides: list[str] | None = None,
                    deployment: str = f"{PROCESS_FLOW}/{PROCESS_DEPLOYMENT}") -> dict[str, Any]:
    """Start ``reprocess-granule`` for an announced granule, deduplicated by an idempotency key.

    Returns ``{"flow_run_id", "idempotency_key", "state"}``.  If the run with this key
    ended Failed / Crashed / Cancelled, a retry is started under ``<key>:retry<n>`` (up to 2).
    """
    from prefect.deployments import run_deployment

    cfg = resolve_config(InferConfig, config, config_path, overrides)
    logger = get_run_logger()
    model_id = resolve_model(cfg)
    name = posixpath.basename(granule_uri.rstrip("/"))
    size = _size(granule_uri)
    base = bz_batch.idempotency_key(name, model_id, size)
    params = {"granule_uri": granule_uri, "config": cfg.model_dump(mode="json")}
    run = None
    for attempt in range(3):
        key = base if attempt == 0 else f"{base}:retry{attempt}"
        run = run_deployment(deployment, parameters=params, idempotency_key=key, timeout=0, as_subflow=False)
        state = run.state
        if state is None or not (state.is_failed() or state.is_crashed() or state.is_cancelled()):
            break
        logger.warning("run %s for key %s ended %s; retrying", run.id, key, state.type)
    assert run is not None
    logger.info("%s -> flow run %s (idempotency key %s)", name, run.id, key)
    return {"flow_run_id": str(run.id), "idempotency_key": key, "state": str(run.state.type if run.state else "")}


@flow(name="scan-landing")
def scan_landing(config: InferConfig | None = None, config_path: str | None = None,
                 overrides: list[str] | None = None) -> list[dict[str, Any]]:
    """Emit ``bzpipe.granule.arrived`` for landing granules that still need the current model."""
    cfg = resolve_config(InferConfig, config, config_path, overrides)
    logger = get_run_logger()
    store = Store(cfg.store_root)
    model_id = finished_model_id(store, cfg.run_name, cfg.which)
    if model_id is None:    # no model yet, or one still training: its interim checkpoints are not versions
        logger.info("no finished %s checkpoint of run %s in %s: nothing to announce", cfg.which,
                    cfg.run_name, store.root)
        return []
    files = bz_batch.list_landing(store, cfg.landing)
    pending = bz_batch.pending_granules(store, files, model_id)
    emitted = []
    for f in pending:
        if not bz_batch.should_emit(store, model_id, f.name, cfg.emit_dedupe_s):
            continue
        ev = emit_event(event=GRANULE_EVENT,
                        resource={"prefect.resource.id": f"cloudsat.granule.{f.name}",
                                  "prefect.resource.name": f.name},
                        payload={"granule_uri": f.uri, "granule_id": f.granule_id, "size": f.size,
                                 "model_id": model_id})
        bz_batch.record_emitted(store, model_id, f, event_id=str(ev.id) if ev else "")
        emitted.append({**f.to_dict(), "event_id": str(ev.id) if ev else ""})
    logger.info("landing %s: %d granule(s), %d pending for model %s, %d announced",
                cfg.landing, len(files), len(pending), model_id, len(emitted))
    if emitted:
        create_table_artifact(emitted, key="cloudsat-landing-scan",
                              description=f"# Granules announced for model {model_id}")
    return emitted


@flow(name="backfill-cloudsat")
def backfill(config: InferConfig | None = None, config_path: str | None = None,
             overrides: list[str] | None = None, start: date | None = None, end: date | None = None,
             granules: list[str] | None = None) -> dict[str, Any]:
    """Fill every granule of a date range (landing area + ``raw/cloudsat/``) or of a list, on Dask.

    ``granules`` are URIs, store keys or bare file names (looked up in the landing area
    and ``raw/cloudsat/``).  Returns ``{"counts": ..., "results": [...]}``.
    """
    cfg = resolve_config(InferConfig, config, config_path, overrides)
    logger = get_run_logger()
    store = Store(cfg.store_root)
    model_id = resolve_model(cfg)
    known = {f.name: f.uri for f in bz_batch.list_landing(store, cfg.landing)}
    known.update({f.name: f.uri for f in bz_batch.list_landing(store, RAW_PREFIX)})
    if granules:
        uris = [known.get(g, g) if "/" not in g else (store.uri(g) if store.exists(g) else g) for g in granules]
    else:
        files = [bz_batch.LandingFile(uri=u, name=n, granule_id="", size=-1) for n, u in sorted(known.items())]
        uris = [f.uri for f in bz_batch.select_by_date(files, start, end)]
    logger.info("backfill: %d granule(s) for model %s", len(uris), model_id)
    keys = [f.result() for f in [stage_task.submit(cfg, u) for u in uris]]
    ensure_era5(cfg, model_id, [posixpath.basename(k) for k in keys])
    results = batch_task(cfg, keys, model_id) if keys else []
    counts = report(results, cfg, f"Backfill {start or ''}..{end or ''} model {model_id}")
    logger.info("backfill done: %s; quarantined so far: %d", counts, len(quarantined(store)))
    if counts.get("failed"):
        failed = [f"{r['granule']}: {r['reason']}" for r in results if r["status"] == "failed"]
        raise RuntimeError(f"{counts['failed']} granule(s) failed:\n  " + "\n  ".join(failed))
    return {"counts": counts, "results": results}


# --------------------------------------------------------------------------- deployments


def granule_trigger(config: dict[str, Any] | None = None) -> DeploymentEventTrigger:
    """Run ``granule-arrived`` with the event's ``granule_uri`` on every ``bzpipe.granule.arrived``."""
    params: dict[str, Any] = {"granule_uri": "{{ event.payload.granule_uri }}"}
    if config is not None:
        params["config"] = config
    return DeploymentEventTrigger(name="cloudsat-granule-arrived", expect={GRANULE_EVENT},
                                  match={"prefect.resource.id": "cloudsat.granule.*"}, parameters=params)


def deployments(cfg: InferConfig, *, scan: bool = True) -> list[Any]:
    """The deployments to serve: ``reprocess-granule``, ``granule-arrived`` (event trigger) and
    ``scan-landing`` (every ``scan_interval_s``), all with ``cfg`` as their default config."""
    cj = cfg.model_dump(mode="json")
    deps = [
        reprocess_granule.to_deployment(name=PROCESS_DEPLOYMENT, parameters={"config": cj}),
        granule_arrived.to_deployment(name=ARRIVED_DEPLOYMENT, parameters={"config": cj},
                                      triggers=[granule_trigger(cj)]),
    ]
    if scan:
        deps.append(scan_landing.to_deployment(name=SCAN_DEPLOYMENT, parameters={"config": cj},
                                               interval=timedelta(seconds=cfg.scan_interval_s)))
    return deps


def main(argv: Sequence[str] | None = None) -> int:
    p = cli_parser("reprocess", __doc__)
    p.add_argument("what", choices=["serve", "granule", "backfill", "scan"])
    p.add_argument("uri", nargs="?", help="granule URI (granule)")
    p.add_argument("--start", type=date.fromisoformat)
    p.add_argument("--end", type=date.fromisoformat)
    p.add_argument("--granule", dest="granules", action="append", default=None)
    p.add_argument("--no-scan", action="store_true", help="serve without the scheduled landing scanner")
    a = p.parse_args(argv)
    cfg = resolve_config(InferConfig, None, a.config_path, a.overrides)
    if a.what == "serve":
        from prefect import serve

        serve(*deployments(cfg, scan=not a.no_scan))
    elif a.what == "granule":
        if not a.uri:
            p.error("granule needs a URI")
        print(reprocess_granule(a.uri, config=cfg))
    elif a.what == "backfill":
        print(backfill(config=cfg, start=a.start, end=a.end, granules=a.granules)["counts"])
    else:
        print(scan_landing(config=cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
